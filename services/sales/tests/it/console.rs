//! The staff console over HTTP as a browser uses it (cookies, forms): sign-in
//! with a staff account, wrong secrets and the sign-in limit, CSRF on every
//! form, the idle expiry, sign-out, revocation, and decisions and audits naming
//! the signed-in person. (The real-browser run is in the system tests.)

use contracts::orders::Order;
use reqwest::{Client, Response, StatusCode, header, redirect::Policy};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::expect_json;

use crate::{Peers, Stack, order_body};

/// A browser-like client: no redirects followed, the session cookie kept by hand.
struct Browser {
    http: Client,
    base: String,
    cookies: Vec<(String, String)>,
}

impl Browser {
    fn new(stack: &Stack) -> Self {
        Self {
            http: Client::builder().redirect(Policy::none()).build().unwrap(),
            base: stack.api().base.clone(),
            cookies: Vec::new(),
        }
    }

    fn keep(&mut self, response: &Response) {
        for value in response.headers().get_all(header::SET_COOKIE) {
            let value = value.to_str().unwrap();
            let pair = value.split(';').next().unwrap();
            let (name, v) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != name);
            if !v.is_empty() {
                self.cookies.push((name.to_owned(), v.to_owned()));
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn get(&mut self, path: &str) -> Response {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header(header::COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(&r);
        r
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Response {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header(header::COOKIE, self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap();
        self.keep(&r);
        r
    }

    /// Loads the sign-in page and submits `name` and `secret` with its form's token.
    async fn sign_in(&mut self, name: &str, secret: &str) -> Response {
        let page = self.get("/console/login").await.text().await.unwrap();
        let csrf = hidden(&page, "csrf");
        self.post(
            "/console/login",
            &[("csrf", &csrf), ("name", name), ("secret", secret)],
        )
        .await
    }
}

/// The value of the first hidden input `name` of a page.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker).expect("a hidden field") + marker.len();
    page[start..][..page[start..].find('"').unwrap()].to_owned()
}

fn location(r: &Response) -> &str {
    r.headers()[header::LOCATION].to_str().unwrap()
}

#[sqlx::test(migrations = false)]
async fn staff_sign_in_decide_and_sign_out(_pool: PgPoolOptions, options: PgConnectOptions) {
    let stack = Stack::start_with(options, Peers::ProductDown).await;
    sales::staff::add(&stack.sales_db, "alice", "alice-secret-123")
        .await
        .unwrap();
    let order: Order = expect_json(
        stack.place(&order_body("c1", &[("SKU-A", 2)]), None).await,
        201,
    )
    .await;
    let mut browser = Browser::new(&stack);

    // Not signed in: every page leads to the sign-in page.
    let r = browser.get("/console/queue").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/console/login");

    // A wrong secret: a clear page, 401, no session.
    let r = browser.sign_in("alice", "not-the-secret").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Wrong staff name or secret")
    );
    assert!(!browser.cookies.iter().any(|(n, _)| n == "sales_console"));

    // The right one: a session cookie that scripts cannot read, sent only to this site.
    let r = browser.sign_in("alice", "alice-secret-123").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("sales_console="))
        .unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Secure"));

    let queue = browser.get("/console/queue").await;
    assert_eq!(queue.status(), StatusCode::OK);
    let queue = queue.text().await.unwrap();
    assert!(queue.contains(&order.id.to_string()));
    assert!(queue.contains("AVAILABILITY_UNVERIFIED: <strong>1</strong>"));
    assert!(queue.contains("2 units in 1 line"));

    let path = format!("/console/orders/{}", order.id);
    let page = browser.get(&path).await.text().await.unwrap();
    assert!(page.contains("data-step=\"reserve_inventory\""), "{page}");
    let csrf = hidden(&page, "csrf");

    // A form without the session's token, or with another, is refused with a page.
    for forged in ["", "forged-token"] {
        let r = browser
            .post(
                &format!("{path}/approve"),
                &[("csrf", forged), ("note", "looks fine")],
            )
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.text().await.unwrap().contains("This form was refused"));
    }
    // No note: refused, nothing decided.
    let r = browser
        .post(
            &format!("{path}/approve"),
            &[("csrf", &csrf), ("note", " ")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = browser
        .post(
            &format!("{path}/approve"),
            &[("csrf", &csrf), ("note", "stock counted by hand")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let page = browser.get(location(&r).to_owned().as_str()).await;
    let page = page.text().await.unwrap();
    assert!(page.contains("Approved: the order proceeds."));
    // The audit names the signed-in person.
    let (by, note): (String, String) =
        sqlx::query_as("SELECT resolved_by, note FROM manual_reviews WHERE order_id = $1")
            .bind(order.id)
            .fetch_one(&stack.sales_db)
            .await
            .unwrap();
    assert_eq!(
        (by.as_str(), note.as_str()),
        ("alice", "stock counted by hand")
    );

    // A second decision is refused with a clear message.
    let r = browser
        .post(
            &format!("{path}/reject"),
            &[("csrf", &csrf), ("note", "changed my mind")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.text().await.unwrap().contains("decided already"));
    let queue = browser.get("/console/queue").await.text().await.unwrap();
    assert!(!queue.contains(&order.id.to_string()));

    // Sign-out needs the token too, then ends the session.
    let r = browser.post("/console/logout", &[("csrf", "x")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = browser.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(location(&r), "/console/login?signed-out=1");
    let r = browser.get("/console/queue").await;
    assert_eq!(location(&r), "/console/login");
}

#[sqlx::test(migrations = false)]
async fn sessions_expire_when_idle_and_when_revoked(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    // A shortened idle timeout (default 30 minutes), so the test waits a second only.
    let stack = Stack::start_configured(
        options,
        Peers::Both,
        &[
            ("SALES_CONSOLE_IDLE_TIMEOUT_MS", "1000"),
            ("SALES_CONSOLE_SECURE_COOKIE", "false"),
        ],
    )
    .await;
    sales::staff::add(&stack.sales_db, "bob", "bob-secret-1234")
        .await
        .unwrap();
    let mut browser = Browser::new(&stack);
    let r = browser.sign_in("bob", "bob-secret-1234").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        !r.headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .any(|v| v.to_str().unwrap().contains("Secure"))
    );
    let health = browser.get("/console/health").await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.headers()["refresh"], "10");
    let health = health.text().await.unwrap();
    for figure in [
        "product-service",
        "delivery-service",
        "Outbox pending",
        "Reconciliation",
    ] {
        assert!(health.contains(figure), "{figure} on the health page");
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let r = browser.get("/console/health").await;
    assert_eq!(location(&r), "/console/login?expired=1");
    let page = browser
        .get("/console/login?expired=1")
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("Your session expired"));

    // Revoking the account ends its sessions and its API credential at once.
    let mut browser = Browser::new(&stack);
    browser.sign_in("bob", "bob-secret-1234").await;
    assert_eq!(browser.get("/console/queue").await.status(), StatusCode::OK);
    let api = |token: &'static str| {
        stack
            .api()
            .request(reqwest::Method::GET, "/review/orders")
            .bearer_auth(token)
            .send()
    };
    assert_eq!(api("bob:bob-secret-1234").await.unwrap().status(), 200);
    assert_eq!(api("bob:wrong-secret").await.unwrap().status(), 403);
    assert!(sales::staff::revoke(&stack.sales_db, "bob").await.unwrap());
    // Its sessions are gone: back to the sign-in page.
    assert_eq!(
        location(&browser.get("/console/queue").await),
        "/console/login"
    );
    assert_eq!(api("bob:bob-secret-1234").await.unwrap().status(), 403);
    let r = browser.sign_in("bob", "bob-secret-1234").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrations = false)]
async fn sign_in_attempts_are_limited_and_forms_must_come_from_the_console(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let mut browser = Browser::new(&stack);
    // The default limit: 5 attempts a minute per name.
    for _ in 0..5 {
        let r = browser.sign_in("carol", "guess-guess-guess").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = browser.sign_in("carol", "guess-guess-guess").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Too many sign-in attempts")
    );
    // Another name is not held back by carol's.
    let r = browser
        .sign_in(testkit::STAFF_NAME, testkit::STAFF_SECRET)
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);

    // A sign-in form posted from elsewhere (no pairing cookie) is refused.
    let r = Browser::new(&stack)
        .post(
            "/console/login",
            &[
                ("csrf", "made-up"),
                ("name", testkit::STAFF_NAME),
                ("secret", testkit::STAFF_SECRET),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[sqlx::test(migrations = false)]
async fn dead_letters_are_discarded_and_replayed_as_the_signed_in_person(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    for customer in ["d1", "d2"] {
        expect_json::<Order>(
            stack
                .place(&order_body(customer, &[("SKU-A", 1)]), None)
                .await,
            201,
        )
        .await;
    }
    // Dead letters as the relay leaves them when the broker refuses events for good
    // (the broker is off in these tests; the relay's part is tested in relaying.rs).
    let dead: Vec<uuid::Uuid> = sqlx::query_scalar(
        "UPDATE outbox_events SET status = 'FAILED', last_error = 'refused by the broker'
         WHERE id IN (SELECT id FROM outbox_events ORDER BY created_at LIMIT 3) RETURNING id",
    )
    .fetch_all(&stack.sales_db)
    .await
    .unwrap();
    assert_eq!(dead.len(), 3);
    sales::staff::add(&stack.sales_db, "erin", "erin-secret-123")
        .await
        .unwrap();
    let mut browser = Browser::new(&stack);
    browser.sign_in("erin", "erin-secret-123").await;
    let page = browser
        .get("/console/dead-letters")
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("refused by the broker"));
    let csrf = hidden(&page, "csrf");

    // A discard needs a reason.
    let discard = format!("/console/dead-letters/{}/discard", dead[0]);
    let r = browser
        .post(&discard, &[("csrf", &csrf), ("reason", " ")])
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text().await.unwrap().contains("reason: "));
    let r = browser
        .post(
            &discard,
            &[("csrf", &csrf), ("reason", "not needed downstream")],
        )
        .await;
    assert_eq!(location(&r), "/console/dead-letters?done=discarded");
    let r = browser
        .post("/console/dead-letters/replay", &[("csrf", &csrf)])
        .await;
    assert_eq!(location(&r), "/console/dead-letters?done=2");
    let page = browser
        .get("/console/dead-letters?done=2")
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("Replayed 2") && page.contains("No dead letters."));

    let audits: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT action, actor, reason FROM outbox_audit ORDER BY id")
            .fetch_all(&stack.sales_db)
            .await
            .unwrap();
    assert_eq!(audits.len(), 3);
    assert_eq!(
        audits[0],
        (
            "DISCARDED".to_owned(),
            "erin".to_owned(),
            Some("not needed downstream".to_owned())
        )
    );
    assert!(
        audits[1..]
            .iter()
            .all(|(action, actor, _)| action == "REPLAYED" && actor == "erin")
    );
}
