//! Applying sales' order events: exactly once per event id, never older over
//! newer, and no silent oversell when a reservation expired first.

use chrono::{Duration, Utc};
use messaging::Envelope;
use product::order_events::{Applied, apply};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{add_product, spawn, stock};

fn event(
    event_type: &str,
    order: Uuid,
    version: i32,
    items: &[(&str, i32)],
    fallback: bool,
) -> Envelope {
    let items: Vec<_> = items
        .iter()
        .map(|(p, q)| json!({"product_id": p, "quantity": q}))
        .collect();
    Envelope {
        event_id: Uuid::now_v7(),
        event_type: event_type.into(),
        aggregate_type: "order".into(),
        aggregate_id: order,
        aggregate_version: version,
        occurred_at: Utc::now(),
        schema_version: 1,
        payload: json!({
            "id": order, "customer_id": "c", "status": "PENDING_SHIPMENT", "items": items,
            "shipping_address": {"recipient": "a", "line1": "b", "city": "c", "postal_code": "1", "country": "DE"},
            "requires_manual_review": fallback, "fallback_used": fallback, "delivery_id": null,
            "version": version, "created_at": Utc::now(), "updated_at": Utc::now()
        }),
        trace: Default::default(),
    }
}

async fn reserve(app: &testkit::Running, order: Uuid, sku: &str, q: i32) {
    let body = json!({"order_id": order, "items": [{"product_id": sku, "quantity": q}]});
    assert_eq!(app.api.post("/reservations", &body).await.status(), 201);
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn order_created_commits_once_however_often_delivered(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-A", 10).await;
    let order = Uuid::new_v4();
    reserve(&app, order, "SKU-A", 3).await;
    let created = event("ORDER_CREATED", order, 1, &[("SKU-A", 3)], false);
    assert_eq!(
        apply(&pool, &created, Utc::now()).await.unwrap(),
        Applied::Committed
    );
    assert_eq!(
        apply(&pool, &created, Utc::now()).await.unwrap(),
        Applied::Duplicate
    );
    assert_eq!(stock(&pool, "SKU-A").await, (7, 0));
    let inbox: i64 = sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM inbox"#)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(inbox, 1);
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn an_older_event_after_a_newer_one_is_ignored(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-A", 10).await;
    let order = Uuid::new_v4();
    reserve(&app, order, "SKU-A", 2).await;
    let cancelled = event("ORDER_CANCELLED", order, 3, &[("SKU-A", 2)], false);
    assert_eq!(
        apply(&pool, &cancelled, Utc::now()).await.unwrap(),
        Applied::Released
    );
    let created = event("ORDER_CREATED", order, 1, &[("SKU-A", 2)], false);
    assert_eq!(
        apply(&pool, &created, Utc::now()).await.unwrap(),
        Applied::Stale
    );
    assert_eq!(
        stock(&pool, "SKU-A").await,
        (10, 0),
        "released, and not committed by the late event"
    );
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn an_expired_reservation_is_taken_again_or_noted(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-A", 5).await;
    let (lucky, unlucky) = (Uuid::new_v4(), Uuid::new_v4());
    reserve(&app, lucky, "SKU-A", 2).await;
    reserve(&app, unlucky, "SKU-A", 3).await;
    let later = Utc::now() + Duration::hours(1);
    assert_eq!(product::expiry::run_once(&pool, later).await.unwrap(), 2);
    // Meanwhile another order takes most of the stock back.
    reserve(&app, Uuid::new_v4(), "SKU-A", 2).await;

    let first = event("ORDER_CREATED", lucky, 1, &[("SKU-A", 2)], false);
    assert_eq!(apply(&pool, &first, later).await.unwrap(), Applied::Retaken);
    assert_eq!(stock(&pool, "SKU-A").await, (3, 2));
    let second = event("ORDER_CREATED", unlucky, 1, &[("SKU-A", 3)], false);
    assert_eq!(
        apply(&pool, &second, later).await.unwrap(),
        Applied::ExpiredOutOfStock
    );
    assert_eq!(stock(&pool, "SKU-A").await, (3, 2), "no oversell");
    let noted: String = sqlx::query_scalar!(
        "SELECT reason FROM unreserved_orders WHERE order_id = $1",
        unlucky
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(noted, "EXPIRED_OUT_OF_STOCK");
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn a_fallback_order_without_reservation_is_noted_for_the_recheck(pool: PgPool) {
    let _app = spawn(pool.clone()).await;
    let order = Uuid::new_v4();
    let created = event("ORDER_CREATED", order, 1, &[("SKU-A", 1)], true);
    assert_eq!(
        apply(&pool, &created, Utc::now()).await.unwrap(),
        Applied::NoReservation
    );
    let noted: String = sqlx::query_scalar!(
        "SELECT reason FROM unreserved_orders WHERE order_id = $1",
        order
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(noted, "NO_RESERVATION");
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn cancelling_a_committed_order_restocks_it(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-A", 10).await;
    let order = Uuid::new_v4();
    reserve(&app, order, "SKU-A", 4).await;
    apply(
        &pool,
        &event("ORDER_CREATED", order, 1, &[("SKU-A", 4)], false),
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(stock(&pool, "SKU-A").await, (6, 0));
    let cancelled = event("ORDER_CANCELLED", order, 2, &[("SKU-A", 4)], false);
    assert_eq!(
        apply(&pool, &cancelled, Utc::now()).await.unwrap(),
        Applied::Released
    );
    assert_eq!(stock(&pool, "SKU-A").await, (10, 0));
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn a_released_reservation_of_a_recorded_order_is_taken_again(pool: PgPool) {
    // An abandoned attempt's compensation released the reservation while a retry
    // with the same Idempotency-Key (the same order id) recorded the order.
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-A", 10).await;
    let order = Uuid::new_v4();
    reserve(&app, order, "SKU-A", 3).await;
    let path = format!("/reservations/{order}");
    assert_eq!(app.api.delete(&path).await.status(), 200);
    assert_eq!(stock(&pool, "SKU-A").await, (10, 0));
    let created = event("ORDER_CREATED", order, 1, &[("SKU-A", 3)], false);
    assert_eq!(
        apply(&pool, &created, Utc::now()).await.unwrap(),
        Applied::Retaken
    );
    assert_eq!(
        stock(&pool, "SKU-A").await,
        (7, 0),
        "the order's units left stock"
    );
    // Had the order been cancelled, its newer ORDER_CANCELLED gives them back.
    let cancelled = event("ORDER_CANCELLED", order, 3, &[("SKU-A", 3)], false);
    assert_eq!(
        apply(&pool, &cancelled, Utc::now()).await.unwrap(),
        Applied::Released
    );
    assert_eq!(stock(&pool, "SKU-A").await, (10, 0));
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn a_cancelled_orders_stock_comes_back_once_whichever_release_comes_first(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-A", 10).await;
    add_product(&app.api, "SKU-B", 10).await;
    // Committed, then cancelled: sales' direct release restocks it; the event, later,
    // finds nothing held.
    let committed = Uuid::new_v4();
    reserve(&app, committed, "SKU-A", 4).await;
    let created = event("ORDER_CREATED", committed, 1, &[("SKU-A", 4)], false);
    apply(&pool, &created, Utc::now()).await.unwrap();
    assert_eq!(stock(&pool, "SKU-A").await, (6, 0));
    let cancel_path = format!("/reservations/{committed}?reason=order-cancelled");
    let released: contracts::catalog::Reservation =
        testkit::expect_json(app.api.delete(&cancel_path).await, 200).await;
    assert_eq!(
        released.status,
        contracts::catalog::ReservationStatus::Released
    );
    assert_eq!(stock(&pool, "SKU-A").await, (10, 0), "restocked");
    assert_eq!(
        app.api.delete(&cancel_path).await.status(),
        200,
        "a repeat is harmless"
    );
    let cancelled = event("ORDER_CANCELLED", committed, 2, &[("SKU-A", 4)], false);
    assert_eq!(
        apply(&pool, &cancelled, Utc::now()).await.unwrap(),
        Applied::Ignored
    );
    assert_eq!(stock(&pool, "SKU-A").await, (10, 0), "restocked once");

    // Active, cancelled while ORDER_CREATED waited in the outbox (the broker was down):
    // released at once, and the late event does not take the units again.
    let waiting = Uuid::new_v4();
    reserve(&app, waiting, "SKU-B", 3).await;
    let path = format!("/reservations/{waiting}?reason=order-cancelled");
    assert_eq!(app.api.delete(&path).await.status(), 200);
    assert_eq!(stock(&pool, "SKU-B").await, (10, 0));
    let late = event("ORDER_CREATED", waiting, 1, &[("SKU-B", 3)], false);
    assert_eq!(
        apply(&pool, &late, Utc::now()).await.unwrap(),
        Applied::Ignored
    );
    assert_eq!(stock(&pool, "SKU-B").await, (10, 0), "not taken again");
    let again = json!({"order_id": waiting, "items": [{"product_id": "SKU-B", "quantity": 3}]});
    let refused = testkit::expect_problem(app.api.post("/reservations", &again).await, 409).await;
    assert_eq!(refused.kind, "/problems/order-cancelled");

    // Never reserved (a fallback order): the release marks it, so a late re-check's
    // reservation for the cancelled order is refused too.
    let unreserved = Uuid::new_v4();
    let path = format!("/reservations/{unreserved}?reason=order-cancelled");
    assert_eq!(app.api.delete(&path).await.status(), 200);
    let late = json!({"order_id": unreserved, "items": [{"product_id": "SKU-B", "quantity": 1}]});
    let refused = testkit::expect_problem(app.api.post("/reservations", &late).await, 409).await;
    assert_eq!(refused.kind, "/problems/order-cancelled");
    assert_eq!(stock(&pool, "SKU-B").await, (10, 0));
}
