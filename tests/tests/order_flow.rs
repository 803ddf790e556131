//! An order placed through sales, seen at product, delivery and in sales' outbox,
//! with the three services running as real processes.
#![allow(clippy::unwrap_used)]

use contracts::{
    catalog::{ReservationRequest, ReservationStatus},
    delivery::DeliveryRequest,
};
use system_tests::{Stack, order_request};

#[tokio::test]
async fn an_order_crosses_all_three_services() {
    let stack = Stack::start().await;
    let order = stack
        .sales_api()
        .place_keyed(
            &order_request("customer-1", &[("SKU-KEYBOARD", 2), ("SKU-MOUSE", 1)]),
            "system-test-1",
        )
        .await;

    let reservation = stack.product_api().reservation(order.id).await;
    // Held until product consumes ORDER_CREATED (no broker in this test: it waits).
    assert_eq!(reservation.status, ReservationStatus::Active);
    assert_eq!(reservation.items.len(), 2);

    let deliveries = stack.delivery_api().deliveries_of(order.id).await;
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
    let sales = stack.sales_api();
    let order = sales
        .place(&order_request("customer-2", &[("SKU-DOCK", 1)]))
        .await;
    assert_eq!(order.delivery_id, None);
    let read = sales.get_order(order.id).await;
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
    let items = order_request("", &[("SKU-MOUSE", 1)]);
    let reservation = ReservationRequest {
        order_id: order,
        items: items.items.clone(),
    };
    let delivery_body = DeliveryRequest {
        order_id: order,
        address: items.shipping_address,
        items: items.items,
    };
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
    let placed = stack
        .sales_api()
        .place(&order_request("customer-auth", &[("SKU-MOUSE", 1)]))
        .await;
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
