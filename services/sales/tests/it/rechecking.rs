//! The availability re-check, round by round: orders accepted while product was
//! down are reserved once it is back; the flag clears automatically and the held
//! delivery starts, or the order stays in review (its delivery held) when stock
//! ran out or the product does not exist.

use chrono::Utc;
use contracts::{
    catalog::{Reservation, ReservationStatus},
    orders::{DeliveryHold, Order},
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
    assert_eq!(cleared.delivery_hold, None, "the delivery may start");
    assert_eq!(retry_status(&stack, order.id).await, "PENDING");
    assert_eq!(stack.count(&stack.delivery_db, "deliveries").await, 0);
    let step = stack.retry_worker.run_once(Utc::now()).await.unwrap();
    assert_eq!(step.initiated, 1);
    assert!(read(&stack, order.id).await.delivery_id.is_some());
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
    let kept = read(&stack, order.id).await;
    assert!(kept.requires_manual_review);
    assert_eq!(kept.delivery_hold, Some(DeliveryHold::ManualReview));
    assert_eq!(stack.stock("SKU-B").await, (3, 0), "nothing held");
    let report = stack.recheck.run_once(Utc::now()).await.unwrap();
    assert_eq!(report.checked, 0, "left to staff");
    // Still held: the retry worker does not ship it.
    let step = stack.retry_worker.run_once(Utc::now()).await.unwrap();
    assert_eq!(step.claimed, 0);
    assert_eq!(stack.count(&stack.delivery_db, "deliveries").await, 0);

    // Staff reject it: cancelled, with nothing to undo at delivery.
    let rejected = stack
        .api()
        .request(
            reqwest::Method::POST,
            &format!("/review/orders/{}/reject", order.id),
        )
        .bearer_auth(testkit::STAFF_TOKEN)
        .json(&json!({"note": "no stock coming"}))
        .send()
        .await
        .unwrap();
    let detail: Value = expect_json(rejected, 200).await;
    assert_eq!(detail["order"]["status"], "CANCELLED");
    assert!(detail["order"]["delivery_hold"].is_null());
    assert_eq!(retry_status(&stack, order.id).await, "DONE");
    assert_eq!(stack.count(&stack.delivery_db, "deliveries").await, 0);
}

async fn retry_status(stack: &Stack, order_id: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM delivery_retries WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(&stack.sales_db)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_product_that_does_not_exist_is_named_in_its_review(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let mut stack = Stack::start_with(options, Peers::ProductDown).await;
    let order: Order = expect_json(
        stack
            .place(
                &order_body("f", &[("SKU-A", 1), ("SKU-DOES-NOT-EXIST", 2)]),
                None,
            )
            .await,
        201,
    )
    .await;
    stack.start_product().await;
    let report = stack.recheck.run_once(Utc::now()).await.unwrap();
    assert_eq!(
        (report.checked, report.unknown_product),
        (1, 1),
        "{report:?}"
    );
    let (reason, status, details): (String, String, Value) =
        sqlx::query_as("SELECT reason, status, details FROM manual_reviews WHERE order_id = $1")
            .bind(order.id)
            .fetch_one(&stack.sales_db)
            .await
            .unwrap();
    assert_eq!(
        (reason.as_str(), status.as_str()),
        ("UNKNOWN_PRODUCT", "OPEN")
    );
    assert_eq!(details["unknown_products"], json!(["SKU-DOES-NOT-EXIST"]));
    let kept = read(&stack, order.id).await;
    assert_eq!(kept.delivery_hold, Some(DeliveryHold::ManualReview));
    assert_eq!(stack.stock("SKU-A").await, (10, 0), "nothing reserved");
}

#[sqlx::test(migrations = false)]
async fn a_backlog_of_flagged_orders_clears_in_one_round(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    // Enough orders to open product's breaker; a short reset so the test need not wait 30 s.
    let mut stack = Stack::start_configured(
        options,
        Peers::ProductDown,
        &[("SALES_BREAKER_PRODUCT_RESET_TIMEOUT_MS", "300")],
    )
    .await;
    stack.add_product("SKU-PLENTY", 10_000).await;
    let mut ids = Vec::new();
    for i in 0..60 {
        let order: Order = expect_json(
            stack
                .place(&order_body(&format!("b{i}"), &[("SKU-PLENTY", 1)]), None)
                .await,
            201,
        )
        .await;
        assert!(order.fallback_used);
        ids.push(order.id);
    }
    stack.start_product().await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let started = std::time::Instant::now();
    let report = stack.recheck.run_once(Utc::now()).await.unwrap();
    let took = started.elapsed();
    println!(
        "re-check: {} flagged orders confirmed in {took:?}",
        report.confirmed
    );
    assert_eq!((report.checked, report.confirmed), (60, 60), "{report:?}");
    assert_eq!(stack.stock("SKU-PLENTY").await, (9_940, 0));
    for id in ids {
        assert_eq!(read(&stack, id).await.delivery_hold, None);
    }
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
