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
    // Held until product consumes ORDER_CREATED (no broker in this test: it waits).
    assert_eq!(reservation.status, ReservationStatus::Active);
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

/// Product's and delivery's internal endpoints, as the real processes answer
/// them: no credential is 401 (`WWW-Authenticate: Bearer`), a customer's token 403,
/// nothing changes; sales' own token gets through (an order crosses). A sales whose
/// token product refuses treats product as unavailable: the order is taken on the
/// fallback, flagged for review, and no stock is held.
#[tokio::test]
async fn internal_endpoints_admit_only_a_service_credential() {
    let stack = Stack::start_with(system_tests::StackOptions {
        sales_env: vec![("SALES_PRODUCT_SERVICE_TOKEN", "not-product-s-token".into())],
        ..Default::default()
    })
    .await;
    let http = reqwest::Client::new();
    let order = uuid::Uuid::new_v4();
    let (product, delivery) = (stack.product.base_url(), stack.delivery.base_url());
    let reservation =
        json!({"order_id": order, "items": [{"product_id": "SKU-MOUSE", "quantity": 1}]});
    let delivery_body = json!({"order_id": order, "items": [{"product_id": "SKU-MOUSE", "quantity": 1}],
        "address": {"recipient": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}});
    let writes = [
        http.post(format!("{product}/reservations"))
            .json(&reservation),
        http.post(format!("{product}/reservations/{order}/commit")),
        http.delete(format!("{product}/reservations/{order}")),
        http.post(format!("{delivery}/deliveries"))
            .json(&delivery_body),
        http.post(format!("{delivery}/deliveries/{order}/cancel")),
    ];
    for write in writes {
        let request = write.try_clone().unwrap();
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{:?}", write);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let response = write.bearer_auth("a-customer-token").send().await.unwrap();
        assert_eq!(response.status(), 403);
    }
    let product_db = stack.db("product").await;
    let delivery_db = stack.db("delivery").await;
    let count = |pool: &sqlx::PgPool, table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(count(&product_db, "reservations").await, 0);
    assert_eq!(count(&delivery_db, "deliveries").await, 0);

    // Sales' product token is wrong here: product refuses it, sales falls back.
    let response = http
        .post(format!("{}/orders", stack.sales.base_url()))
        .json(&system_tests::order_body(
            "customer-auth",
            &[("SKU-MOUSE", 1)],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let placed: Order = response.json().await.unwrap();
    assert!(
        placed.fallback_used && placed.requires_manual_review,
        "{placed:?}"
    );
    assert_eq!(count(&product_db, "reservations").await, 0);
    // A fallback order holds its delivery until its stock is confirmed.
    assert_eq!(placed.delivery_id, None, "{placed:?}");
    assert_eq!(
        placed.delivery_hold,
        Some(contracts::orders::DeliveryHold::AvailabilityUnverified)
    );
    assert!(stack.shutdown().await);
}
