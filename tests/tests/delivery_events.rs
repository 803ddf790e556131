//! Sales follows delivery's status changes through delivery's outbox, its SNS topic and
//! sales' own SQS queue, with real processes, PostgreSQL and LocalStack, reconciliation
//! switched off (nothing else may move the order): the order shows SHIPPED and then
//! DELIVERED within a second of each change; with delivery's broker cut, the changes wait
//! in delivery's outbox and arrive when it returns; a duplicated or reordered event changes
//! nothing.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use contracts::{
    delivery::DeliveryStatus::{Delivered, InTransit, PickedUp},
    orders::OrderStatus,
};
use messaging::Envelope;
use serde_json::Value;
use sqlx::PgPool;
use system_tests::{SalesClient, Stack, StackOptions, eventually, order_request};
use uuid::Uuid;

/// The stack with delivery's events on and reconciliation off.
async fn stack(delivery_broker_proxy: bool, delivery_env: Vec<(&'static str, String)>) -> Stack {
    Stack::start_with(StackOptions {
        delivery_events: true,
        delivery_broker_proxy,
        sales_env: vec![("SALES_RECONCILIATION_ENABLED", "false".into())],
        delivery_env,
        ..StackOptions::default()
    })
    .await
}

/// Places an order and waits until sales recorded its delivery; returns both ids.
async fn placed_with_delivery(sales: &SalesClient, customer: &str) -> (Uuid, Uuid) {
    let placed = sales
        .place(&order_request(customer, &[("SKU-MOUSE", 1)]))
        .await;
    let delivery_id = sales
        .wait_for_delivery(placed.id, Duration::from_secs(10))
        .await;
    (placed.id, delivery_id)
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn an_order_shows_its_deliverys_status_within_a_second_of_each_change() {
    let stack = stack(false, Vec::new()).await;
    let (sales_api, courier) = (stack.sales_api(), stack.delivery_api());
    let (sales, delivery) = (stack.db("sales").await, stack.db("delivery").await);
    let (order_id, delivery_id) = placed_with_delivery(&sales_api, "follow").await;

    courier.set_status(delivery_id, PickedUp).await;
    let lag = sales_api
        .wait_for_status(order_id, OrderStatus::Shipped, Duration::from_secs(1))
        .await;
    println!("PICKED_UP → order SHIPPED after {lag:?}");
    courier.set_status(delivery_id, InTransit).await;
    courier.set_status(delivery_id, Delivered).await;
    let lag = sales_api
        .wait_for_status(order_id, OrderStatus::Delivered, Duration::from_secs(1))
        .await;
    println!("DELIVERED → order DELIVERED after {lag:?}");

    // Each change went through the order state machine: history and an event per step.
    let history: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT from_status, to_status FROM order_status_history WHERE order_id = $1 ORDER BY id",
    )
    .bind(order_id)
    .fetch_all(&sales)
    .await
    .unwrap();
    assert_eq!(
        history,
        vec![
            (None, "PENDING_SHIPMENT".to_owned()),
            (Some("PENDING_SHIPMENT".to_owned()), "SHIPPED".to_owned()),
            (Some("SHIPPED".to_owned()), "DELIVERED".to_owned()),
        ]
    );
    let changed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox_events WHERE aggregate_id = $1 AND event_type = 'ORDER_STATUS_CHANGED'",
    )
    .bind(order_id)
    .fetch_one(&sales)
    .await
    .unwrap();
    assert_eq!(changed, 2);
    // Delivery published all four changes; sales' queue got the three after CREATED only
    // (its subscription's filter policy drops CREATED: no sales transaction for it).
    // Marked SENT once a later change or the relay's mark interval carries the marks.
    eventually("delivery's four changes marked SENT", Duration::from_secs(5), || async {
        let published = scalar(
            &delivery,
            "SELECT count(*) FROM outbox_events WHERE event_type = 'DELIVERY_STATUS_CHANGED' AND status = 'SENT'",
        )
        .await;
        (published == 4).then_some(())
    })
    .await;
    let (outcomes, _) = eventually(
        "three events in the inbox",
        Duration::from_secs(5),
        || async {
            let outcomes: Vec<(i32, String)> = sqlx::query_as(
            "SELECT delivery_version, outcome FROM delivery_events_inbox ORDER BY delivery_version",
        )
        .fetch_all(&sales)
        .await
        .unwrap();
            (outcomes.len() == 3).then_some(outcomes)
        },
    )
    .await;
    // IN_TRANSIT changes nothing either way: the order is SHIPPED already, or (delivered
    // out of order, after DELIVERED) its version is stale.
    assert_eq!(outcomes[0], (2, "APPLIED".to_owned()));
    assert!(
        outcomes[1] == (3, "CONSISTENT".to_owned()) || outcomes[1] == (3, "STALE".to_owned()),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], (4, "APPLIED".to_owned()));
    // A CREATED event never reaches the queue: nothing else arrives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        scalar(&sales, "SELECT count(*) FROM delivery_events_inbox").await,
        3
    );
    assert!(stack.shutdown().await, "every service stopped cleanly");
}

