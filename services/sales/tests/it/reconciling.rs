//! The reconciliation job, run by run: delivery's status is applied along valid
//! transitions, an invalid one and a failed delivery go to manual review, errors
//! on one order do not stop the run, and every run is recorded and reported.

use chrono::Utc;
use contracts::orders::{Order, OrderStatus};
use sales::workers::reconciliation::RunStatus;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::expect_json;
use uuid::Uuid;

use crate::{Stack, order_body};

async fn place(stack: &Stack, customer: &str) -> Order {
    expect_json(
        stack
            .place(&order_body(customer, &[("SKU-A", 1)]), None)
            .await,
        201,
    )
    .await
}

async fn read(stack: &Stack, id: Uuid) -> Order {
    expect_json(stack.api().get(&format!("/orders/{id}")).await, 200).await
}

async fn history(stack: &Stack, id: Uuid) -> Vec<(Option<String>, String)> {
    sqlx::query_as(
        "SELECT from_status, to_status FROM order_status_history WHERE order_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&stack.sales_db)
    .await
    .unwrap()
}

async fn jobs_status(stack: &Stack) -> Value {
    let health: Value = expect_json(stack.api().get("/health/reliability").await, 200).await;
    health["reconciliationJobsStatus"].clone()
}

#[sqlx::test(migrations = false)]
async fn a_delivered_delivery_moves_the_order_step_by_step(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let moving = place(&stack, "a").await;
    let waiting = place(&stack, "b").await;
    stack
        .courier(
            moving.delivery_id.unwrap(),
            &["PICKED_UP", "IN_TRANSIT", "DELIVERED"],
        )
        .await;

    let report = stack.reconciliation.run_once(Utc::now()).await.unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    assert_eq!(
        (report.checked, report.fixed, report.flagged, report.errors),
        (2, 1, 0, 0)
    );
    let moved = read(&stack, moving.id).await;
    assert_eq!(moved.status, OrderStatus::Delivered);
    assert_eq!(moved.version, moving.version + 2);
    assert!(!moved.requires_manual_review);
    assert_eq!(
        history(&stack, moving.id).await,
        [
            (None, "PENDING_SHIPMENT".into()),
            (Some("PENDING_SHIPMENT".into()), "SHIPPED".into()),
            (Some("SHIPPED".into()), "DELIVERED".into()),
        ]
    );
    let events = stack.events_of(moving.id).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| *e == "ORDER_STATUS_CHANGED")
            .count(),
        2
    );
    assert_eq!(
        read(&stack, waiting.id).await,
        waiting,
        "consistent: untouched"
    );

    // Delivered is final: the next run leaves it alone.
    let report = stack.reconciliation.run_once(Utc::now()).await.unwrap();
    assert_eq!((report.checked, report.fixed), (1, 0));
    assert_eq!(jobs_status(&stack).await, "HEALTHY");
}

#[sqlx::test(migrations = false)]
async fn an_invalid_transition_is_flagged_never_applied(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let order = place(&stack, "a").await;
    let delivery_id = order.delivery_id.unwrap();
    stack.courier(delivery_id, &["PICKED_UP"]).await;
    stack.reconciliation.run_once(Utc::now()).await.unwrap();
    assert_eq!(read(&stack, order.id).await.status, OrderStatus::Shipped);

    // Someone cancels the delivery behind delivery's API, after pickup.
    sqlx::query("UPDATE deliveries SET status = 'CANCELLED' WHERE id = $1")
        .bind(delivery_id)
        .execute(&stack.delivery_db)
        .await
        .unwrap();
    let report = stack.reconciliation.run_once(Utc::now()).await.unwrap();
    assert_eq!((report.fixed, report.flagged), (0, 1));
    let flagged = read(&stack, order.id).await;
    assert_eq!(flagged.status, OrderStatus::Shipped, "never applied");
    assert!(flagged.requires_manual_review);
    let (reason, details): (String, Value) = sqlx::query_as(
        "SELECT reason, details FROM manual_reviews WHERE order_id = $1 AND status = 'OPEN'",
    )
    .bind(order.id)
    .fetch_one(&stack.sales_db)
    .await
    .unwrap();
    assert_eq!(reason, "INVALID_STATUS_TRANSITION");
    assert_eq!(
        (
            &details["from"],
            &details["to"],
            &details["delivery_status"]
        ),
        (
            &Value::from("SHIPPED"),
            &Value::from("CANCELLED"),
            &Value::from("CANCELLED")
        )
    );
    assert!(
        stack
            .events_of(order.id)
            .await
            .contains(&"ORDER_FLAGGED_FOR_REVIEW".to_owned())
    );

    // Flagged orders are checked every run; the review is not opened twice.
    let report = stack.reconciliation.run_once(Utc::now()).await.unwrap();
    assert_eq!((report.checked, report.flagged), (1, 0));
    assert_eq!(stack.reviews_of(order.id).await.len(), 1);
}

