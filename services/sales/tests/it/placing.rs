//! The write path: reserve → one transaction → delivery → one transaction; the
//! reservation committed when product consumes ORDER_CREATED.

use contracts::{
    catalog::ShortItem,
    orders::{Order, OrderStatus},
};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{expect_json, expect_problem, fields};

use crate::{Stack, order_body};

#[sqlx::test(migrations = false)]
async fn an_order_reserves_commits_delivers_and_emits_its_event(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let response = stack
        .place(&order_body("alice", &[("SKU-A", 2), ("SKU-B", 1)]), None)
        .await;
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let order: Order = expect_json(response, 201).await;
    assert_eq!(location, format!("/orders/{}", order.id));
    assert_eq!(order.status, OrderStatus::PendingShipment);
    assert!(!order.requires_manual_review && !order.fallback_used);
    assert_eq!(order.items.len(), 2);
    let delivery_id = order.delivery_id.expect("delivery initiated inline");
    assert_eq!(order.version, 2, "created, then delivery recorded");

    // product: the units are held; ORDER_CREATED commits them (no call of the order path)
    let status = || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM reservations WHERE order_id = $1")
            .bind(order.id)
            .fetch_one(&stack.product_db)
            .await
            .unwrap()
    };
    assert_eq!(status().await, "ACTIVE");
    assert_eq!(stack.stock("SKU-A").await, (10, 2));
    assert_eq!(stack.relay_to_product(order.id, "ORDER_CREATED").await, 1);
    assert_eq!(status().await, "COMMITTED");
    assert_eq!(stack.stock("SKU-A").await, (8, 0));
    assert_eq!(stack.stock("SKU-B").await, (2, 0));

    // delivery: one delivery for this order
    let (id, order_id): (uuid::Uuid, uuid::Uuid) =
        sqlx::query_as("SELECT id, order_id FROM deliveries")
            .fetch_one(&stack.delivery_db)
            .await
            .unwrap();
    assert_eq!((id, order_id), (delivery_id, order.id));

    // sales: outbox rows carry the full order, history has the first status
    let events: Vec<(String, i32, Value, String)> = sqlx::query_as(
        "SELECT event_type, aggregate_version, payload, status FROM outbox_events WHERE aggregate_id = $1 ORDER BY aggregate_version",
    )
    .bind(order.id)
    .fetch_all(&stack.sales_db)
    .await
    .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!((events[0].0.as_str(), events[0].1), ("ORDER_CREATED", 1));
    assert_eq!(events[0].3, "PENDING");
    let payload: Order = serde_json::from_value(events[0].2.clone()).unwrap();
    assert_eq!(
        (payload.id, payload.items.clone(), payload.delivery_id),
        (order.id, order.items.clone(), None)
    );
    assert_eq!(
        (events[1].0.as_str(), events[1].1),
        ("DELIVERY_INITIATED", 2)
    );
    assert_eq!(events[1].2["delivery_id"], json!(delivery_id));
    let history: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT from_status, to_status FROM order_status_history WHERE order_id = $1",
    )
    .bind(order.id)
    .fetch_all(&stack.sales_db)
    .await
    .unwrap();
    assert_eq!(history, [(None, "PENDING_SHIPMENT".to_owned())]);

    let read: Order = expect_json(stack.api().get(&location).await, 200).await;
    assert_eq!(read, order);
}

#[sqlx::test(migrations = false)]
async fn a_repeated_key_replays_the_first_answer(_pool: PgPoolOptions, options: PgConnectOptions) {
    let stack = Stack::start(options).await;
    let body = order_body("alice", &[("SKU-A", 1)]);
    let first: Order = expect_json(stack.place(&body, Some("key-1")).await, 201).await;
    let again = stack.place(&body, Some("key-1")).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Order = expect_json(again, 201).await;
    assert_eq!(again.id, first.id);
    assert_eq!(stack.count(&stack.sales_db, "orders").await, 1);
    assert_eq!(stack.stock("SKU-A").await, (10, 1), "stock held once");

    let other_body = order_body("alice", &[("SKU-A", 2)]);
    let problem = expect_problem(stack.place(&other_body, Some("key-1")).await, 422).await;
    assert_eq!(problem.kind, "/problems/idempotency-key-reused");

    let bob: Order = expect_json(
        stack
            .place(&order_body("bob", &[("SKU-A", 1)]), Some("key-1"))
            .await,
        201,
    )
    .await;
    assert_ne!(bob.id, first.id, "keys are per customer");
    assert_eq!(stack.count(&stack.sales_db, "orders").await, 2);
    assert_eq!(stack.count(&stack.delivery_db, "deliveries").await, 2);
}

