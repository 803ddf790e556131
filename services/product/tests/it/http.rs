//! The HTTP surface common to every service: health, OpenAPI, error shapes.

use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::{expect_json, expect_problem};

use crate::spawn;

#[sqlx::test(migrations = "../../migrations/product")]
async fn health_reports_ready_with_migrations_applied(pool: PgPool) {
    let app = spawn(pool).await;
    let live: Value = expect_json(app.api.get("/health/live").await, 200).await;
    assert_eq!(live["status"], "ok");
    let ready: Value = expect_json(app.api.get("/health/ready").await, 200).await;
    assert_eq!(ready["database"], "ok");
    assert_eq!(ready["migrations"], "ok");
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn openapi_documents_every_route(pool: PgPool) {
    let app = spawn(pool).await;
    let doc: Value = expect_json(app.api.get("/openapi.json").await, 200).await;
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/products", "get"),
        ("/products", "post"),
        ("/products/{id}", "get"),
        ("/products/{id}/stock", "put"),
        ("/availability/check", "post"),
        ("/reservations", "post"),
        ("/reservations/{order_id}", "get"),
        ("/reservations/{order_id}", "delete"),
        ("/reservations/{order_id}/commit", "post"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    testkit::assert_openapi_is_exact(
        &doc,
        &[
            "post /reservations",
            "get /reservations/{order_id}",
            "delete /reservations/{order_id}",
            "post /reservations/{order_id}/commit",
            "post /reservations/renewals",
        ],
    );
    let new_product = &doc["components"]["schemas"]["NewProduct"];
    assert_eq!(new_product["properties"]["price_cents"]["minimum"], 0);
    assert_eq!(new_product["properties"]["name"]["maxLength"], 200);
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn framework_errors_are_problems(pool: PgPool) {
    let app = spawn(pool).await;
    expect_problem(app.api.get("/no/such/route").await, 404).await;
    expect_problem(app.api.delete("/products").await, 405).await;
    let bad_uuid = app.api.get("/reservations/not-a-uuid").await;
    expect_problem(bad_uuid, 400).await;
    let no_content_type = app
        .api
        .request(reqwest::Method::POST, "/availability/check")
        .body(r#"{"items":[]}"#)
        .send()
        .await
        .unwrap();
    expect_problem(no_content_type, 415).await;
    let broken = app
        .api
        .request(reqwest::Method::POST, "/availability/check")
        .header("content-type", "application/json")
        .body("{\"items\": [")
        .send()
        .await
        .unwrap();
    expect_problem(broken, 400).await;
    let huge = json!({"items": [{"product_id": "x".repeat(70_000), "quantity": 1}]});
    expect_problem(app.api.post("/availability/check", &huge).await, 413).await;
}