#[sqlx::test(migrations = false)]
async fn a_failed_delivery_fails_the_order_and_opens_a_review(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let order = place(&stack, "a").await;
    stack
        .courier(order.delivery_id.unwrap(), &["PICKED_UP", "FAILED"])
        .await;
    let report = stack.reconciliation.run_once(Utc::now()).await.unwrap();
    assert_eq!((report.fixed, report.flagged), (1, 1));
    let failed = read(&stack, order.id).await;
    assert_eq!(failed.status, OrderStatus::DeliveryFailed);
    assert!(failed.requires_manual_review);
    assert_eq!(
        stack.reviews_of(order.id).await,
        [("DELIVERY_FAILED".to_owned(), "OPEN".to_owned())]
    );
    assert_eq!(
        history(&stack, order.id)
            .await
            .into_iter()
            .map(|(_, to)| to)
            .collect::<Vec<_>>(),
        [
            "PENDING_SHIPMENT",
            "SHIPPED",
            "DELIVERY_FAILED",
            "DELIVERY_FAILED"
        ],
        "the last row records the flag"
    );
}

#[sqlx::test(migrations = false)]
async fn runs_are_recorded_errors_do_not_stop_them_and_one_runs_at_a_time(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let lost = place(&stack, "lost").await;
    let moving = place(&stack, "moving").await;
    // Delivery knows nothing of this one.
    sqlx::query("UPDATE orders SET delivery_id = $2 WHERE id = $1")
        .bind(lost.id)
        .bind(Uuid::new_v4())
        .execute(&stack.sales_db)
        .await
        .unwrap();
    stack
        .courier(moving.delivery_id.unwrap(), &["PICKED_UP"])
        .await;
    assert_eq!(
        jobs_status(&stack).await,
        "HEALTHY",
        "no run yet, just started"
    );

    let report = stack.reconciliation.run_once(Utc::now()).await.unwrap();
    assert_eq!(report.status, Some(RunStatus::Partial));
    assert_eq!((report.checked, report.fixed, report.errors), (2, 1, 1));
    assert_eq!(read(&stack, moving.id).await.status, OrderStatus::Shipped);
    let run: (String, i32, i32, i32, i32, Option<String>, bool) = sqlx::query_as(
        "SELECT status, checked, fixed, flagged, errors, error, finished_at >= started_at
         FROM reconciliation_runs WHERE id = $1",
    )
    .bind(report.run_id.unwrap())
    .fetch_one(&stack.sales_db)
    .await
    .unwrap();
    assert_eq!(
        (run.0.as_str(), run.1, run.2, run.3, run.4),
        ("PARTIAL", 2, 1, 0, 1)
    );
    assert!(run.5.unwrap().contains(&lost.id.to_string()));
    assert!(run.6);
    assert_eq!(jobs_status(&stack).await, "DEGRADED");

    // Another instance holding the lock: this run is skipped, nothing recorded.
    let mut other = stack.sales_db.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(sales::workers::reconciliation::LOCK_KEY)
        .execute(&mut *other)
        .await
        .unwrap();
    let skipped = stack.reconciliation.run_once(Utc::now()).await.unwrap();
    assert!(skipped.skipped && skipped.run_id.is_none());
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(sales::workers::reconciliation::LOCK_KEY)
        .execute(&mut *other)
        .await
        .unwrap();
    drop(other);

    // Fixed at delivery's side: the next run is clean.
    sqlx::query("UPDATE orders SET delivery_id = $2 WHERE id = $1")
        .bind(lost.id)
        .bind(lost.delivery_id)
        .execute(&stack.sales_db)
        .await
        .unwrap();
    let report = stack.reconciliation.run_once(Utc::now()).await.unwrap();
    assert_eq!(report.status, Some(RunStatus::Succeeded));
    assert_eq!(jobs_status(&stack).await, "HEALTHY");
    assert_eq!(stack.count(&stack.sales_db, "reconciliation_runs").await, 2);

    // A run that died half-way is closed as FAILED by the next one; a run that
    // failed entirely makes the status FAILED.
    sqlx::query(
        "INSERT INTO reconciliation_runs (id, started_at, status) VALUES ($1, now(), 'RUNNING')",
    )
    .bind(Uuid::now_v7())
    .execute(&stack.sales_db)
    .await
    .unwrap();
    stack.reconciliation.run_once(Utc::now()).await.unwrap();
    let interrupted: String =
        sqlx::query_scalar("SELECT error FROM reconciliation_runs WHERE status = 'FAILED'")
            .fetch_one(&stack.sales_db)
            .await
            .unwrap();
    assert!(interrupted.contains("interrupted"));
    assert_eq!(
        jobs_status(&stack).await,
        "HEALTHY",
        "the latest run is what counts"
    );
    sqlx::query(
        "INSERT INTO reconciliation_runs (id, started_at, finished_at, status, error)
         VALUES ($1, now() + interval '1 second', now() + interval '1 second', 'FAILED', 'database gone')",
    )
    .bind(Uuid::now_v7())
    .execute(&stack.sales_db)
    .await
    .unwrap();
    assert_eq!(jobs_status(&stack).await, "FAILED");
}

