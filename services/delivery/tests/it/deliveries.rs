//! Deliveries: one per order, reads, cancel, courier transitions, history,
//! bad input, health and the OpenAPI document.

use contracts::delivery::{Delivery, DeliveryStatus};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::{Api, expect_json, expect_problem, fields};
use uuid::Uuid;

use crate::spawn;

fn request(order: Uuid) -> Value {
    json!({
        "order_id": order,
        "address": {"recipient": "Ada Lovelace", "line1": "12 Analytical St", "city": "London",
                    "postal_code": "N1 9GU", "country": "GB"},
        "items": [{"product_id": "SKU-A", "quantity": 2}]
    })
}

async fn rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM deliveries"#)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn set_status(api: &Api, id: Uuid, status: &str) -> reqwest::Response {
    api.staff(
        Method::POST,
        &format!("/deliveries/{id}/status"),
        Some(&json!({"status": status})),
    )
    .await
}

#[sqlx::test(migrations = "../../migrations/delivery")]
async fn one_delivery_per_order_however_often_asked(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    let order = Uuid::new_v4();
    let first: Delivery =
        expect_json(app.api.post("/deliveries", &request(order)).await, 201).await;
    assert_eq!(first.status, DeliveryStatus::Created);
    let again: Delivery =
        expect_json(app.api.post("/deliveries", &request(order)).await, 200).await;
    assert_eq!(again.id, first.id);
    let (other, same) = (request(Uuid::new_v4()), request(order));
    let (a, b) = tokio::join!(
        app.api.post("/deliveries", &other),
        app.api.post("/deliveries", &same)
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 200));
    assert_eq!(rows(&pool).await, 2);

    let read: Delivery =
        expect_json(app.api.get(&format!("/deliveries/{}", first.id)).await, 200).await;
    assert_eq!(read.order_id, order);
    let by_order: Vec<Delivery> = expect_json(
        app.api.get(&format!("/deliveries?order_id={order}")).await,
        200,
    )
    .await;
    assert_eq!(by_order.len(), 1);
    assert_eq!(by_order[0].id, first.id);
    let all: Vec<Delivery> = expect_json(app.api.get("/deliveries?limit=10").await, 200).await;
    assert_eq!(all.len(), 2);
    expect_problem(
        app.api
            .get(&format!("/deliveries/{}", Uuid::new_v4()))
            .await,
        404,
    )
    .await;
    expect_problem(app.api.get("/deliveries?order_id=nope").await, 400).await;
    expect_problem(app.api.get("/deliveries?limit=0").await, 400).await;
}

#[sqlx::test(migrations = "../../migrations/delivery")]
async fn bad_requests_are_rejected_and_write_nothing(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    let mut bad = request(Uuid::new_v4());
    bad["address"]["country"] = json!("Germany");
    bad["address"]["city"] = json!("  ");
    bad["items"] = json!([]);
    let problem = expect_problem(app.api.post("/deliveries", &bad).await, 422).await;
    assert_eq!(
        fields(&problem),
        ["address.city", "address.country", "items"]
    );
    let mut missing = request(Uuid::new_v4());
    missing.as_object_mut().unwrap().remove("address");
    let problem = expect_problem(app.api.post("/deliveries", &missing).await, 422).await;
    assert_eq!(fields(&problem), ["address"]);
    assert_eq!(rows(&pool).await, 0);
}

#[sqlx::test(migrations = "../../migrations/delivery")]
async fn couriers_move_deliveries_along_valid_transitions_only(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    let d: Delivery = expect_json(
        app.api.post("/deliveries", &request(Uuid::new_v4())).await,
        201,
    )
    .await;
    let anon = app
        .api
        .anonymous()
        .post(
            &format!("/deliveries/{}/status", d.id),
            &json!({"status": "PICKED_UP"}),
        )
        .await;
    expect_problem(anon, 401).await;
    let customer = app
        .api
        .request(Method::POST, &format!("/deliveries/{}/status", d.id))
        .bearer_auth("a-customer-token")
        .json(&json!({"status": "PICKED_UP"}))
        .send()
        .await
        .unwrap();
    expect_problem(customer, 403).await;
    let skip = expect_problem(set_status(&app.api, d.id, "DELIVERED").await, 409).await;
    assert_eq!(skip.kind, "/problems/invalid-transition");
    for status in ["PICKED_UP", "IN_TRANSIT", "IN_TRANSIT", "DELIVERED"] {
        let moved: Delivery = expect_json(set_status(&app.api, d.id, status).await, 200).await;
        assert_eq!(moved.status.as_str(), status);
    }
    expect_problem(set_status(&app.api, d.id, "FAILED").await, 409).await;
    expect_problem(set_status(&app.api, d.id, "LOST").await, 422).await;
    expect_problem(set_status(&app.api, Uuid::new_v4(), "PICKED_UP").await, 404).await;
    let history: Vec<Value> = expect_json(
        app.api.get(&format!("/deliveries/{}/history", d.id)).await,
        200,
    )
    .await;
    let path: Vec<&str> = history
        .iter()
        .map(|h| h["to_status"].as_str().unwrap())
        .collect();
    assert_eq!(path, ["CREATED", "PICKED_UP", "IN_TRANSIT", "DELIVERED"]);
    expect_problem(
        app.api
            .get(&format!("/deliveries/{}/history", Uuid::new_v4()))
            .await,
        404,
    )
    .await;
}

