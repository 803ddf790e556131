//! Customers cancel orders before shipment: the delivery is cancelled, the
//! reservation released, the order CANCELLED with an event; after pickup it is
//! a 409; a repeat changes nothing.

use contracts::{
    catalog::{Reservation, ReservationStatus},
    delivery::{Delivery, DeliveryStatus},
    orders::{Order, OrderStatus},
};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{expect_json, expect_problem};

use crate::{Peers, Stack, order_body};

async fn delivery(stack: &Stack, order: &Order) -> Delivery {
    expect_json(
        stack
            .delivery_api()
            .get(&format!("/deliveries/{}", order.delivery_id.unwrap()))
            .await,
        200,
    )
    .await
}

async fn reservation(stack: &Stack, order: &Order) -> Reservation {
    expect_json(
        stack
            .product
            .as_ref()
            .unwrap()
            .api
            .get(&format!("/reservations/{}", order.id))
            .await,
        200,
    )
    .await
}

#[sqlx::test(migrations = false)]
async fn cancelling_before_shipment_runs_the_compensations_once(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 2)]), None).await,
        201,
    )
    .await;
    assert_eq!(stack.relay_to_product(order.id, "ORDER_CREATED").await, 1);
    assert_eq!(
        stack.stock("SKU-A").await,
        (8, 0),
        "committed on ORDER_CREATED"
    );
    let path = format!("/orders/{}/cancel", order.id);
    let cancelled: Order = expect_json(
        stack
            .api()
            .post(&path, &json!({"reason": "changed my mind"}))
            .await,
        200,
    )
    .await;
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert!(cancelled.version > order.version);
    assert_eq!(
        delivery(&stack, &order).await.status,
        DeliveryStatus::Cancelled
    );
    let events = stack.events_of(order.id).await;
    assert_eq!(events.last().map(String::as_str), Some("ORDER_CANCELLED"));
    let (reason,): (String,) = sqlx::query_as(
        "SELECT reason FROM order_status_history WHERE order_id = $1 AND to_status = 'CANCELLED'",
    )
    .bind(order.id)
    .fetch_one(&stack.sales_db)
    .await
    .unwrap();
    assert!(
        reason.contains("changed my mind") && reason.contains("customer"),
        "{reason}"
    );

    // The committed units are back at once: sales released them directly, and recorded
    // product's confirmation.
    assert_eq!(
        reservation(&stack, &order).await.status,
        ReservationStatus::Released
    );
    assert_eq!(stack.stock("SKU-A").await, (10, 0));
    assert!(stock_released(&stack, &order).await);
    // ORDER_CANCELLED, consumed later, finds nothing held: no second restock; nor does a
    // late ORDER_CREATED take the units again.
    assert_eq!(stack.relay_to_product(order.id, "ORDER_CANCELLED").await, 1);
    assert_eq!(stack.relay_to_product(order.id, "ORDER_CREATED").await, 1);
    assert_eq!(stack.stock("SKU-A").await, (10, 0));
    assert_eq!(
        reservation(&stack, &order).await.status,
        ReservationStatus::Released
    );

    // Twice is harmless: same order, no second event.
    let again: Order = expect_json(stack.api().post(&path, &json!({})).await, 200).await;
    assert_eq!(again, cancelled);
    let empty = stack
        .api()
        .request(reqwest::Method::POST, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 200, "no body is fine too");
    assert_eq!(stack.events_of(order.id).await, events);
}

#[sqlx::test(migrations = false)]
async fn cancelling_after_pickup_is_a_conflict(_pool: PgPoolOptions, options: PgConnectOptions) {
    let stack = Stack::start(options).await;
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    assert_eq!(stack.relay_to_product(order.id, "ORDER_CREATED").await, 1);
    stack
        .courier(order.delivery_id.unwrap(), &["PICKED_UP"])
        .await;
    let path = format!("/orders/{}/cancel", order.id);
    let problem = expect_problem(stack.api().post(&path, &json!({})).await, 409).await;
    assert_eq!(problem.kind, "/problems/order-not-cancellable");
    let read: Order =
        expect_json(stack.api().get(&format!("/orders/{}", order.id)).await, 200).await;
    assert_eq!(read.status, OrderStatus::PendingShipment, "nothing changed");
    assert_eq!(read.version, order.version);
    assert_eq!(
        delivery(&stack, &order).await.status,
        DeliveryStatus::PickedUp
    );
    assert_eq!(
        reservation(&stack, &order).await.status,
        ReservationStatus::Committed
    );

    // Once sales knows it shipped, the state machine itself refuses.
    stack
        .reconciliation
        .run_once(chrono::Utc::now())
        .await
        .unwrap();
    let problem = expect_problem(stack.api().post(&path, &json!({})).await, 409).await;
    assert_eq!(problem.extensions["order_status"], "SHIPPED");
    expect_problem(
        stack
            .api()
            .post(
                &format!("/orders/{}/cancel", uuid::Uuid::new_v4()),
                &json!({}),
            )
            .await,
        404,
    )
    .await;
    let long = json!({"reason": "x".repeat(501)});
    expect_problem(stack.api().post(&path, &long).await, 422).await;
}

