//! The delivery retry worker, driven step by step with a chosen clock.

use chrono::{DateTime, Duration, Utc};
use contracts::orders::Order;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::expect_json;
use uuid::Uuid;

use crate::{Peers, Stack, order_body};

async fn retry_row(stack: &Stack, order: Uuid) -> (String, i32, DateTime<Utc>) {
    sqlx::query_as(
        "SELECT status, attempts, next_attempt_at FROM delivery_retries WHERE order_id = $1",
    )
    .bind(order)
    .fetch_one(&stack.sales_db)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn failed_initiations_back_off_then_open_a_review(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start_configured(
        options,
        Peers::DeliveryDown,
        &[("SALES_DELIVERY_RETRY_MAX_ATTEMPTS", "3")],
    )
    .await;
    let placed_at = Utc::now();
    let order: Order = expect_json(
        stack
            .place(&order_body("alice", &[("SKU-A", 1)]), None)
            .await,
        201,
    )
    .await;
    let (status, attempts, next) = retry_row(&stack, order.id).await;
    assert_eq!((status.as_str(), attempts), ("PENDING", 1));
    let first_delay = next - placed_at;
    assert!(
        first_delay >= Duration::seconds(59) && first_delay <= Duration::seconds(62),
        "first retry about 60 s after the failure: {first_delay}"
    );

    let worker = &stack.retry_worker;
    let report = worker.run_once(Utc::now()).await.unwrap();
    assert_eq!(report.claimed, 0, "nothing is due yet");

    let t1 = next + Duration::seconds(1);
    let report = worker.run_once(t1).await.unwrap();
    assert_eq!((report.claimed, report.rescheduled), (1, 1));
    let (status, attempts, next) = retry_row(&stack, order.id).await;
    assert_eq!((status.as_str(), attempts), ("PENDING", 2));
    assert_eq!(next - t1, Duration::seconds(120), "backoff doubles");

    let t2 = next + Duration::seconds(1);
    let report = worker.run_once(t2).await.unwrap();
    assert_eq!(report.exhausted, 1);
    let (status, attempts, _) = retry_row(&stack, order.id).await;
    assert_eq!((status.as_str(), attempts), ("EXHAUSTED", 3));
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT reason FROM manual_reviews WHERE order_id = $1 AND status = 'OPEN'",
    )
    .bind(order.id)
    .fetch_all(&stack.sales_db)
    .await
    .unwrap();
    assert_eq!(reasons, ["DELIVERY_RETRIES_EXHAUSTED"]);
    let report = worker.run_once(t2 + Duration::hours(1)).await.unwrap();
    assert_eq!(report.claimed, 0, "exhausted rows are left to staff");
}

#[sqlx::test(migrations = false)]
async fn the_worker_initiates_each_pending_delivery_once(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let mut stack = Stack::start_with(options, Peers::DeliveryDown).await;
    let mut ids = Vec::new();
    for customer in ["a", "b", "c"] {
        let order: Order = expect_json(
            stack
                .place(&order_body(customer, &[("SKU-A", 1)]), None)
                .await,
            201,
        )
        .await;
        ids.push(order.id);
    }
    stack.start_delivery().await;
    let later = Utc::now() + Duration::minutes(2);
    let report = stack.retry_worker.run_once(later).await.unwrap();
    assert_eq!((report.claimed, report.initiated), (3, 3));
    // A second worker step (or a second instance) finds nothing left to do.
    let again = stack
        .retry_worker
        .run_once(later + Duration::minutes(10))
        .await
        .unwrap();
    assert_eq!(again.claimed, 0);
    assert_eq!(stack.count(&stack.delivery_db, "deliveries").await, 3);
    for id in ids {
        let order: Order = expect_json(stack.api().get(&format!("/orders/{id}")).await, 200).await;
        assert!(order.delivery_id.is_some());
        assert_eq!(retry_row(&stack, id).await.0, "DONE");
    }
}

#[sqlx::test(migrations = false)]
async fn retention_deletes_old_sent_events_and_keeps_dead_letters(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    for _ in 0..3 {
        expect_json::<Order>(
            stack.place(&order_body("r", &[("SKU-A", 1)]), None).await,
            201,
        )
        .await;
    }
    let now = Utc::now();
    // Two events sent ten days ago, one sent just now, one dead letter from long ago.
    sqlx::query("UPDATE outbox_events SET status = 'SENT', sent_at = $1 WHERE id IN (SELECT id FROM outbox_events ORDER BY created_at LIMIT 2)")
        .bind(now - Duration::days(10))
        .execute(&stack.sales_db)
        .await
        .unwrap();
    sqlx::query("UPDATE outbox_events SET status = 'SENT', sent_at = $1 WHERE id IN (SELECT id FROM outbox_events WHERE status = 'PENDING' ORDER BY created_at LIMIT 1)")
        .bind(now)
        .execute(&stack.sales_db)
        .await
        .unwrap();
    sqlx::query("UPDATE outbox_events SET status = 'FAILED', created_at = $1 WHERE id IN (SELECT id FROM outbox_events WHERE status = 'PENDING' ORDER BY created_at LIMIT 1)")
        .bind(now - Duration::days(30))
        .execute(&stack.sales_db)
        .await
        .unwrap();
    let before = stack.count(&stack.sales_db, "outbox_events").await;
    let outbox = sales::Config::from(&platform::config::Env::from_map(
        "SALES_",
        Default::default(),
    ))
    .unwrap()
    .outbox;
    let deleted = sales::outbox::cleanup::run_once(&stack.sales_db, &outbox, now)
        .await
        .unwrap();
    assert_eq!(deleted, 2, "only SENT rows older than the 7-day retention");
    assert_eq!(
        stack.count(&stack.sales_db, "outbox_events").await,
        before - 2
    );
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status = 'FAILED'")
            .fetch_one(&stack.sales_db)
            .await
            .unwrap();
    assert_eq!(failed, 1, "dead letters stay until replayed or discarded");
}