#[sqlx::test(migrations = "../../migrations/delivery")]
async fn cancel_works_before_pickup_only(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    let d: Delivery = expect_json(
        app.api.post("/deliveries", &request(Uuid::new_v4())).await,
        201,
    )
    .await;
    let path = format!("/deliveries/{}/cancel", d.id);
    let cancelled: Delivery = expect_json(app.api.post(&path, &json!({})).await, 200).await;
    assert_eq!(cancelled.status, DeliveryStatus::Cancelled);
    let again: Delivery = expect_json(app.api.post(&path, &json!({})).await, 200).await;
    assert_eq!(again.status, DeliveryStatus::Cancelled);
    expect_problem(set_status(&app.api, d.id, "PICKED_UP").await, 409).await;

    let moving: Delivery = expect_json(
        app.api.post("/deliveries", &request(Uuid::new_v4())).await,
        201,
    )
    .await;
    expect_json::<Delivery>(set_status(&app.api, moving.id, "PICKED_UP").await, 200).await;
    let late = app
        .api
        .post(&format!("/deliveries/{}/cancel", moving.id), &json!({}))
        .await;
    expect_problem(late, 409).await;
    let failed: Delivery = expect_json(set_status(&app.api, moving.id, "FAILED").await, 200).await;
    assert_eq!(failed.status, DeliveryStatus::Failed);
    expect_problem(
        app.api
            .post(
                &format!("/deliveries/{}/cancel", Uuid::new_v4()),
                &json!({}),
            )
            .await,
        404,
    )
    .await;
}

#[sqlx::test(migrations = "../../migrations/delivery")]
async fn health_and_openapi_cover_every_route(pool: PgPool) {
    let app = spawn(pool).await;
    let ready: Value = expect_json(app.api.get("/health/ready").await, 200).await;
    assert_eq!(ready["migrations"], "ok");
    expect_json::<Value>(app.api.get("/health/live").await, 200).await;
    let doc: Value = expect_json(app.api.get("/openapi.json").await, 200).await;
    for (path, method) in [
        ("/deliveries", "post"),
        ("/deliveries", "get"),
        ("/deliveries/{id}", "get"),
        ("/deliveries/{id}/history", "get"),
        ("/deliveries/{id}/cancel", "post"),
        ("/deliveries/{id}/status", "post"),
        ("/health/ready", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} undocumented"
        );
    }
    expect_problem(app.api.get("/nowhere").await, 404).await;
    testkit::assert_openapi_is_exact(&doc, &["post /deliveries", "post /deliveries/{id}/cancel"]);
}

