//! Bad input gets a 4xx problem naming the field and changes nothing, at every
//! product handler with effects (adding products, setting stock, reserving,
//! committing, releasing): the database is compared row by row before and after.
//! The reservation endpoints are internal: no credential is a 401 with
//! `WWW-Authenticate: Bearer`, a customer's token a 403; sales' service token
//! and a staff token pass.

use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::{STAFF_TOKEN, expect_json, expect_rejected, snapshot};
use uuid::Uuid;

use crate::{add_product, spawn};

fn bad_texts() -> Vec<Value> {
    vec![
        json!("a\u{0}b"),
        json!("tab\there"),
        json!("\u{9b}csi"),
        json!("x".repeat(201)),
        json!(" "),
        json!(7),
    ]
}

fn items(product: Value, quantity: Value) -> Value {
    json!([{"product_id": product, "quantity": quantity}])
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn bad_input_changes_nothing(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    let sales = &app.api;
    let anonymous = app.api.anonymous();
    add_product(sales, "SKU-A", 10).await;
    let (active, committed) = (Uuid::new_v4(), Uuid::new_v4());
    for order in [active, committed] {
        let body = json!({"order_id": order, "items": items(json!("SKU-A"), json!(2))});
        expect_json::<Value>(sales.post("/reservations", &body).await, 201).await;
    }
    expect_json::<Value>(
        sales
            .post(&format!("/reservations/{committed}/commit"), &json!({}))
            .await,
        200,
    )
    .await;

    // (request, status, field)
    let mut cases: Vec<(RequestBuilder, u16, Option<&'static str>)> = Vec::new();
    let staff = |method: Method, path: &str| app.api.request(method, path).bearer_auth(STAFF_TOKEN);
    let product = |id: Value, name: Value| json!({"id": id, "name": name, "price_cents": 100, "stock_on_hand": 1});
    for bad in bad_texts() {
        cases.push((
            staff(Method::POST, "/products").json(&product(bad.clone(), json!("n"))),
            422,
            Some("id"),
        ));
        cases.push((
            staff(Method::POST, "/products").json(&product(json!("SKU-N"), bad.clone())),
            422,
            Some("name"),
        ));
        let reserve = json!({"order_id": Uuid::new_v4(), "items": items(bad.clone(), json!(1))});
        cases.push((
            sales.request(Method::POST, "/reservations").json(&reserve),
            422,
            Some("items[0].product_id"),
        ));
        let check = json!({"items": items(bad, json!(1))});
        cases.push((
            sales
                .request(Method::POST, "/availability/check")
                .json(&check),
            422,
            Some("items[0].product_id"),
        ));
    }
    let negative = json!({"id": "SKU-N", "name": "n", "price_cents": -1, "stock_on_hand": -1});
    cases.push((
        staff(Method::POST, "/products").json(&negative),
        422,
        Some("price_cents"),
    ));
    cases.push((
        staff(Method::POST, "/products").json(&json!({})),
        422,
        Some("stock_on_hand"),
    ));
    cases.push((
        staff(Method::POST, "/products")
            .header("content-type", "text/plain")
            .body("SKU-N"),
        415,
        None,
    ));
    cases.push((
        anonymous
            .request(Method::POST, "/products")
            .json(&product(json!("SKU-N"), json!("n"))),
        401,
        None,
    ));
    cases.push((
        sales
            .request(Method::POST, "/products")
            .json(&product(json!("SKU-N"), json!("n"))),
        403,
        None,
    ));
    for (body, field) in [
        (json!({"stock_on_hand": -1}), "stock_on_hand"),
        (json!({"stock_on_hand": "9"}), "stock_on_hand"),
        (json!({"stock_on_hand": 1e3}), "stock_on_hand"),
        (json!({}), "stock_on_hand"),
    ] {
        cases.push((
            staff(Method::PUT, "/products/SKU-A/stock").json(&body),
            422,
            Some(field),
        ));
    }
    cases.push((
        staff(Method::PUT, "/products/SKU%00A/stock").json(&json!({"stock_on_hand": 1})),
        400,
        Some("id"),
    ));
    cases.push((
        staff(Method::PUT, &format!("/products/{}/stock", "x".repeat(201)))
            .json(&json!({"stock_on_hand": 1})),
        400,
        Some("id"),
    ));
    for (quantity, field) in [
        (json!(0), "items[0].quantity"),
        (json!(10_001), "items[0].quantity"),
        (json!("1"), "items[0].quantity"),
    ] {
        let reserve = json!({"order_id": Uuid::new_v4(), "items": items(json!("SKU-A"), quantity)});
        cases.push((
            sales.request(Method::POST, "/reservations").json(&reserve),
            422,
            Some(field),
        ));
    }
    let merged = json!({"order_id": Uuid::new_v4(), "items": [
        {"product_id": "SKU-A", "quantity": 6000}, {"product_id": "SKU-A", "quantity": 6000}]});
    cases.push((
        sales.request(Method::POST, "/reservations").json(&merged),
        422,
        Some("items[1].quantity"),
    ));
    cases.push((
        sales
            .request(Method::POST, "/reservations")
            .json(&json!({"order_id": "nope", "items": []})),
        422,
        Some("order_id"),
    ));
    cases.push((
        sales
            .request(Method::POST, "/reservations")
            .json(&json!({})),
        422,
        Some("items"),
    ));
    cases.push((
        sales
            .request(Method::POST, "/reservations")
            .header("content-type", "text/plain")
            .body("{}"),
        415,
        None,
    ));
    let valid = json!({"order_id": Uuid::new_v4(), "items": items(json!("SKU-A"), json!(1))});
    cases.push((
        anonymous
            .request(Method::POST, "/reservations")
            .json(&valid),
        401,
        None,
    ));
    cases.push((
        anonymous
            .request(Method::POST, "/reservations")
            .bearer_auth("customer")
            .json(&valid),
        403,
        None,
    ));
    for order in [active, committed] {
        for (method, path) in [
            (Method::POST, format!("/reservations/{order}/commit")),
            (Method::DELETE, format!("/reservations/{order}")),
            (Method::GET, format!("/reservations/{order}")),
        ] {
            cases.push((anonymous.request(method.clone(), &path), 401, None));
            cases.push((
                anonymous.request(method, &path).bearer_auth("customer"),
                403,
                None,
            ));
        }
    }
    cases.push((
        sales.request(Method::POST, "/reservations/not-a-uuid/commit"),
        400,
        Some("order_id"),
    ));
    cases.push((
        sales.request(Method::DELETE, "/reservations/a%00b"),
        400,
        Some("order_id"),
    ));
    cases.push((
        anonymous.request(Method::GET, "/products/a%00b"),
        400,
        Some("id"),
    ));

    let before = snapshot(&pool).await;
    let count = cases.len();
    for (request, status, field) in cases {
        let response = request.send().await.unwrap();
        if status == 401 {
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
        expect_rejected(response, status, field).await;
    }
    assert_eq!(
        snapshot(&pool).await,
        before,
        "a rejected request changed something"
    );
    println!("{count} bad requests, none changed anything");

    // Valid requests do change it: staff may release, sales may reserve.
    let released: Value = expect_json(
        app.api
            .staff(Method::DELETE, &format!("/reservations/{active}"), None)
            .await,
        200,
    )
    .await;
    assert_eq!(released["status"], "RELEASED");
    expect_json::<Value>(sales.post("/reservations", &valid).await, 201).await;
    assert_ne!(snapshot(&pool).await, before);
}
