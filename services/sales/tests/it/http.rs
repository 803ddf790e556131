//! Health, OpenAPI and framework errors of sales.

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{expect_json, expect_problem};

use crate::Stack;

#[sqlx::test(migrations = false)]
async fn health_and_openapi_cover_every_route(_pool: PgPoolOptions, options: PgConnectOptions) {
    let stack = Stack::start(options).await;
    let ready: Value = expect_json(stack.api().get("/health/ready").await, 200).await;
    assert_eq!(ready["migrations"], "ok");
    expect_json::<Value>(stack.api().get("/health/live").await, 200).await;
    let doc: Value = expect_json(stack.api().get("/openapi.json").await, 200).await;
    for (path, method) in [
        ("/orders", "post"),
        ("/orders", "get"),
        ("/orders/{id}", "get"),
        ("/orders/{id}/cancel", "post"),
        ("/review/orders", "get"),
        ("/review/orders/{id}", "get"),
        ("/review/orders/{id}/approve", "post"),
        ("/review/orders/{id}/reject", "post"),
        ("/health/reliability", "get"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} undocumented"
        );
    }
    expect_problem(stack.api().get("/nowhere").await, 404).await;
    expect_problem(stack.api().delete("/orders").await, 405).await;
    testkit::assert_openapi_is_exact(&doc, &[]);
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["Decision"]["required"], serde_json::json!(["note"]));
    assert_eq!(schemas["Decision"]["properties"]["note"]["maxLength"], 2000);
    assert_eq!(
        schemas["Discard"]["properties"]["reason"]["maxLength"],
        1000
    );
    assert_eq!(schemas["PlaceOrder"]["properties"]["items"]["minItems"], 1);
    let limit = doc["paths"]["/orders"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(
        (
            limit["schema"]["minimum"].as_i64(),
            limit["schema"]["maximum"].as_i64()
        ),
        (Some(1), Some(100))
    );
}