#[tokio::test]
async fn with_deliverys_broker_cut_the_changes_wait_in_its_outbox_and_arrive_when_it_returns() {
    // The broker breaker's reset cut from 30 s to 500 ms, so recovery is seen quickly; the
    // dead-letter budget is the shipped one.
    let stack = stack(
        true,
        vec![("DELIVERY_BREAKER_BROKER_RESET_TIMEOUT_MS", "500".into())],
    )
    .await;
    let (sales_api, courier) = (stack.sales_api(), stack.delivery_api());
    let delivery = stack.db("delivery").await;
    let (order_id, delivery_id) = placed_with_delivery(&sales_api, "cut").await;
    // The CREATED event is out before the cut.
    eventually("CREATED relayed", Duration::from_secs(5), || async {
        (scalar(
            &delivery,
            "SELECT count(*) FROM outbox_events WHERE status = 'PENDING'",
        )
        .await
            == 0)
            .then_some(())
    })
    .await;

    let proxy = stack.delivery_broker_proxy.as_ref().unwrap();
    proxy.set_down(true);
    courier.set_status(delivery_id, PickedUp).await;
    courier.set_status(delivery_id, InTransit).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sales_api.get_order(order_id).await.status,
        OrderStatus::PendingShipment,
        "nothing reached sales while delivery's broker is away"
    );
    assert_eq!(
        scalar(
            &delivery,
            "SELECT count(*) FROM outbox_events WHERE status = 'PENDING'"
        )
        .await,
        2,
        "both changes wait in delivery's outbox"
    );
    assert_eq!(
        scalar(
            &delivery,
            "SELECT count(*) FROM outbox_events WHERE retry_count > 0"
        )
        .await,
        0,
        "an outage is charged to no event"
    );

    proxy.set_down(false);
    let waited = sales_api
        .wait_for_status(order_id, OrderStatus::Shipped, Duration::from_secs(15))
        .await;
    println!("order SHIPPED {waited:?} after delivery's broker returned");
    courier.set_status(delivery_id, Delivered).await;
    sales_api
        .wait_for_status(order_id, OrderStatus::Delivered, Duration::from_secs(1))
        .await;
    // Every change published and marked (a mark rides a later change or the relay's mark
    // interval), no dead letter.
    eventually(
        "every change published, no dead letter",
        Duration::from_secs(5),
        || async {
            let left = scalar(
                &delivery,
                "SELECT count(*) FROM outbox_events WHERE status IN ('PENDING', 'FAILED')",
            )
            .await;
            (left == 0).then_some(())
        },
    )
    .await;
    assert!(stack.shutdown().await, "every service stopped cleanly");
}

