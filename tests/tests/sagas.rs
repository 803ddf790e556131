//! Sales killed in the middle of an order saga: on restart the saga completes
//! or compensates, never stays half-done. Real processes; the peer a step is
//! waiting on is frozen (SIGSTOP) so the kill lands inside that step.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;
use system_tests::{Stack, StackOptions};

fn options() -> StackOptions {
    StackOptions {
        sales_env: vec![
            ("SALES_SAGA_LEASE_MS", "1000".into()),
            ("SALES_SAGA_RECOVERY_INTERVAL_MS", "300".into()),
            ("SALES_REQUEST_TIMEOUT_MS", "1500".into()),
        ],
        ..StackOptions::default()
    }
}

fn place_in_background(stack: &Stack) {
    let url = format!("{}/orders", stack.sales.base_url());
    tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(url)
            .json(&json!({
                "customer_id": "crash",
                "items": [{"product_id": "SKU-DOCK", "quantity": 2}],
                "shipping_address": {"recipient": "Ada", "line1": "1 Main St", "city": "Berlin",
                                     "postal_code": "10115", "country": "DE"}
            }))
            .send()
            .await;
    });
}

/// Waits until the only saga has ended; returns (status, order_id).
async fn saga_end(sales: &PgPool) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT status, context->>'order_id' FROM saga_instances")
                .fetch_optional(sales)
                .await
                .unwrap();
        if let Some((status, order)) = &row
            && ["COMPLETED", "COMPENSATED", "FAILED"].contains(&status.as_str())
        {
            return (status.clone(), order.clone());
        }
        assert!(
            Instant::now() < deadline,
            "the saga did not end after the restart: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_running_step(sales: &PgPool, step: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM saga_steps WHERE step = $1 AND kind = 'ACTION' AND status = 'RUNNING'",
        )
        .bind(step)
        .fetch_one(sales)
        .await
        .unwrap();
        if running == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "the saga never reached {step}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn killed_while_reserving_the_saga_compensates_after_restart() {
    let mut stack = Stack::start_with(options()).await;
    let (sales, product) = (stack.db("sales").await, stack.db("product").await);
    stack.product.pause();
    place_in_background(&stack);
    wait_running_step(&sales, "reserve_inventory").await;
    stack.sales.kill().await;
    stack.product.resume();
    // Down longer than the request may take: the customer has had an error.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.sales.start().await;

    let (status, order_id) = saga_end(&sales).await;
    assert_eq!(
        status, "COMPENSATED",
        "too late to record an order nobody was told about"
    );
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&sales)
        .await
        .unwrap();
    assert_eq!(orders, 0);
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM reservations WHERE order_id::text = $1 AND status = 'ACTIVE'",
    )
    .bind(&order_id)
    .fetch_one(&product)
    .await
    .unwrap();
    assert_eq!(
        held, 0,
        "no stock stays held for the order that was not recorded"
    );
    let (on_hand, reserved): (i32, i32) =
        sqlx::query_as("SELECT stock_on_hand, reserved FROM products WHERE id = 'SKU-DOCK'")
            .fetch_one(&product)
            .await
            .unwrap();
    assert_eq!((on_hand, reserved), (300, 0));
    sales.close().await;
    product.close().await;
    assert!(stack.shutdown().await);
}

#[tokio::test]
async fn killed_while_delivering_the_saga_completes_after_restart() {
    let mut stack = Stack::start_with(options()).await;
    let (sales, delivery) = (stack.db("sales").await, stack.db("delivery").await);
    stack.delivery.pause();
    place_in_background(&stack);
    wait_running_step(&sales, "initiate_delivery").await;
    stack.sales.kill().await;
    stack.delivery.resume();
    stack.sales.start().await;

    let (status, order_id) = saga_end(&sales).await;
    assert_eq!(status, "COMPLETED", "the recorded order is carried through");
    let deliveries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE order_id::text = $1")
            .bind(&order_id)
            .fetch_one(&delivery)
            .await
            .unwrap();
    assert_eq!(deliveries, 1, "exactly one delivery");
    let recorded: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT delivery_id FROM orders WHERE id::text = $1")
            .bind(&order_id)
            .fetch_one(&sales)
            .await
            .unwrap();
    assert!(recorded.is_some());
    sales.close().await;
    delivery.close().await;
    assert!(stack.shutdown().await);
}
