//! The order status state machine against the database: every (from, to) pair,
//! what a valid transition writes, that an invalid one writes nothing, and that a status
//! read from the database that the enums do not know is an error.

use contracts::orders::{Order, OrderStatus};
use sales::orders::status::{self, TransitionError, Transitioned};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::expect_json;

use crate::{Stack, order_body};

async fn counts(stack: &Stack, order: uuid::Uuid) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM order_status_history WHERE order_id = $1),
                (SELECT count(*) FROM outbox_events WHERE aggregate_id = $1)",
    )
    .bind(order)
    .fetch_one(&stack.sales_db)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn every_pair_of_statuses_follows_the_table(_pool: PgPoolOptions, options: PgConnectOptions) {
    let stack = Stack::start(options).await;
    let order: Order = expect_json(
        stack.place(&order_body("t", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    let (history, events) = counts(&stack, order.id).await;
    let mut applied = Vec::new();
    for from in OrderStatus::ALL {
        for to in OrderStatus::ALL {
            // Each pair in its own transaction, rolled back: the order is reused.
            let mut tx = stack.sales_db.begin().await.unwrap();
            sqlx::query("UPDATE orders SET status = $2 WHERE id = $1")
                .bind(order.id)
                .bind(from.as_str())
                .execute(&mut *tx)
                .await
                .unwrap();
            let mut lock = sales::store::lock(&mut tx, order.id)
                .await
                .unwrap()
                .unwrap();
            let result = status::transition(&mut lock, to, "table test").await;
            let (history_now, events_now): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM order_status_history WHERE order_id = $1),
                        (SELECT count(*) FROM outbox_events WHERE aggregate_id = $1)",
            )
            .bind(order.id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            match result {
                Ok(Transitioned::Applied {
                    order: moved,
                    from: was,
                }) => {
                    assert_eq!((was, moved.status), (from, to));
                    assert_eq!(moved.version, order.version + 1);
                    assert_eq!((history_now, events_now), (history + 1, events + 1));
                    applied.push((from, to));
                }
                Ok(Transitioned::Unchanged(same)) => {
                    assert_eq!(from, to);
                    assert_eq!(same.version, order.version);
                    assert_eq!((history_now, events_now), (history, events));
                }
                Err(TransitionError::Invalid(invalid)) => {
                    assert_ne!(from, to);
                    assert_eq!((invalid.from, invalid.to), (from, to));
                    assert_eq!(
                        (history_now, events_now),
                        (history, events),
                        "refused: nothing written"
                    );
                }
                Err(e) => panic!("{from:?} → {to:?}: {e}"),
            }
            tx.rollback().await.unwrap();
        }
    }
    use OrderStatus::*;
    assert_eq!(
        applied,
        [
            (PendingShipment, Shipped),
            (PendingShipment, Cancelled),
            (Shipped, Delivered),
            (Shipped, DeliveryFailed),
        ]
    );
    // No such order: nothing to lock, so nothing to move.
    let mut conn = stack.sales_db.acquire().await.unwrap();
    let missing = sales::store::lock(&mut conn, uuid::Uuid::new_v4()).await;
    assert!(matches!(missing, Ok(None)));
}

#[sqlx::test(migrations = false)]
async fn a_transition_writes_history_and_an_event_with_the_full_order(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let order: Order = expect_json(
        stack.place(&order_body("t", &[("SKU-A", 2)]), None).await,
        201,
    )
    .await;
    let mut tx = stack.sales_db.begin().await.unwrap();
    let mut lock = sales::store::lock(&mut tx, order.id)
        .await
        .unwrap()
        .unwrap();
    let shipped = status::transition(&mut lock, OrderStatus::Shipped, "picked up")
        .await
        .unwrap();
    assert!(shipped.applied());
    tx.commit().await.unwrap();

    let read: Order =
        expect_json(stack.api().get(&format!("/orders/{}", order.id)).await, 200).await;
    assert_eq!(read.status, OrderStatus::Shipped);
    assert_eq!(read.version, order.version + 1);
    let last: (Option<String>, String, Option<String>) = sqlx::query_as(
        "SELECT from_status, to_status, reason FROM order_status_history WHERE order_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(order.id)
    .fetch_one(&stack.sales_db)
    .await
    .unwrap();
    assert_eq!(
        last,
        (
            Some("PENDING_SHIPMENT".into()),
            "SHIPPED".into(),
            Some("picked up".into())
        )
    );
    let (version, payload): (i32, Value) = sqlx::query_as(
        "SELECT aggregate_version, payload FROM outbox_events WHERE aggregate_id = $1 AND event_type = 'ORDER_STATUS_CHANGED'",
    )
    .bind(order.id)
    .fetch_one(&stack.sales_db)
    .await
    .unwrap();
    assert_eq!(version, read.version);
    let carried: Order = serde_json::from_value(payload).unwrap();
    assert_eq!(carried, read, "the event carries the order as it is now");

    // Shipped cannot be cancelled: refused, returned, nothing applied.
    let mut tx = stack.sales_db.begin().await.unwrap();
    let mut lock = sales::store::lock(&mut tx, order.id)
        .await
        .unwrap()
        .unwrap();
    let refused = status::transition(&mut lock, OrderStatus::Cancelled, "too late").await;
    assert!(
        matches!(refused, Err(TransitionError::Invalid(i)) if i.from == OrderStatus::Shipped),
        "{refused:?}"
    );
    drop(tx);
    let read: Order =
        expect_json(stack.api().get(&format!("/orders/{}", order.id)).await, 200).await;
    assert_eq!(read.status, OrderStatus::Shipped);
}

#[sqlx::test(migrations = false)]
async fn a_status_the_enums_do_not_know_is_a_decode_error_never_a_default(pool: sqlx::PgPool) {
    use sales::{
        orders::reviews::{ReviewReason, ReviewStatus},
        store::delivery_retries::RetryStatus,
    };
    let read = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, OrderStatus>(sql)
                .fetch_one(&pool)
                .await
        }
    };
    assert_eq!(
        read("SELECT 'SHIPPED'::text").await.unwrap(),
        OrderStatus::Shipped
    );
    for unknown in ["SELECT 'LOST'::text", "SELECT 'shipped'::text"] {
        let err = read(unknown).await.unwrap_err();
        assert!(
            matches!(err, sqlx::Error::ColumnDecode { .. }),
            "{unknown}: {err:?}"
        );
    }
    let reason = sqlx::query_scalar::<_, ReviewReason>("SELECT 'NOT_A_REASON'::text")
        .fetch_one(&pool)
        .await;
    assert!(matches!(reason, Err(sqlx::Error::ColumnDecode { .. })));
    let status = sqlx::query_scalar::<_, ReviewStatus>("SELECT 'open'::text")
        .fetch_one(&pool)
        .await;
    assert!(
        matches!(status, Err(sqlx::Error::ColumnDecode { .. })),
        "exact case only"
    );
    let retry: RetryStatus = sqlx::query_scalar("SELECT 'HELD'::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(retry, RetryStatus::Held);
}