#[sqlx::test(migrations = false)]
async fn concurrent_requests_with_one_key_make_one_order(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let body = order_body("carol", &[("SKU-A", 1)]);
    let attempts = (0..4).map(|_| stack.place(&body, Some("same-key")));
    let responses = futures::future::join_all(attempts).await;
    let mut ids = Vec::new();
    for response in responses {
        let order: Order = expect_json(response, 201).await;
        ids.push(order.id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every attempt answers with the same order");
    assert_eq!(stack.count(&stack.sales_db, "orders").await, 1);
    assert_eq!(stack.count(&stack.delivery_db, "deliveries").await, 1);
    assert_eq!(stack.count(&stack.product_db, "reservations").await, 1);
    assert_eq!(stack.stock("SKU-A").await, (10, 1));
}

#[sqlx::test(migrations = false)]
async fn bad_orders_are_rejected_with_their_fields_and_write_nothing(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let mut bad = order_body(" ", &[("SKU-A", 0), ("", 1)]);
    bad["shipping_address"]["country"] = json!("usa");
    let problem = expect_problem(stack.place(&bad, None).await, 422).await;
    assert_eq!(
        fields(&problem),
        [
            "customer_id",
            "items[0].quantity",
            "items[1].product_id",
            "shipping_address.country"
        ]
    );
    let empty = order_body("alice", &[]);
    let problem = expect_problem(stack.place(&empty, None).await, 422).await;
    assert_eq!(fields(&problem), ["items"]);
    let too_many: Vec<(&str, i32)> = (0..101).map(|_| ("SKU-A", 1)).collect();
    expect_problem(
        stack.place(&order_body("alice", &too_many), None).await,
        422,
    )
    .await;
    let mut wrong_type = order_body("alice", &[("SKU-A", 1)]);
    wrong_type["items"][0]["quantity"] = json!(-1.5);
    let problem = expect_problem(stack.place(&wrong_type, None).await, 422).await;
    assert_eq!(fields(&problem), ["items[0].quantity"]);
    let unknown = order_body("alice", &[("SKU-A", 1), ("SKU-NOPE", 1)]);
    let problem = expect_problem(stack.place(&unknown, None).await, 422).await;
    assert_eq!(fields(&problem), ["items[1].product_id"]);
    let bad_key = stack
        .place(&order_body("alice", &[("SKU-A", 1)]), Some("has spaces"))
        .await;
    let problem = expect_problem(bad_key, 400).await;
    assert_eq!(fields(&problem), ["Idempotency-Key"]);

    assert_eq!(stack.count(&stack.sales_db, "orders").await, 0);
    assert_eq!(stack.count(&stack.sales_db, "outbox_events").await, 0);
    assert_eq!(stack.count(&stack.product_db, "reservations").await, 0);
    assert_eq!(stack.count(&stack.delivery_db, "deliveries").await, 0);
}

#[sqlx::test(migrations = false)]
async fn insufficient_stock_is_a_409_and_no_order(_pool: PgPoolOptions, options: PgConnectOptions) {
    let stack = Stack::start(options).await;
    let problem = expect_problem(
        stack
            .place(&order_body("alice", &[("SKU-A", 1), ("SKU-B", 4)]), None)
            .await,
        409,
    )
    .await;
    assert_eq!(problem.kind, "/problems/insufficient-stock");
    let short: Vec<ShortItem> =
        serde_json::from_value(problem.extensions["short_items"].clone()).unwrap();
    assert_eq!(
        short,
        [ShortItem {
            product_id: "SKU-B".into(),
            requested: 4,
            available: 3
        }]
    );
    assert_eq!(stack.count(&stack.sales_db, "orders").await, 0);
    assert_eq!(stack.stock("SKU-A").await, (10, 0));
}
