//! Neighbours or the database unavailable, in the foundation's plain form:
//! product down → 503 (the fallback comes with the breakers), delivery down →
//! the order is kept without a delivery, database down → 503 + Retry-After.

use contracts::orders::Order;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{expect_json, expect_problem};

use crate::{Peers, Stack, order_body};

#[sqlx::test(migrations = false)]
async fn product_down_answers_503_and_writes_nothing(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start_with(options, Peers::ProductDown).await;
    let response = stack
        .place(&order_body("alice", &[("SKU-A", 1)]), Some("k"))
        .await;
    assert_eq!(response.headers()["retry-after"], "5");
    expect_problem(response, 503).await;
    assert_eq!(stack.count(&stack.sales_db, "orders").await, 0);
    assert_eq!(stack.count(&stack.sales_db, "idempotency_keys").await, 0);
}

#[sqlx::test(migrations = false)]
async fn delivery_down_keeps_the_order_without_a_delivery(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start_with(options, Peers::DeliveryDown).await;
    let order: Order = expect_json(
        stack
            .place(&order_body("alice", &[("SKU-A", 1)]), None)
            .await,
        201,
    )
    .await;
    assert_eq!(order.delivery_id, None);
    assert_eq!(order.version, 1);
    assert_eq!(stack.stock("SKU-A").await, (9, 0), "reservation committed");
    let events: Vec<String> = sqlx::query_scalar("SELECT event_type FROM outbox_events")
        .fetch_all(&stack.sales_db)
        .await
        .unwrap();
    assert_eq!(events, ["ORDER_CREATED"]);
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
    assert_eq!(response.headers()["retry-after"], "5");
    let problem = expect_problem(response, 503).await;
    assert!(
        !problem.detail.unwrap_or_default().contains("sqlx"),
        "no internals leak"
    );
    expect_problem(
        stack
            .api()
            .get(&format!("/orders/{}", uuid::Uuid::new_v4()))
            .await,
        503,
    )
    .await;
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