/// `delivery_events_total{result="duplicate"}` of sales, from `/metrics`.
async fn duplicates(sales: &SalesClient) -> u64 {
    sales
        .metrics()
        .await
        .lines()
        .find(|l| l.starts_with("delivery_events_total{") && l.contains("result=\"duplicate\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// One of delivery's outbox rows, as an envelope's parts.
type OutboxRow = (
    Uuid,
    String,
    Uuid,
    i32,
    String,
    Value,
    chrono::DateTime<chrono::Utc>,
);

#[tokio::test]
async fn a_duplicated_or_reordered_delivery_event_changes_nothing() {
    let stack = stack(false, Vec::new()).await;
    let (sales_api, courier) = (stack.sales_api(), stack.delivery_api());
    let (sales, delivery) = (stack.db("sales").await, stack.db("delivery").await);
    let (order_id, delivery_id) = placed_with_delivery(&sales_api, "dup").await;
    courier
        .courier(delivery_id, &[PickedUp, InTransit, Delivered])
        .await;
    sales_api
        .wait_for_status(order_id, OrderStatus::Delivered, Duration::from_secs(2))
        .await;
    eventually("three events applied", Duration::from_secs(5), || async {
        (scalar(&sales, "SELECT count(*) FROM delivery_events_inbox").await == 3).then_some(())
    })
    .await;
    eventually(
        "delivery's changes marked SENT",
        Duration::from_secs(5),
        || async {
            let sent = scalar(
            &delivery,
            "SELECT count(*) FROM outbox_events WHERE status = 'SENT' AND aggregate_version > 1",
        )
        .await;
            (sent == 3).then_some(())
        },
    )
    .await;
    let before = sales_api.get_order(order_id).await;
    let history_before = scalar(&sales, "SELECT count(*) FROM order_status_history").await;
    let events_before = scalar(&sales, "SELECT count(*) FROM outbox_events").await;

    // Delivery's own events as it published them, sent again newest first (duplicates,
    // reordered), plus the PICKED_UP one under a new event id (an old version arriving late).
    let rows: Vec<OutboxRow> =
        sqlx::query_as(
            "SELECT id, aggregate_type, aggregate_id, aggregate_version, event_type, payload, created_at
             FROM outbox_events WHERE status = 'SENT' AND aggregate_version > 1
             ORDER BY aggregate_version DESC",
        )
        .fetch_all(&delivery)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let mut envelopes: Vec<Envelope> = rows
        .into_iter()
        .map(
            |(id, aggregate_type, aggregate_id, aggregate_version, event_type, payload, at)| {
                Envelope {
                    event_id: id,
                    event_type,
                    aggregate_type,
                    aggregate_id,
                    aggregate_version,
                    occurred_at: at,
                    schema_version: 1,
                    payload,
                    trace: Default::default(),
                }
            },
        )
        .collect();
    let mut late = envelopes.last().unwrap().clone();
    assert_eq!(late.payload["status"], "PICKED_UP");
    late.event_id = Uuid::now_v7();
    envelopes.push(late.clone());
    let sdk = messaging::aws::emulator_sdk_config(&system_tests::aws_endpoint()).await;
    let topic = messaging::provision(
        &sdk,
        &messaging::Topology {
            topic_name: stack.delivery_topic_name.clone(),
            queues: Vec::new(),
        },
    )
    .await
    .unwrap()
    .topic_arn;
    let publisher = messaging::Publisher::new(&sdk, topic, 1);
    for envelope in &envelopes {
        let results = publisher.publish(std::slice::from_ref(envelope)).await;
        assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    }

    // The late one is recorded as stale; the three duplicates leave no row.
    let (outcome, _) = eventually("the late event", Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, String>(
            "SELECT outcome FROM delivery_events_inbox WHERE event_id = $1",
        )
        .bind(late.event_id)
        .fetch_optional(&sales)
        .await
        .unwrap()
    })
    .await;
    assert_eq!(outcome, "STALE");
    eventually(
        "four duplicates counted",
        Duration::from_secs(10),
        || async { (duplicates(&sales_api).await >= 4).then_some(()) },
    )
    .await;
    let after = sales_api.get_order(order_id).await;
    assert_eq!(after.status, OrderStatus::Delivered);
    assert_eq!(after.version, before.version, "the order did not change");
    assert_eq!(
        scalar(&sales, "SELECT count(*) FROM order_status_history").await,
        history_before
    );
    assert_eq!(
        scalar(&sales, "SELECT count(*) FROM outbox_events").await,
        events_before
    );
    assert_eq!(
        scalar(&sales, "SELECT count(*) FROM manual_reviews").await,
        0,
        "no review opened"
    );
    assert!(stack.shutdown().await, "every service stopped cleanly");
}
