//! The availability re-check, round by round: orders accepted while product was
//! down are reserved once it is back; the flag clears automatically, or the
//! order stays in review when stock ran out.

use chrono::Utc;
use contracts::{
    catalog::{Reservation, ReservationStatus},
    orders::Order,
};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::expect_json;
use uuid::Uuid;

use crate::{Peers, Stack, order_body};

async fn read(stack: &Stack, id: Uuid) -> Order {
    expect_json(stack.api().get(&format!("/orders/{id}")).await, 200).await
}

#[sqlx::test(migrations = false)]
async fn the_flag_clears_once_product_is_back(_pool: PgPoolOptions, options: PgConnectOptions) {
    let mut stack = Stack::start_with(options, Peers::ProductDown).await;
    let order: Order = expect_json(
        stack.place(&order_body("f", &[("SKU-A", 2)]), None).await,
        201,
    )
    .await;
    assert!(order.requires_manual_review && order.fallback_used);

    let report = stack.recheck.run_once(Utc::now()).await.unwrap();
    assert!(report.product_unavailable);
    assert_eq!(report.confirmed, 0);
    assert_eq!(
        read(&stack, order.id).await,
        order,
        "product down: nothing changes"
    );
    assert_eq!(
        stack.reviews_of(order.id).await,
        [("AVAILABILITY_UNVERIFIED".to_owned(), "OPEN".to_owned())]
    );

    stack.start_product().await;
    let report = stack.recheck.run_once(Utc::now()).await.unwrap();
    assert_eq!((report.checked, report.confirmed), (1, 1));
    let cleared = read(&stack, order.id).await;
    assert!(!cleared.requires_manual_review);
    assert!(cleared.fallback_used, "how it was accepted stays recorded");
    assert_eq!(cleared.version, order.version + 1);
    let review: (String, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT status, resolved_by, resolution FROM manual_reviews WHERE order_id = $1",
    )
    .bind(order.id)
    .fetch_one(&stack.sales_db)
    .await
    .unwrap();
    assert_eq!(
        review,
        (
            "RESOLVED".into(),
            Some("system".into()),
            Some("AVAILABILITY_CONFIRMED".into())
        )
    );
    let reservation: Reservation = expect_json(
        stack
            .product
            .as_ref()
            .unwrap()
            .api
            .get(&format!("/reservations/{}", order.id))
            .await,
        200,
    )
    .await;
    assert_eq!(reservation.status, ReservationStatus::Committed);
    assert_eq!(stack.stock("SKU-A").await, (8, 0));
    assert!(
        stack
            .events_of(order.id)
            .await
            .contains(&"AVAILABILITY_CONFIRMED".to_owned())
    );
    let report = stack.recheck.run_once(Utc::now()).await.unwrap();
    assert_eq!(report.checked, 0, "nothing left to re-check");
}

#[sqlx::test(migrations = false)]
async fn out_of_stock_keeps_the_order_in_review(_pool: PgPoolOptions, options: PgConnectOptions) {
    let mut stack = Stack::start_with(options, Peers::ProductDown).await;
    let order: Order = expect_json(
        stack.place(&order_body("f", &[("SKU-B", 5)]), None).await,
        201,
    )
    .await;
    stack.start_product().await;
    let report = stack.recheck.run_once(Utc::now()).await.unwrap();
    assert_eq!((report.checked, report.out_of_stock), (1, 1));
    let (reason, status, details): (String, String, Value) =
        sqlx::query_as("SELECT reason, status, details FROM manual_reviews WHERE order_id = $1")
            .bind(order.id)
            .fetch_one(&stack.sales_db)
            .await
            .unwrap();
    assert_eq!(
        (reason.as_str(), status.as_str()),
        ("OUT_OF_STOCK_AFTER_FALLBACK", "OPEN")
    );
    assert_eq!(
        details["short_items"],
        json!([{"product_id": "SKU-B", "requested": 5, "available": 3}])
    );
    assert!(read(&stack, order.id).await.requires_manual_review);
    assert_eq!(stack.stock("SKU-B").await, (3, 0), "nothing held");
    let report = stack.recheck.run_once(Utc::now()).await.unwrap();
    assert_eq!(report.checked, 0, "left to staff");
}

#[sqlx::test(migrations = false)]
async fn another_open_review_keeps_the_flag(_pool: PgPoolOptions, options: PgConnectOptions) {
    let mut stack = Stack::start_with(options, Peers::ProductDown).await;
    let order: Order = expect_json(
        stack.place(&order_body("f", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    sqlx::query(
        "INSERT INTO manual_reviews (id, order_id, reason) VALUES ($1, $2, 'INVALID_STATUS_TRANSITION')",
    )
    .bind(Uuid::now_v7())
    .bind(order.id)
    .execute(&stack.sales_db)
    .await
    .unwrap();
    stack.start_product().await;
    let report = stack.recheck.run_once(Utc::now()).await.unwrap();
    assert_eq!(report.confirmed, 1);
    assert!(read(&stack, order.id).await.requires_manual_review);
    let mut reviews = stack.reviews_of(order.id).await;
    reviews.sort();
    assert_eq!(
        reviews,
        [
            ("AVAILABILITY_UNVERIFIED".to_owned(), "RESOLVED".to_owned()),
            ("INVALID_STATUS_TRANSITION".to_owned(), "OPEN".to_owned()),
        ]
    );
}
