//! Reservations: all or nothing, idempotent by order, commit, release, expiry,
//! and the race for the last unit.

use chrono::{Duration, Utc};
use contracts::catalog::{Reservation, ReservationStatus, ShortItem};
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::{expect_json, expect_problem, fields};
use uuid::Uuid;

use crate::{add_product, spawn, spawn_with, stock};

fn reservation(order: Uuid, items: &[(&str, i32)]) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(id, q)| json!({"product_id": id, "quantity": q}))
        .collect();
    json!({"order_id": order, "items": items})
}

async fn reservation_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM reservations"#)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn a_reservation_holds_stock_once_per_order(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-A", 10).await;
    add_product(&app.api, "SKU-B", 5).await;
    let order = Uuid::new_v4();
    let body = reservation(order, &[("SKU-A", 2), ("SKU-B", 1), ("SKU-A", 1)]);
    let first: Reservation = expect_json(app.api.post("/reservations", &body).await, 201).await;
    assert_eq!(first.status, ReservationStatus::Active);
    assert_eq!(first.items.len(), 2);
    assert!(first.expires_at > Utc::now() + Duration::minutes(14));
    let again: Reservation = expect_json(app.api.post("/reservations", &body).await, 200).await;
    assert_eq!(again.created_at, first.created_at);
    assert_eq!(stock(&pool, "SKU-A").await, (10, 3));
    assert_eq!(stock(&pool, "SKU-B").await, (5, 1));
    assert_eq!(reservation_rows(&pool).await, 1);

    let other_items = reservation(order, &[("SKU-A", 5)]);
    let problem = expect_problem(app.api.post("/reservations", &other_items).await, 409).await;
    assert_eq!(problem.kind, "/problems/reservation-mismatch");
    assert_eq!(stock(&pool, "SKU-A").await, (10, 3));

    let read: Reservation =
        expect_json(app.api.get(&format!("/reservations/{order}")).await, 200).await;
    assert_eq!(read.items, first.items);
    expect_problem(
        app.api
            .get(&format!("/reservations/{}", Uuid::new_v4()))
            .await,
        404,
    )
    .await;
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn insufficient_stock_holds_nothing_and_names_the_short_items(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-A", 10).await;
    add_product(&app.api, "SKU-B", 1).await;
    let body = reservation(Uuid::new_v4(), &[("SKU-A", 2), ("SKU-B", 3)]);
    let problem = expect_problem(app.api.post("/reservations", &body).await, 409).await;
    assert_eq!(problem.kind, "/problems/insufficient-stock");
    let short: Vec<ShortItem> =
        serde_json::from_value(problem.extensions["short_items"].clone()).unwrap();
    assert_eq!(
        short,
        [ShortItem {
            product_id: "SKU-B".into(),
            requested: 3,
            available: 1
        }]
    );
    assert_eq!(stock(&pool, "SKU-A").await, (10, 0), "all or nothing");
    assert_eq!(reservation_rows(&pool).await, 0);
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn bad_reservations_are_rejected_and_write_nothing(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-A", 10).await;
    let unknown = reservation(Uuid::new_v4(), &[("SKU-A", 1), ("SKU-NOPE", 1)]);
    let problem = expect_problem(app.api.post("/reservations", &unknown).await, 422).await;
    assert_eq!(fields(&problem), ["items[1].product_id"]);
    let zero = reservation(Uuid::new_v4(), &[("SKU-A", 0)]);
    let problem = expect_problem(app.api.post("/reservations", &zero).await, 422).await;
    assert_eq!(fields(&problem), ["items[0].quantity"]);
    let empty = reservation(Uuid::new_v4(), &[]);
    expect_problem(app.api.post("/reservations", &empty).await, 422).await;
    let no_order = json!({"items": [{"product_id": "SKU-A", "quantity": 1}]});
    let problem = expect_problem(app.api.post("/reservations", &no_order).await, 422).await;
    assert_eq!(fields(&problem), ["order_id"]);
    let wrong_type =
        json!({"order_id": Uuid::new_v4(), "items": [{"product_id": "SKU-A", "quantity": "1"}]});
    let problem = expect_problem(app.api.post("/reservations", &wrong_type).await, 422).await;
    assert_eq!(fields(&problem), ["items[0].quantity"]);
    assert_eq!(reservation_rows(&pool).await, 0);
    assert_eq!(stock(&pool, "SKU-A").await, (10, 0));
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn commit_takes_units_out_of_stock_once(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-A", 10).await;
    let order = Uuid::new_v4();
    app.api
        .post("/reservations", &reservation(order, &[("SKU-A", 3)]))
        .await;
    let path = format!("/reservations/{order}/commit");
    let committed: Reservation = expect_json(app.api.post(&path, &json!({})).await, 200).await;
    assert_eq!(committed.status, ReservationStatus::Committed);
    let again: Reservation = expect_json(app.api.post(&path, &json!({})).await, 200).await;
    assert_eq!(again.status, ReservationStatus::Committed);
    assert_eq!(stock(&pool, "SKU-A").await, (7, 0));
    let release = app.api.delete(&format!("/reservations/{order}")).await;
    let problem = expect_problem(release, 409).await;
    assert_eq!(problem.kind, "/problems/reservation-settled");
    expect_problem(
        app.api
            .post(
                &format!("/reservations/{}/commit", Uuid::new_v4()),
                &json!({}),
            )
            .await,
        404,
    )
    .await;
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn release_returns_units_once(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-A", 10).await;
    let order = Uuid::new_v4();
    app.api
        .post("/reservations", &reservation(order, &[("SKU-A", 4)]))
        .await;
    let path = format!("/reservations/{order}");
    let released: Reservation = expect_json(app.api.delete(&path).await, 200).await;
    assert_eq!(released.status, ReservationStatus::Released);
    let again: Reservation = expect_json(app.api.delete(&path).await, 200).await;
    assert_eq!(again.status, ReservationStatus::Released);
    assert_eq!(stock(&pool, "SKU-A").await, (10, 0));
    let commit = app.api.post(&format!("{path}/commit"), &json!({})).await;
    expect_problem(commit, 409).await;
    expect_problem(
        app.api
            .delete(&format!("/reservations/{}", Uuid::new_v4()))
            .await,
        404,
    )
    .await;
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn uncommitted_reservations_expire_after_the_ttl(pool: PgPool) {
    let app = spawn_with(pool.clone(), &[("PRODUCT_RESERVATION_TTL_MS", "60000")]).await;
    add_product(&app.api, "SKU-A", 10).await;
    let (old, young) = (Uuid::new_v4(), Uuid::new_v4());
    app.api
        .post("/reservations", &reservation(old, &[("SKU-A", 2)]))
        .await;
    app.api
        .post("/reservations", &reservation(young, &[("SKU-A", 1)]))
        .await;
    // Back-date one reservation instead of waiting: the clock is the argument.
    sqlx::query!("UPDATE reservations SET expires_at = expires_at - interval '30 seconds' WHERE order_id = $1", old)
        .execute(&pool)
        .await
        .unwrap();
    let now = Utc::now();
    assert_eq!(
        product::expiry::run_once(&pool, now).await.unwrap(),
        0,
        "nothing due yet"
    );
    let later = now + Duration::seconds(45);
    assert_eq!(product::expiry::run_once(&pool, later).await.unwrap(), 1);
    assert_eq!(
        product::expiry::run_once(&pool, later).await.unwrap(),
        0,
        "expired once"
    );
    assert_eq!(stock(&pool, "SKU-A").await, (10, 1));
    let expired: Reservation =
        expect_json(app.api.get(&format!("/reservations/{old}")).await, 200).await;
    assert_eq!(expired.status, ReservationStatus::Expired);
    let late_commit = app
        .api
        .post(&format!("/reservations/{old}/commit"), &json!({}))
        .await;
    expect_problem(late_commit, 409).await;
    let release: Reservation =
        expect_json(app.api.delete(&format!("/reservations/{old}")).await, 200).await;
    assert_eq!(
        release.status,
        ReservationStatus::Expired,
        "releasing an expired one is harmless"
    );
    assert_eq!(stock(&pool, "SKU-A").await, (10, 1));
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn two_orders_racing_for_the_last_unit_one_wins(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    for round in 0..10 {
        let sku = format!("SKU-LAST-{round}");
        add_product(&app.api, &sku, 1).await;
        let a = reservation(Uuid::new_v4(), &[(&sku, 1)]);
        let b = reservation(Uuid::new_v4(), &[(&sku, 1)]);
        let (ra, rb) = tokio::join!(
            app.api.post("/reservations", &a),
            app.api.post("/reservations", &b)
        );
        let mut statuses = [ra.status().as_u16(), rb.status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "round {round}");
        assert_eq!(stock(&pool, &sku).await, (1, 1));
    }
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn placing_a_released_order_again_holds_its_units_again_or_says_they_are_gone(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-A", 3).await;
    let (order, rival) = (Uuid::new_v4(), Uuid::new_v4());
    let body = reservation(order, &[("SKU-A", 2)]);
    expect_json::<Reservation>(app.api.post("/reservations", &body).await, 201).await;
    let path = format!("/reservations/{order}");
    expect_json::<Reservation>(app.api.delete(&path).await, 200).await;
    assert_eq!(stock(&pool, "SKU-A").await, (3, 0));

    // The same order placed again (a client's retry after sales gave up): held again.
    let again: Reservation = expect_json(app.api.post("/reservations", &body).await, 200).await;
    assert_eq!(again.status, ReservationStatus::Active);
    assert!(again.expires_at > Utc::now() + Duration::minutes(14));
    assert_eq!(stock(&pool, "SKU-A").await, (3, 2));
    let repeat: Reservation = expect_json(app.api.post("/reservations", &body).await, 200).await;
    assert_eq!(repeat.status, ReservationStatus::Active);
    assert_eq!(
        stock(&pool, "SKU-A").await,
        (3, 2),
        "a repeat holds nothing more"
    );

    // Released again, and the units go to another order meanwhile: 409, nothing held.
    expect_json::<Reservation>(app.api.delete(&path).await, 200).await;
    let rival_body = reservation(rival, &[("SKU-A", 2)]);
    expect_json::<Reservation>(app.api.post("/reservations", &rival_body).await, 201).await;
    let problem = expect_problem(app.api.post("/reservations", &body).await, 409).await;
    assert_eq!(problem.kind, "/problems/insufficient-stock");
    assert_eq!(stock(&pool, "SKU-A").await, (3, 2));
    let read: Reservation = expect_json(app.api.get(&path).await, 200).await;
    assert_eq!(read.status, ReservationStatus::Released);
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn renewals_keep_reservations_alive_and_retake_lapsed_ones_while_stock_allows(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-A", 5).await;
    let (active, lapsed, gone, committed, unknown) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    for (order, q) in [(active, 1), (lapsed, 1), (gone, 2), (committed, 1)] {
        let body = reservation(order, &[("SKU-A", q)]);
        expect_json::<Reservation>(app.api.post("/reservations", &body).await, 201).await;
    }
    let commit = format!("/reservations/{committed}/commit");
    expect_json::<Reservation>(app.api.post(&commit, &json!({})).await, 200).await;
    // `lapsed` and `gone` expire; another order takes `gone`'s units meanwhile.
    sqlx::query!(
        "UPDATE reservations SET expires_at = now() - interval '1 minute' WHERE order_id = ANY($1)",
        &[lapsed, gone][..]
    )
    .execute(&pool)
    .await
    .unwrap();
    product::expiry::run_once(&pool, Utc::now()).await.unwrap();
    let other = reservation(Uuid::new_v4(), &[("SKU-A", 2)]);
    expect_json::<Reservation>(app.api.post("/reservations", &other).await, 201).await;
    assert_eq!(
        stock(&pool, "SKU-A").await,
        (4, 3),
        "active 1 + other 2 held; 1 committed"
    );
    let before: chrono::DateTime<Utc> = sqlx::query_scalar!(
        "SELECT expires_at FROM reservations WHERE order_id = $1",
        active
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    let body = json!({"order_ids": [active, lapsed, gone, committed, unknown]});
    let renewals: Vec<contracts::catalog::Renewal> =
        expect_json(app.api.post("/reservations/renewals", &body).await, 200).await;
    let outcome = |id: Uuid| renewals.iter().find(|r| r.order_id == id).unwrap().outcome;
    use contracts::catalog::RenewalOutcome::*;
    assert_eq!(outcome(active), Renewed);
    assert_eq!(outcome(lapsed), Retaken, "stock allowed taking it again");
    assert_eq!(outcome(gone), Gone, "its units went to another order");
    assert_eq!(outcome(committed), Committed);
    assert_eq!(outcome(unknown), Unknown);
    let after: chrono::DateTime<Utc> = sqlx::query_scalar!(
        "SELECT expires_at FROM reservations WHERE order_id = $1",
        active
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(after >= before, "the deadline moved on, never back");
    assert_eq!(
        stock(&pool, "SKU-A").await,
        (4, 4),
        "the retaken unit is held again"
    );

    let empty = json!({"order_ids": []});
    expect_problem(app.api.post("/reservations/renewals", &empty).await, 422).await;
}