#[sqlx::test(migrations = false)]
async fn an_order_nobody_picks_up_for_days_goes_to_review_once_per_period(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let order = place(&stack, "a").await;
    let days = |h: i64| Utc::now() + chrono::Duration::hours(h);

    // Pending for a day: consistent with delivery (not picked up), nothing to do yet.
    let report = stack.reconciliation.run_once(days(25)).await.unwrap();
    assert_eq!((report.checked, report.flagged), (1, 0));
    assert!(stack.reviews_of(order.id).await.is_empty());

    // Past the review period (72 h by default): one review, the order flagged.
    let report = stack.reconciliation.run_once(days(73)).await.unwrap();
    assert_eq!((report.checked, report.fixed, report.flagged), (1, 0, 1));
    assert_eq!(
        stack.reviews_of(order.id).await,
        [("STALE_PENDING_SHIPMENT".to_owned(), "OPEN".to_owned())]
    );
    let flagged = read(&stack, order.id).await;
    assert!(flagged.requires_manual_review);
    assert_eq!(flagged.status, OrderStatus::PendingShipment);
    assert!(
        stack
            .events_of(order.id)
            .await
            .contains(&"ORDER_FLAGGED_FOR_REVIEW".to_owned())
    );

    // The next runs do not open another while it is open.
    let report = stack.reconciliation.run_once(days(74)).await.unwrap();
    assert_eq!(report.flagged, 0);
    assert_eq!(stack.reviews_of(order.id).await.len(), 1);

    // A picked-up parcel is not stale, however old the order.
    let other = place(&stack, "b").await;
    stack
        .courier(other.delivery_id.unwrap(), &["PICKED_UP"])
        .await;
    stack.reconciliation.run_once(days(100)).await.unwrap();
    assert_eq!(read(&stack, other.id).await.status, OrderStatus::Shipped);
    assert!(stack.reviews_of(other.id).await.is_empty());
}
