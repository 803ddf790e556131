//! An order placed through sales, seen at product, delivery and in sales' outbox,
//! with the three services running as real processes.
#![allow(clippy::unwrap_used)]

use contracts::{
    catalog::{Reservation, ReservationStatus},
    delivery::Delivery,
    orders::Order,
};
use serde_json::json;
use system_tests::Stack;

#[tokio::test]
async fn an_order_crosses_all_three_services() {
    let stack = Stack::start().await;
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/orders", stack.sales.base_url()))
        .header("Idempotency-Key", "system-test-1")
        .json(&json!({
            "customer_id": "customer-1",
            "items": [{"product_id": "SKU-KEYBOARD", "quantity": 2}, {"product_id": "SKU-MOUSE", "quantity": 1}],
            "shipping_address": {"recipient": "Ada", "line1": "1 Main St", "city": "Berlin",
                                 "postal_code": "10115", "country": "DE"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let order: Order = response.json().await.unwrap();

    let reservation: Reservation = http
        .get(format!(
            "{}/reservations/{}",
            stack.product.base_url(),
            order.id
        ))
        .bearer_auth(system_tests::SERVICE_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reservation.status, ReservationStatus::Committed);
    assert_eq!(reservation.items.len(), 2);

    let deliveries: Vec<Delivery> = http
        .get(format!(
            "{}/deliveries?order_id={}",
            stack.delivery.base_url(),
            order.id
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(Some(deliveries[0].id), order.delivery_id);

    let sales_db = stack.db("sales").await;
    let events: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_type, status FROM outbox_events WHERE aggregate_id = $1 ORDER BY aggregate_version",
    )
    .bind(order.id)
    .fetch_all(&sales_db)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            ("ORDER_CREATED".to_owned(), "PENDING".to_owned()),
            ("DELIVERY_INITIATED".to_owned(), "PENDING".to_owned())
        ]
    );
    sales_db.close().await;
    assert!(
        stack.shutdown().await,
        "every service exits cleanly on SIGTERM"
    );
}

#[tokio::test]
async fn an_order_survives_delivery_being_down() {
    let mut stack = Stack::start().await;
    stack.delivery.kill().await;
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/orders", stack.sales.base_url()))
        .json(&json!({
            "customer_id": "customer-2",
            "items": [{"product_id": "SKU-DOCK", "quantity": 1}],
            "shipping_address": {"recipient": "Bo", "line1": "2 Side St", "city": "Paris",
                                 "postal_code": "75001", "country": "FR"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let order: Order = response.json().await.unwrap();
    assert_eq!(order.delivery_id, None);
    let read: Order = http
        .get(format!("{}/orders/{}", stack.sales.base_url(), order.id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read.id, order.id);
    stack.delivery.start().await;
    assert!(stack.shutdown().await);
}