/// Bad input gets a 4xx problem naming the field and changes nothing, at every
/// handler with effects (initiate, cancel, status update); the database is
/// compared row by row. Initiating and cancelling are internal: no credential is a
/// 401 with `WWW-Authenticate: Bearer`, a customer's token a 403; a staff token
/// passes. Status updates are staff's: sales' service token is a 403 there.
#[sqlx::test(migrations = "../../migrations/delivery")]
async fn bad_input_changes_nothing(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    let sales = &app.api;
    let anonymous = app.api.anonymous();
    let d: Delivery = expect_json(
        sales.post("/deliveries", &request(Uuid::new_v4())).await,
        201,
    )
    .await;
    let status_path = format!("/deliveries/{}/status", d.id);
    let cancel_path = format!("/deliveries/{}/cancel", d.id);

    let mut cases: Vec<(reqwest::RequestBuilder, u16, Option<String>)> = Vec::new();
    let bad_texts = [
        json!("a\u{0}b"),
        json!("bell\u{7}"),
        json!("x".repeat(201)),
        json!(3),
    ];
    for field in [
        "recipient",
        "line1",
        "line2",
        "city",
        "postal_code",
        "country",
    ] {
        for bad in &bad_texts {
            let mut body = request(Uuid::new_v4());
            body["address"][field] = bad.clone();
            cases.push((
                sales.request(Method::POST, "/deliveries").json(&body),
                422,
                Some(format!("address.{field}")),
            ));
        }
    }
    for bad in &bad_texts {
        let mut body = request(Uuid::new_v4());
        body["items"][0]["product_id"] = bad.clone();
        cases.push((
            sales.request(Method::POST, "/deliveries").json(&body),
            422,
            Some("items[0].product_id".into()),
        ));
    }
    let mut blank = request(Uuid::new_v4());
    blank["address"]["city"] = json!("  ");
    cases.push((
        sales.request(Method::POST, "/deliveries").json(&blank),
        422,
        Some("address.city".into()),
    ));
    cases.push((
        sales.request(Method::POST, "/deliveries").json(&json!({})),
        422,
        Some("order_id".into()),
    ));
    cases.push((
        sales
            .request(Method::POST, "/deliveries")
            .json(&json!({"order_id": Uuid::new_v4()})),
        422,
        Some("address".into()),
    ));
    cases.push((
        sales
            .request(Method::POST, "/deliveries")
            .header("content-type", "text/plain")
            .body("x"),
        415,
        None,
    ));
    cases.push((
        anonymous
            .request(Method::POST, "/deliveries")
            .json(&request(Uuid::new_v4())),
        401,
        None,
    ));
    cases.push((
        anonymous
            .request(Method::POST, "/deliveries")
            .bearer_auth("customer")
            .json(&request(Uuid::new_v4())),
        403,
        None,
    ));
    cases.push((anonymous.request(Method::POST, &cancel_path), 401, None));
    cases.push((
        anonymous
            .request(Method::POST, &cancel_path)
            .bearer_auth("customer"),
        403,
        None,
    ));
    cases.push((
        sales.request(Method::POST, "/deliveries/nope/cancel"),
        400,
        Some("id".into()),
    ));
    cases.push((
        sales.request(Method::POST, "/deliveries/a%00b/cancel"),
        400,
        Some("id".into()),
    ));
    for note in [
        json!("a\u{0}b"),
        json!("esc\u{1b}"),
        json!("x".repeat(1001)),
        json!(5),
    ] {
        let body = json!({"status": "PICKED_UP", "note": note});
        cases.push((
            sales
                .request(Method::POST, &status_path)
                .bearer_auth(testkit::STAFF_TOKEN)
                .json(&body),
            422,
            Some("note".into()),
        ));
    }
    for status in [json!("LOST"), json!(null), json!(1)] {
        let body = json!({"status": status});
        cases.push((
            sales
                .request(Method::POST, &status_path)
                .bearer_auth(testkit::STAFF_TOKEN)
                .json(&body),
            422,
            Some("status".into()),
        ));
    }
    cases.push((
        sales
            .request(Method::POST, &status_path)
            .json(&json!({"status": "PICKED_UP"})),
        403,
        None,
    ));
    cases.push((
        anonymous.request(Method::GET, "/deliveries?order_id=a%00b"),
        400,
        Some("order_id".into()),
    ));
    cases.push((
        anonymous.request(Method::GET, "/deliveries?limit=101"),
        400,
        Some("limit".into()),
    ));

    let before = testkit::snapshot(&pool).await;
    for (request, status, field) in cases {
        let response = request.send().await.unwrap();
        if status == 401 {
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
        let problem = expect_problem(response, status).await;
        if let Some(field) = field {
            assert!(
                fields(&problem).contains(&field.as_str()),
                "{field}: {problem:?}"
            );
        }
    }
    assert_eq!(
        testkit::snapshot(&pool).await,
        before,
        "a rejected request changed something"
    );

    // A multi-line note is fine, and valid requests do change things.
    let note = json!({"status": "PICKED_UP", "note": "left at\nthe door\t(back)"});
    let moved = sales
        .request(Method::POST, &status_path)
        .bearer_auth(testkit::STAFF_TOKEN)
        .json(&note)
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_json::<Delivery>(moved, 200).await.status,
        DeliveryStatus::PickedUp
    );
    let staff_made = anonymous
        .request(Method::POST, "/deliveries")
        .bearer_auth(testkit::STAFF_TOKEN)
        .json(&request(Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    expect_json::<Delivery>(staff_made, 201).await;
    assert_ne!(testkit::snapshot(&pool).await, before);
}
