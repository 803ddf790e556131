//! Neighbours or the database unavailable: product down → the order is accepted
//! flagged for review; delivery down → the order is kept and its delivery left
//! to the retry worker; database down → 503 + Retry-After.

use contracts::orders::Order;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{expect_json, expect_problem};

use crate::{Peers, Stack, order_body};

#[sqlx::test(migrations = false)]
async fn product_down_accepts_the_order_flagged_for_review(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start_with(options, Peers::ProductDown).await;
    let body = order_body("alice", &[("SKU-A", 1)]);
    let order: Order = expect_json(stack.place(&body, Some("k")).await, 201).await;
    assert!(order.requires_manual_review && order.fallback_used);
    // Stock unconfirmed: the delivery waits for the re-check or staff, and says why.
    assert_eq!(order.delivery_id, None);
    assert_eq!(
        order.delivery_hold,
        Some(contracts::orders::DeliveryHold::AvailabilityUnverified)
    );
    let retry: String =
        sqlx::query_scalar("SELECT status FROM delivery_retries WHERE order_id = $1")
            .bind(order.id)
            .fetch_one(&stack.sales_db)
            .await
            .unwrap();
    assert_eq!(retry, "HELD");
    assert_eq!(stack.count(&stack.delivery_db, "deliveries").await, 0);
    let review: (String, Value) = sqlx::query_as(
        "SELECT reason, details FROM manual_reviews WHERE order_id = $1 AND status = 'OPEN'",
    )
    .bind(order.id)
    .fetch_one(&stack.sales_db)
    .await
    .unwrap();
    assert_eq!(review.0, "AVAILABILITY_UNVERIFIED");
    assert_eq!(review.1["product_ids"], json!(["SKU-A"]));
    let events: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM outbox_events WHERE aggregate_id = $1")
            .bind(order.id)
            .fetch_all(&stack.sales_db)
            .await
            .unwrap();
    assert!(
        events.contains(&"AVAILABILITY_CHECK_FALLBACK_USED".to_owned()),
        "{events:?}"
    );
    assert!(events.contains(&"ORDER_CREATED".to_owned()), "{events:?}");
    // A repeat replays the flagged order; nothing is written twice.
    let again: Order = expect_json(stack.place(&body, Some("k")).await, 201).await;
    assert_eq!(again.id, order.id);
    assert_eq!(stack.count(&stack.sales_db, "manual_reviews").await, 1);
}

/// A product URL that reaches a service without product's routes (a deployment mistake)
/// is product's fault, as product down is: the order is accepted flagged, not refused.
#[sqlx::test(migrations = false)]
async fn a_product_url_reaching_another_service_accepts_the_order_flagged(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let env = platform::config::Env::from_map("STRANGER_", Default::default());
    let server = platform::config::ServerConfig::from_env(&env, "127.0.0.1:0").unwrap();
    let stranger = platform::server::with_common_layers(axum::Router::new(), &server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, stranger).await });

    let stack =
        Stack::start_configured(options, Peers::Both, &[("SALES_PRODUCT_URL", url.as_str())]).await;
    let order: Order = expect_json(
        stack
            .place(&order_body("alice", &[("SKU-A", 1)]), None)
            .await,
        201,
    )
    .await;
    assert!(order.requires_manual_review && order.fallback_used);
    assert_eq!(order.delivery_id, None);
    assert_eq!(stack.count(&stack.product_db, "reservations").await, 0);
}

#[sqlx::test(migrations = false)]
async fn delivery_down_keeps_the_order_and_schedules_a_retry(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start_with(options, Peers::DeliveryDown).await;
    let body = order_body("alice", &[("SKU-A", 1)]);
    let order: Order = expect_json(stack.place(&body, None).await, 201).await;
    assert_eq!(order.delivery_id, None);
    assert_eq!(order.version, 1);
    assert_eq!(
        stack.stock("SKU-A").await,
        (10, 1),
        "units held until ORDER_CREATED"
    );
    let events: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM outbox_events ORDER BY created_at, event_type")
            .fetch_all(&stack.sales_db)
            .await
            .unwrap();
    assert_eq!(events, ["ORDER_CREATED", "DELIVERY_INITIATION_FAILED"]);
    let (status, attempts, error): (String, i32, Option<String>) = sqlx::query_as(
        "SELECT status, attempts, last_error FROM delivery_retries WHERE order_id = $1",
    )
    .bind(order.id)
    .fetch_one(&stack.sales_db)
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts), ("PENDING", 1));
    assert!(error.is_some());
    let read: Order =
        expect_json(stack.api().get(&format!("/orders/{}", order.id)).await, 200).await;
    assert_eq!(read.id, order.id);
}

#[sqlx::test(migrations = false)]
async fn database_down_answers_503_with_retry_after(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    stack.sales_db.close().await;
    let response = stack
        .place(&order_body("alice", &[("SKU-A", 1)]), None)
        .await;
    assert!(response.headers().contains_key("retry-after"));
    let problem = expect_problem(response, 503).await;
    assert_eq!(problem.title, "System temporarily unavailable");
    assert!(
        !problem.detail.unwrap_or_default().contains("sqlx"),
        "no internals leak"
    );
    let missing = stack
        .api()
        .get(&format!("/orders/{}", uuid::Uuid::new_v4()))
        .await;
    expect_problem(missing, 503).await;
    let ready = stack.api().get("/health/ready").await;
    assert_eq!(ready.status(), 503);
    // The reservation taken before the write failed is given back.
    for _ in 0..50 {
        if stack.stock("SKU-A").await == (10, 0) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "the reservation was not released: {:?}",
        stack.stock("SKU-A").await
    );
}
