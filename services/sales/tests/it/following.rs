//! Delivery's `DELIVERY_STATUS_CHANGED` events applied by sales' consumer, event by event
//! (the events delivery really wrote, as SQS would hand them over): a valid change goes
//! through the state machine with history and an event, a redelivered or an older event
//! changes nothing, an unreachable status opens an `INVALID_STATUS_TRANSITION` review and
//! a failed delivery a `DELIVERY_FAILED` one, exactly as reconciliation does.

use contracts::orders::{Order, OrderStatus};
use messaging::Envelope;
use sales::workers::delivery_events::{Outcome, consume};
use serde_json::{Value, json};
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

/// Delivery's events about `delivery_id`, oldest first, as envelopes.
async fn events(stack: &Stack, delivery_id: Uuid) -> Vec<Envelope> {
    let rows: Vec<(Uuid, i32, String, Value, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT id, aggregate_version, event_type, payload, created_at FROM outbox_events
         WHERE aggregate_id = $1 ORDER BY aggregate_version",
    )
    .bind(delivery_id)
    .fetch_all(&stack.delivery_db)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, version, event_type, payload, at)| Envelope {
            event_id: id,
            event_type,
            aggregate_type: "delivery".into(),
            aggregate_id: delivery_id,
            aggregate_version: version,
            occurred_at: at,
            schema_version: 1,
            payload,
            trace: Default::default(),
        })
        .collect()
}

/// `event` with another status at a later version, under a new event id.
fn later(event: &Envelope, status: &str, version: i32) -> Envelope {
    let mut e = event.clone();
    e.event_id = Uuid::now_v7();
    e.aggregate_version = version;
    e.payload["status"] = json!(status);
    e.payload["version"] = json!(version);
    e
}

#[sqlx::test(migrations = false)]
async fn each_event_is_applied_once_and_older_ones_change_nothing(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let db = stack.reconciliation.db.clone();
    let cache = stack.reconciliation.cache.clone();
    let order = place(&stack, "a").await;
    let delivery_id = order.delivery_id.unwrap();
    stack
        .courier(delivery_id, &["PICKED_UP", "IN_TRANSIT", "DELIVERED"])
        .await;
    let events = events(&stack, delivery_id).await;
    assert_eq!(events.len(), 4, "created, picked up, in transit, delivered");

    // CREATED (which the queue's filter drops in production) changes nothing.
    assert_eq!(
        consume(&db, &cache, &events[0]).await.unwrap(),
        Outcome::Consistent
    );
    assert_eq!(
        consume(&db, &cache, &events[1]).await.unwrap(),
        Outcome::Applied
    );
    let shipped = read(&stack, order.id).await;
    assert_eq!(shipped.status, OrderStatus::Shipped);
    assert_eq!(shipped.version, order.version + 1);
    assert_eq!(
        consume(&db, &cache, &events[1]).await.unwrap(),
        Outcome::Duplicate
    );
    // DELIVERED before IN_TRANSIT: the order moves on, IN_TRANSIT comes too late.
    assert_eq!(
        consume(&db, &cache, &events[3]).await.unwrap(),
        Outcome::Applied
    );
    assert_eq!(
        consume(&db, &cache, &events[2]).await.unwrap(),
        Outcome::Stale
    );
    assert_eq!(
        consume(&db, &cache, &events[3]).await.unwrap(),
        Outcome::Duplicate
    );
    let delivered = read(&stack, order.id).await;
    assert_eq!(delivered.status, OrderStatus::Delivered);
    assert_eq!(delivered.version, order.version + 2);
    assert_eq!(
        stack.events_of(order.id).await,
        [
            "ORDER_CREATED",
            "DELIVERY_INITIATED",
            "ORDER_STATUS_CHANGED",
            "ORDER_STATUS_CHANGED"
        ]
    );
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM delivery_events_inbox ORDER BY received_at")
            .fetch_all(&stack.sales_db)
            .await
            .unwrap();
    assert_eq!(outcomes, ["CONSISTENT", "APPLIED", "APPLIED", "STALE"]);
    assert!(stack.reviews_of(order.id).await.is_empty());
}

#[sqlx::test(migrations = false)]
async fn an_unreachable_status_opens_a_review_and_a_failed_delivery_another(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let db = stack.reconciliation.db.clone();
    let cache = stack.reconciliation.cache.clone();

    // Cancelled at sales, yet delivery says DELIVERED: never applied, a person looks.
    let cancelled = place(&stack, "b").await;
    let response = stack
        .api()
        .post(&format!("/orders/{}/cancel", cancelled.id), &json!({}))
        .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let created = events(&stack, cancelled.delivery_id.unwrap()).await;
    let delivered = later(&created[0], "DELIVERED", 9);
    assert_eq!(
        consume(&db, &cache, &delivered).await.unwrap(),
        Outcome::Flagged
    );
    let order = read(&stack, cancelled.id).await;
    assert_eq!(order.status, OrderStatus::Cancelled);
    assert!(order.requires_manual_review);
    let details: Value = sqlx::query_scalar(
        "SELECT details FROM manual_reviews WHERE order_id = $1 AND reason = 'INVALID_STATUS_TRANSITION'",
    )
    .bind(cancelled.id)
    .fetch_one(&stack.sales_db)
    .await
    .unwrap();
    assert_eq!(details["from"], "CANCELLED");
    assert_eq!(details["to"], "DELIVERED");
    // A redelivery opens no second review.
    assert_eq!(
        consume(&db, &cache, &delivered).await.unwrap(),
        Outcome::Duplicate
    );

    // Picked up, then failed: DELIVERY_FAILED and its review.
    let failing = place(&stack, "c").await;
    stack
        .courier(failing.delivery_id.unwrap(), &["PICKED_UP", "FAILED"])
        .await;
    for event in events(&stack, failing.delivery_id.unwrap()).await {
        consume(&db, &cache, &event).await.unwrap();
    }
    assert_eq!(
        read(&stack, failing.id).await.status,
        OrderStatus::DeliveryFailed
    );
    assert_eq!(
        stack.reviews_of(failing.id).await,
        [("DELIVERY_FAILED".to_owned(), "OPEN".to_owned())]
    );
}

#[sqlx::test(migrations = false)]
async fn an_event_about_a_delivery_sales_has_not_recorded_records_it(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let db = stack.reconciliation.db.clone();
    let cache = stack.reconciliation.cache.clone();
    let order = place(&stack, "d").await;
    let delivery_id = order.delivery_id.unwrap();
    // As if the answer to the initiation had been lost: sales does not know the delivery.
    sqlx::query("UPDATE orders SET delivery_id = NULL WHERE id = $1")
        .bind(order.id)
        .execute(&stack.sales_db)
        .await
        .unwrap();
    stack.courier(delivery_id, &["PICKED_UP"]).await;
    let picked_up = events(&stack, delivery_id).await.pop().unwrap();
    assert_eq!(
        consume(&db, &cache, &picked_up).await.unwrap(),
        Outcome::Applied
    );
    let shipped = read(&stack, order.id).await;
    assert_eq!(shipped.status, OrderStatus::Shipped);
    assert_eq!(shipped.delivery_id, Some(delivery_id));
    assert_eq!(
        stack.events_of(order.id).await,
        [
            "ORDER_CREATED",
            "DELIVERY_INITIATED",
            "DELIVERY_INITIATED",
            "ORDER_STATUS_CHANGED"
        ]
    );
}
