//! The staff console in a real browser: Debian's Chromium, headless, driven
//! through ChromeDriver (`scripts/ensure-chromium` installs both), against the
//! real binaries. A person signs in, finds an order the product fallback flagged,
//! reads its saga, approves it and sees it leave the queue, replays a dead
//! letter; a wrong secret and a forged form are refused.
//!
//! Screenshots of the queue and the order page are written to
//! `$CONSOLE_SCREENSHOTS_DIR` when set (the README's come from here), else next
//! to the services' logs.
#![allow(clippy::unwrap_used)]

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use system_tests::{STAFF_NAME, STAFF_SECRET, Stack, StackOptions, free_port, order_request};
use tokio::process::{Child, Command};

/// ChromeDriver on a free port, ended when dropped.
struct Driver {
    _child: Child,
    url: String,
}

async fn chromedriver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver (scripts/ensure-chromium installs it)");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/status")).await
            && r.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driver { _child: child, url }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1100"],
        }),
    );
    ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .wait()
        .for_element(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn sign_in(client: &Client, base: &str, name: &str, secret: &str) {
    client.goto(&format!("{base}/console")).await.unwrap();
    let form = client
        .wait()
        .for_element(Locator::Css("form[action='/console/login']"))
        .await
        .unwrap();
    for (field, value) in [("name", name), ("secret", secret)] {
        form.find(Locator::Css(&format!("input[name={field}]")))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    form.find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

fn screenshots_dir(stack: &Stack) -> PathBuf {
    std::env::var_os("CONSOLE_SCREENSHOTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| stack.log_dir.clone())
}

#[tokio::test]
async fn staff_clear_the_queue_and_replay_dead_letters_in_a_browser() {
    let mut stack = Stack::start_with(StackOptions {
        // Plain HTTP on localhost: the cookie cannot be `Secure` here.
        sales_env: vec![("SALES_CONSOLE_SECURE_COOKIE", "false".into())],
        ..StackOptions::default()
    })
    .await;
    let base = stack.sales.base_url();
    // Product down (for the whole test, so that no re-check confirms them): the
    // orders are accepted on the fallback and flagged for review.
    stack.product.stop().await;
    let mut orders = Vec::new();
    for (customer, sku, quantity) in [
        ("browser-customer", "SKU-MOUSE", 2),
        ("second-customer", "SKU-KEYBOARD", 1),
        ("third-customer", "SKU-MOUSE", 5),
    ] {
        let order = stack
            .sales_api()
            .place(&order_request(customer, &[(sku, quantity)]))
            .await;
        assert!(order.requires_manual_review && order.fallback_used);
        orders.push(order);
    }
    let order = orders[0].clone();
    // A dead letter to replay: the broker is off in this stack, so one of the
    // order's events is marked as the relay marks one the broker refused for good
    // (the relay's own dead-lettering is tested in outbox.rs).
    let sales = stack.db("sales").await;
    let dead: uuid::Uuid = sqlx::query_scalar(
        "UPDATE outbox_events SET status = 'FAILED', retry_count = 5,
                last_error = 'broker refused: topic does not exist'
         WHERE id = (SELECT id FROM outbox_events WHERE aggregate_id = $1 ORDER BY created_at LIMIT 1)
         RETURNING id",
    )
    .bind(order.id)
    .fetch_one(&sales)
    .await
    .unwrap();

    let driver = chromedriver().await;
    let client = browser(&driver).await;

    // A wrong secret: the sign-in page says so, and nothing opens.
    sign_in(&client, &base, STAFF_NAME, "not-the-secret").await;
    assert_eq!(
        text_of(&client, "#message").await,
        "Wrong staff name or secret."
    );
    client.goto(&format!("{base}/console/queue")).await.unwrap();
    assert!(client.current_url().await.unwrap().path() == "/console/login");

    sign_in(&client, &base, STAFF_NAME, STAFF_SECRET).await;
    assert_eq!(text_of(&client, "#who").await, STAFF_NAME);
    // The queue holds the fallback order, with its reason.
    let row = client
        .wait()
        .for_element(Locator::Css(&format!("tr[data-order='{}']", order.id)))
        .await
        .unwrap();
    assert!(
        row.text()
            .await
            .unwrap()
            .contains("AVAILABILITY_UNVERIFIED")
    );
    let shots = screenshots_dir(&stack);
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(
        shots.join("console-queue.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();

    // Its page draws the saga's steps in order.
    row.find(Locator::Css("a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Id("saga-steps"))
        .await
        .unwrap();
    let mut steps = Vec::new();
    for step in client
        .find_all(Locator::Css("#saga-steps .step"))
        .await
        .unwrap()
    {
        steps.push(step.attr("data-step").await.unwrap().unwrap());
    }
    assert_eq!(steps.first().map(String::as_str), Some("reserve_inventory"));
    assert!(steps.iter().any(|s| s == "record_order"), "{steps:?}");
    std::fs::write(
        shots.join("console-order.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();

    // Approve with a note: the outcome is shown, and the order leaves the queue.
    client
        .find(Locator::Css("#decide textarea[name=note]"))
        .await
        .unwrap()
        .send_keys("stock counted by hand")
        .await
        .unwrap();
    client
        .find(Locator::Id("approve"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        text_of(&client, "#outcome").await,
        "Approved: the order proceeds."
    );
    assert!(text_of(&client, "#reviews").await.contains(STAFF_NAME));
    client.goto(&format!("{base}/console/queue")).await.unwrap();
    client
        .wait()
        .for_element(Locator::Id("counts"))
        .await
        .unwrap();
    assert!(
        !client
            .source()
            .await
            .unwrap()
            .contains(&order.id.to_string())
    );

    // Replay the dead letter.
    client
        .goto(&format!("{base}/console/dead-letters"))
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Css(&format!(
            "tr[data-event='{dead}'] button.replay"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        text_of(&client, "#outcome").await,
        "Replayed 1: back to PENDING for the relay."
    );
    let (status, actor): (String, String) = sqlx::query_as(
        "SELECT e.status, a.actor FROM outbox_events e JOIN outbox_audit a ON a.event_id = e.id
         WHERE e.id = $1",
    )
    .bind(dead)
    .fetch_one(&sales)
    .await
    .unwrap();
    assert_eq!((status.as_str(), actor.as_str()), ("PENDING", STAFF_NAME));
    let (resolved_by,): (String,) =
        sqlx::query_as("SELECT resolved_by FROM manual_reviews WHERE order_id = $1")
            .bind(order.id)
            .fetch_one(&sales)
            .await
            .unwrap();
    assert_eq!(resolved_by, STAFF_NAME);

    // A form that does not carry the session's token (as another site would post
    // it) is refused with a page saying so, and nothing is replayed.
    client
        .execute(
            "const f = document.createElement('form');
             f.method = 'post'; f.action = '/console/dead-letters/replay';
             const i = document.createElement('input');
             i.type = 'hidden'; i.name = 'csrf'; i.value = 'forged';
             f.appendChild(i); document.body.appendChild(f); f.submit();",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        text_of(&client, "#failure")
            .await
            .contains("This form was refused")
    );
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_audit")
        .fetch_one(&sales)
        .await
        .unwrap();
    assert_eq!(audits, 1);

    client.close().await.unwrap();
    drop(driver);
    assert!(stack.shutdown().await);
}