#[sqlx::test(migrations = false)]
async fn an_order_without_a_delivery_is_cancelled_and_never_delivered(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let mut stack = Stack::start_with(options, Peers::DeliveryDown).await;
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    assert_eq!(order.delivery_id, None);
    let cancelled: Order = expect_json(
        stack
            .api()
            .post(&format!("/orders/{}/cancel", order.id), &json!({}))
            .await,
        200,
    )
    .await;
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    let retry: String =
        sqlx::query_scalar("SELECT status FROM delivery_retries WHERE order_id = $1")
            .bind(order.id)
            .fetch_one(&stack.sales_db)
            .await
            .unwrap();
    assert_eq!(retry, "DONE", "the retry worker stops");
    stack.start_delivery().await;
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let report = stack.retry_worker.run_once(later).await.unwrap();
    assert_eq!(report.initiated, 0);
    assert_eq!(stack.count(&stack.delivery_db, "deliveries").await, 0);
}

async fn stock_released(stack: &Stack, order: &Order) -> bool {
    sqlx::query_scalar("SELECT stock_released_at IS NOT NULL FROM orders WHERE id = $1")
        .bind(order.id)
        .fetch_one(&stack.sales_db)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn stock_comes_back_without_its_event_when_product_was_away_at_the_cancellation(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let mut stack = Stack::start(options).await;
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 3)]), None).await,
        201,
    )
    .await;
    assert_eq!(stack.relay_to_product(order.id, "ORDER_CREATED").await, 1);
    assert_eq!(
        stack.stock("SKU-A").await,
        (7, 0),
        "committed on ORDER_CREATED"
    );
    stack.product.take().unwrap().stop().await;
    let cancelled: Order = expect_json(
        stack
            .api()
            .post(&format!("/orders/{}/cancel", order.id), &json!({}))
            .await,
        200,
    )
    .await;
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert!(!stock_released(&stack, &order).await, "product was away");

    // ORDER_CANCELLED is never consumed here (as if it were a dead letter): reconciliation,
    // once product is back, gives the units back all the same.
    stack.start_product().await;
    assert_eq!(stack.stock("SKU-A").await, (7, 0), "still held");
    let run = stack
        .reconciliation
        .run_once(chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!((run.fixed, run.errors), (1, 0), "{run:?}");
    assert!(stock_released(&stack, &order).await);
    assert_eq!(stack.stock("SKU-A").await, (10, 0));
    // Only once: the next run has nothing to release, and the event changes nothing.
    let run = stack
        .reconciliation
        .run_once(chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(run.fixed, 0, "{run:?}");
    assert_eq!(stack.relay_to_product(order.id, "ORDER_CANCELLED").await, 1);
    assert_eq!(stack.stock("SKU-A").await, (10, 0));
}

#[sqlx::test(migrations = false)]
async fn delivery_unavailable_changes_nothing(_pool: PgPoolOptions, options: PgConnectOptions) {
    let mut stack = Stack::start(options).await;
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    stack.delivery.take().unwrap().stop().await;
    let response = stack
        .api()
        .post(&format!("/orders/{}/cancel", order.id), &json!({}))
        .await;
    assert!(response.headers().contains_key("retry-after"));
    expect_problem(response, 503).await;
    let read: Order =
        expect_json(stack.api().get(&format!("/orders/{}", order.id)).await, 200).await;
    assert_eq!(
        (read.status, read.version),
        (OrderStatus::PendingShipment, order.version)
    );
    assert!(
        !stack
            .events_of(order.id)
            .await
            .contains(&"ORDER_CANCELLED".to_owned())
    );
}
