//! Sales killed in the middle of an order saga: on restart the saga completes, or, killed
//! before its first checkpoint, leaves only a reservation that expires. Real processes; the
//! peer a step is waiting on is frozen (SIGSTOP) so the kill lands inside that step.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use sqlx::PgPool;
use system_tests::{Stack, StackOptions, order_request};

fn options() -> StackOptions {
    StackOptions {
        sales_env: vec![
            ("SALES_SAGA_LEASE_MS", "1000".into()),
            ("SALES_SAGA_RECOVERY_INTERVAL_MS", "300".into()),
            ("SALES_REQUEST_TIMEOUT_MS", "1500".into()),
        ],
        // Reservations live 2 s instead of 15 min, so an abandoned one is seen expiring.
        product_env: vec![
            ("PRODUCT_RESERVATION_TTL_MS", "2000".into()),
            ("PRODUCT_EXPIRY_SWEEP_INTERVAL_MS", "250".into()),
        ],
        ..StackOptions::default()
    }
}

fn place_in_background(stack: &Stack) {
    let sales = stack.sales_api();
    tokio::spawn(async move {
        // The process is killed under it: whatever it answers (if anything) is not read.
        let _ = sales
            .place_raw(&order_request("crash", &[("SKU-DOCK", 2)]), None)
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

/// Waits until the order's saga is written (its record transaction committed) and
/// running `step`.
async fn wait_saga_at(sales: &PgPool, step: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let at: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM saga_instances WHERE status = 'RUNNING' AND current_step = $1",
        )
        .bind(step)
        .fetch_one(sales)
        .await
        .unwrap();
        if at == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "the saga never reached {step}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn killed_between_the_reservation_and_the_order_only_a_reservation_is_left_and_it_expires() {
    let mut options = options();
    // Fault injection: a pause after product reserved, before the order's transaction.
    options
        .sales_env
        .push(("SALES_FAULT_PAUSE_BEFORE_RECORD_MS", "5000".into()));
    let mut stack = Stack::start_with(options).await;
    let (sales, product) = (stack.db("sales").await, stack.db("product").await);
    place_in_background(&stack);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM reservations WHERE status = 'ACTIVE'")
        .fetch_one(&product)
        .await
        .unwrap()
        == 0
    {
        assert!(Instant::now() < deadline, "product never reserved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.sales.kill().await;
    stack
        .sales
        .set_env("SALES_FAULT_PAUSE_BEFORE_RECORD_MS", "0");
    stack.sales.start().await;

    // The saga is written with the order, in one transaction: none, and no order, was.
    for table in ["saga_instances", "orders"] {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&sales)
            .await
            .unwrap();
        assert_eq!(rows, 0, "{table}");
    }
    // Only the reservation product made is left, and it frees itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM reservations")
            .fetch_all(&product)
            .await
            .unwrap();
        if statuses == ["EXPIRED"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned reservation did not expire: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (on_hand, reserved): (i32, i32) =
        sqlx::query_as("SELECT stock_on_hand, reserved FROM products WHERE id = 'SKU-DOCK'")
            .fetch_one(&product)
            .await
            .unwrap();
    assert_eq!((on_hand, reserved), (300, 0), "no stock stays held");
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
    wait_saga_at(&sales, "initiate_delivery").await;
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
