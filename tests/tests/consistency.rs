//! Bringing orders to a consistent end with real processes: the availability
//! re-check once product returns, staff rejecting orders in review (through the
//! compensations, with product consuming `ORDER_CANCELLED` from the broker), and
//! reconciliation applying delivery's statuses or flagging what it cannot apply.
#![allow(clippy::unwrap_used)]

use std::{
    future::Future,
    time::{Duration, Instant},
};

use contracts::{
    catalog::{Product, Reservation, ReservationStatus},
    delivery::Delivery,
    orders::{DeliveryHold, Order, OrderStatus},
};
use serde_json::{Value, json};
use system_tests::{STAFF_TOKEN, Stack, StackOptions};
use uuid::Uuid;

fn order_body(customer: &str, product: &str, quantity: i32) -> Value {
    system_tests::order_body(customer, &[(product, quantity)])
}

async fn place(http: &reqwest::Client, stack: &Stack, body: &Value) -> Order {
    let response = http
        .post(format!("{}/orders", stack.sales.base_url()))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

/// GET (with the staff token, which customers' endpoints ignore), expecting 200 and JSON.
async fn get(http: &reqwest::Client, url: String) -> Value {
    let response = http
        .get(&url)
        .bearer_auth(STAFF_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{url}: {text}");
    serde_json::from_str(&text).unwrap()
}

async fn order(http: &reqwest::Client, stack: &Stack, id: Uuid) -> Order {
    serde_json::from_value(get(http, format!("{}/orders/{id}", stack.sales.base_url())).await)
        .unwrap()
}

async fn review_detail(http: &reqwest::Client, stack: &Stack, id: Uuid) -> Value {
    get(
        http,
        format!("{}/review/orders/{id}", stack.sales.base_url()),
    )
    .await
}

async fn decide(
    http: &reqwest::Client,
    stack: &Stack,
    id: Uuid,
    decision: &str,
    note: &str,
) -> reqwest::Response {
    http.post(format!(
        "{}/review/orders/{id}/{decision}",
        stack.sales.base_url()
    ))
    .bearer_auth(STAFF_TOKEN)
    .json(&json!({"note": note}))
    .send()
    .await
    .unwrap()
}

async fn courier(http: &reqwest::Client, stack: &Stack, delivery_id: Uuid, statuses: &[&str]) {
    for status in statuses {
        let response = http
            .post(format!(
                "{}/deliveries/{delivery_id}/status",
                stack.delivery.base_url()
            ))
            .bearer_auth(STAFF_TOKEN)
            .json(&json!({"status": status}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
}

/// Polls `probe` until it yields, or panics after `limit` naming `what`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            println!("{what}: after {:?}", started.elapsed());
            return value;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn fallback_orders_are_confirmed_automatically_once_product_is_back() {
    let mut stack = Stack::start_with(StackOptions {
        sales_env: vec![
            ("SALES_AVAILABILITY_RECHECK_INTERVAL_MS", "200".into()),
            ("SALES_BREAKER_PRODUCT_RESET_TIMEOUT_MS", "1000".into()),
        ],
        ..StackOptions::default()
    })
    .await;
    let http = reqwest::Client::new();
    stack.product.stop().await;
    let mouse = place(&http, &stack, &order_body("a", "SKU-MOUSE", 1)).await;
    let keyboards = place(&http, &stack, &order_body("b", "SKU-KEYBOARD", 2)).await;
    for o in [&mouse, &keyboards] {
        assert!(o.requires_manual_review && o.fallback_used);
    }
    // Product still down: rounds come and go, nothing changes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(order(&http, &stack, mouse.id).await.requires_manual_review);

    stack.product.start().await;
    for o in [&mouse, &keyboards] {
        eventually("flag cleared", Duration::from_secs(30), || async {
            (!order(&http, &stack, o.id).await.requires_manual_review).then_some(())
        })
        .await;
        let detail = review_detail(&http, &stack, o.id).await;
        assert_eq!(detail["reviews"][0]["status"], "RESOLVED");
        assert_eq!(detail["reviews"][0]["resolved_by"], "system");
        assert_eq!(detail["reviews"][0]["resolution"], "AVAILABILITY_CONFIRMED");
        let reservation: Reservation = serde_json::from_value(
            get(
                &http,
                format!("{}/reservations/{}", stack.product.base_url(), o.id),
            )
            .await,
        )
        .unwrap();
        assert_eq!(reservation.status, ReservationStatus::Committed);
    }
    let mouse_stock: Product = serde_json::from_value(
        get(
            &http,
            format!("{}/products/SKU-MOUSE", stack.product.base_url()),
        )
        .await,
    )
    .unwrap();
    assert_eq!((mouse_stock.stock_on_hand, mouse_stock.reserved), (999, 0));
    let queue: Value = get(&http, format!("{}/review/orders", stack.sales.base_url())).await;
    assert_eq!(queue["items"], json!([]));
    let health: Value = get(
        &http,
        format!("{}/health/reliability", stack.sales.base_url()),
    )
    .await;
    assert_eq!(health["manualReviewQueueLength"], 0);
    assert!(stack.shutdown().await);
}

#[tokio::test]
async fn out_of_stock_after_fallback_waits_for_staff_who_reject_through_the_compensations() {
    let mut stack = Stack::start_with(StackOptions {
        sales_env: vec![
            ("SALES_AVAILABILITY_RECHECK_INTERVAL_MS", "200".into()),
            ("SALES_BREAKER_PRODUCT_RESET_TIMEOUT_MS", "1000".into()),
            // The inline attempt is the only one: a failure goes straight to review.
            ("SALES_DELIVERY_RETRY_MAX_ATTEMPTS", "1".into()),
        ],
        broker: true,
        ..StackOptions::default()
    })
    .await;
    let http = reqwest::Client::new();

    // An order reserved and committed at product, whose delivery could not be made.
    stack.delivery.stop().await;
    let stuck = place(&http, &stack, &order_body("stuck", "SKU-MOUSE", 3)).await;
    assert!(stuck.delivery_id.is_none());
    stack.delivery.start().await;
    // An order accepted on the fallback for more than product has.
    stack.product.stop().await;
    let greedy = place(&http, &stack, &order_body("greedy", "SKU-HEADSET", 500)).await;
    assert!(greedy.requires_manual_review && greedy.delivery_id.is_none());
    assert_eq!(
        greedy.delivery_hold,
        Some(DeliveryHold::AvailabilityUnverified),
        "its delivery waits for the stock check"
    );
    stack.product.start().await;

    eventually(
        "out of stock after fallback",
        Duration::from_secs(30),
        || async {
            let detail = review_detail(&http, &stack, greedy.id).await;
            (detail["reviews"][0]["reason"] == "OUT_OF_STOCK_AFTER_FALLBACK").then_some(())
        },
    )
    .await;
    let detail = review_detail(&http, &stack, greedy.id).await;
    assert_eq!(detail["reviews"][0]["status"], "OPEN");
    assert_eq!(
        detail["reviews"][0]["details"]["short_items"][0]["available"],
        150
    );
    let kept = order(&http, &stack, greedy.id).await;
    assert!(kept.requires_manual_review);
    assert_eq!(kept.delivery_hold, Some(DeliveryHold::ManualReview));
    let queue: Value = get(
        &http,
        format!(
            "{}/review/orders?reason=OUT_OF_STOCK_AFTER_FALLBACK",
            stack.sales.base_url()
        ),
    )
    .await;
    assert_eq!(queue["items"][0]["order"]["id"], greedy.id.to_string());

    // Staff reject it: cancelled with nothing to undo at delivery, nothing held at product.
    let response = decide(
        &http,
        &stack,
        greedy.id,
        "reject",
        "cannot supply 500 headsets",
    )
    .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let rejected = order(&http, &stack, greedy.id).await;
    assert_eq!(rejected.status, OrderStatus::Cancelled);
    assert!(!rejected.requires_manual_review);
    let deliveries: Vec<Delivery> = serde_json::from_value(
        get(
            &http,
            format!(
                "{}/deliveries?order_id={}",
                stack.delivery.base_url(),
                greedy.id
            ),
        )
        .await,
    )
    .unwrap();
    assert!(deliveries.is_empty(), "never shipped: {deliveries:?}");
    let held = http
        .get(format!(
            "{}/reservations/{}",
            stack.product.base_url(),
            greedy.id
        ))
        .bearer_auth(system_tests::SERVICE_TOKEN)
        .send()
        .await
        .unwrap();
    // Never reserved: the cancellation's release only marks the order's (empty)
    // reservation, so no late reservation can be taken for it.
    let held: Reservation = held.json().await.unwrap();
    assert_eq!(held.status, ReservationStatus::Released);
    assert!(
        held.items.is_empty(),
        "no reservation was ever taken: {held:?}"
    );
    let headsets: Product = serde_json::from_value(
        get(
            &http,
            format!("{}/products/SKU-HEADSET", stack.product.base_url()),
        )
        .await,
    )
    .unwrap();
    assert_eq!((headsets.stock_on_hand, headsets.reserved), (150, 0));

    // The stuck order is rejected too: its committed reservation is restocked (by the
    // cancellation's direct release, or ORDER_CANCELLED if product was away).
    let detail = review_detail(&http, &stack, stuck.id).await;
    assert_eq!(detail["reviews"][0]["reason"], "DELIVERY_RETRIES_EXHAUSTED");
    let response = decide(
        &http,
        &stack,
        stuck.id,
        "reject",
        "customer asked to drop it",
    )
    .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    eventually("reservation released", Duration::from_secs(30), || async {
        let reservation: Reservation = serde_json::from_value(
            get(
                &http,
                format!("{}/reservations/{}", stack.product.base_url(), stuck.id),
            )
            .await,
        )
        .unwrap();
        (reservation.status == ReservationStatus::Released).then_some(())
    })
    .await;
    let mice: Product = serde_json::from_value(
        get(
            &http,
            format!("{}/products/SKU-MOUSE", stack.product.base_url()),
        )
        .await,
    )
    .unwrap();
    assert_eq!((mice.stock_on_hand, mice.reserved), (1000, 0));
    let again = decide(&http, &stack, stuck.id, "reject", "twice").await;
    assert_eq!(again.status(), 409);
    assert!(stack.shutdown().await);
}

#[tokio::test]
async fn reconciliation_applies_delivery_progress_and_flags_what_it_cannot_apply() {
    let stack = Stack::start_with(StackOptions {
        sales_env: vec![
            ("SALES_RECONCILIATION_INTERVAL_MS", "200".into()),
            ("SALES_RECONCILIATION_STALE_AFTER_MS", "0".into()),
        ],
        ..StackOptions::default()
    })
    .await;
    let http = reqwest::Client::new();
    let delivered = place(&http, &stack, &order_body("a", "SKU-DOCK", 1)).await;
    let shipped = place(&http, &stack, &order_body("b", "SKU-DOCK", 1)).await;

    courier(
        &http,
        &stack,
        delivered.delivery_id.unwrap(),
        &["PICKED_UP", "IN_TRANSIT", "DELIVERED"],
    )
    .await;
    eventually("DELIVERED applied", Duration::from_secs(30), || async {
        (order(&http, &stack, delivered.id).await.status == OrderStatus::Delivered).then_some(())
    })
    .await;
    let detail = review_detail(&http, &stack, delivered.id).await;
    let path: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to_status"].as_str().unwrap())
        .collect();
    assert_eq!(path, ["PENDING_SHIPMENT", "SHIPPED", "DELIVERED"]);
    assert_eq!(detail["reviews"], json!([]));

    courier(&http, &stack, shipped.delivery_id.unwrap(), &["PICKED_UP"]).await;
    eventually("SHIPPED applied", Duration::from_secs(30), || async {
        (order(&http, &stack, shipped.id).await.status == OrderStatus::Shipped).then_some(())
    })
    .await;
    // Delivery now reports a status the order cannot move to (someone cancelled the
    // delivery behind delivery's API after pickup).
    let delivery_db = stack.db("delivery").await;
    sqlx::query("UPDATE deliveries SET status = 'CANCELLED' WHERE id = $1")
        .bind(shipped.delivery_id.unwrap())
        .execute(&delivery_db)
        .await
        .unwrap();
    delivery_db.close().await;
    let entry: Value = eventually("flagged for review", Duration::from_secs(30), || async {
        let queue: Value = get(
            &http,
            format!(
                "{}/review/orders?reason=INVALID_STATUS_TRANSITION",
                stack.sales.base_url()
            ),
        )
        .await;
        queue["items"].get(0).cloned()
    })
    .await;
    assert_eq!(entry["order"]["id"], shipped.id.to_string());
    assert_eq!(entry["review"]["details"]["from"], "SHIPPED");
    assert_eq!(entry["review"]["details"]["to"], "CANCELLED");
    let flagged = order(&http, &stack, shipped.id).await;
    assert_eq!(flagged.status, OrderStatus::Shipped, "never applied");
    assert!(flagged.requires_manual_review);

    let health: Value = get(
        &http,
        format!("{}/health/reliability", stack.sales.base_url()),
    )
    .await;
    assert_eq!(health["reconciliationJobsStatus"], "HEALTHY");
    let sales = stack.db("sales").await;
    let runs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reconciliation_runs WHERE status = 'SUCCEEDED' AND fixed > 0",
    )
    .fetch_one(&sales)
    .await
    .unwrap();
    assert!(runs >= 2, "runs are recorded: {runs}");
    sales.close().await;
    assert!(stack.shutdown().await);
}

/// The re-check keeps pace: a backlog of fallback orders clears within about one product
/// breaker reset of product's return (3 s resets here, as in the outage the issue measured).
#[tokio::test]
async fn a_backlog_of_fallback_orders_clears_soon_after_product_returns() {
    let mut stack = Stack::start_with(StackOptions {
        sales_env: vec![("SALES_BREAKER_PRODUCT_RESET_TIMEOUT_MS", "3000".into())],
        ..StackOptions::default()
    })
    .await;
    let http = reqwest::Client::new();
    stack.product.kill().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..150 {
        let (http, url) = (http.clone(), format!("{}/orders", stack.sales.base_url()));
        tasks.spawn(async move {
            // Eight clients placing as fast as sales answers outpace the shipped rate limit
            // (50/s): a 429 is waited out as its Retry-After says, as a client would.
            loop {
                let response = http
                    .post(&url)
                    .json(&order_body(&format!("backlog{}", i % 8), "SKU-MOUSE", 1))
                    .send()
                    .await
                    .unwrap();
                if response.status() == 429 {
                    let wait: u64 = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(1);
                    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
                    continue;
                }
                assert_eq!(response.status(), 201);
                break;
            }
        });
        if tasks.len() >= 8 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    tasks.join_all().await;
    let sales = stack.db("sales").await;
    let flagged = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM manual_reviews WHERE status = 'OPEN' AND reason = 'AVAILABILITY_UNVERIFIED'",
        )
        .fetch_one(&sales)
        .await
        .unwrap()
    };
    assert_eq!(flagged().await, 150);
    stack.product.start().await;
    let back = Instant::now();
    eventually(
        "150 fallback orders re-checked",
        Duration::from_secs(60),
        || async { (flagged().await == 0).then_some(()) },
    )
    .await;
    println!(
        "re-check: 150 fallback orders confirmed {:?} after product was back (breaker reset 3 s)",
        back.elapsed()
    );
    let held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE delivery_hold IS NOT NULL")
            .fetch_one(&sales)
            .await
            .unwrap();
    assert_eq!(held, 0, "every delivery released");
    sales.close().await;
    assert!(stack.shutdown().await);
}
