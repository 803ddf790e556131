//! Catalog, staff stock updates and the availability check.

use contracts::catalog::{AvailabilityResponse, Product};
use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;
use testkit::{expect_json, expect_problem, fields};

use crate::{add_product, spawn, spawn_with, stock};

#[sqlx::test(migrations = "../../migrations/product")]
async fn staff_add_products_and_customers_read_them(pool: PgPool) {
    let app = spawn(pool).await;
    add_product(&app.api, "SKU-B", 5).await;
    add_product(&app.api, "SKU-A", 3).await;
    let all: Vec<Product> = expect_json(app.api.get("/products").await, 200).await;
    let ids: Vec<&str> = all.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["SKU-A", "SKU-B"]);
    let one: Product = expect_json(app.api.get("/products/SKU-B").await, 200).await;
    assert_eq!((one.stock_on_hand, one.reserved, one.available), (5, 0, 5));
    expect_problem(app.api.get("/products/SKU-NONE").await, 404).await;
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn adding_products_needs_staff_and_valid_fields(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    let body = json!({"id": "SKU-X", "name": "x", "price_cents": 100, "stock_on_hand": 1});
    expect_problem(app.api.anonymous().post("/products", &body).await, 401).await;
    // Sales' service token is not a staff one.
    expect_problem(app.api.post("/products", &body).await, 403).await;
    let wrong = app
        .api
        .request(Method::POST, "/products")
        .bearer_auth("not-the-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_problem(wrong, 403).await;
    let bad = json!({"id": " ", "name": "x", "price_cents": -1, "stock_on_hand": -2});
    let problem = expect_problem(
        app.api.staff(Method::POST, "/products", Some(&bad)).await,
        422,
    )
    .await;
    assert_eq!(fields(&problem), ["id", "price_cents", "stock_on_hand"]);
    let count: i64 = sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM products"#)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0, "rejected requests write nothing");
    add_product(&app.api, "SKU-X", 1).await;
    let dup = app.api.staff(Method::POST, "/products", Some(&body)).await;
    expect_problem(dup, 409).await;
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn stock_can_be_set_but_not_below_reserved(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-S", 10).await;
    let order = uuid::Uuid::new_v4();
    let reserve = json!({"order_id": order, "items": [{"product_id": "SKU-S", "quantity": 4}]});
    assert_eq!(app.api.post("/reservations", &reserve).await.status(), 201);

    let set = |n: i32| json!({"stock_on_hand": n});
    let p: Product = expect_json(
        app.api
            .staff(Method::PUT, "/products/SKU-S/stock", Some(&set(20)))
            .await,
        200,
    )
    .await;
    assert_eq!((p.stock_on_hand, p.reserved, p.available), (20, 4, 16));
    expect_problem(
        app.api
            .staff(Method::PUT, "/products/SKU-S/stock", Some(&set(3)))
            .await,
        409,
    )
    .await;
    expect_problem(
        app.api
            .staff(Method::PUT, "/products/SKU-S/stock", Some(&set(-1)))
            .await,
        422,
    )
    .await;
    expect_problem(
        app.api
            .staff(Method::PUT, "/products/SKU-NO/stock", Some(&set(1)))
            .await,
        404,
    )
    .await;
    let anon = app
        .api
        .anonymous()
        .request(Method::PUT, "/products/SKU-S/stock")
        .json(&set(0))
        .send()
        .await
        .unwrap();
    expect_problem(anon, 401).await;
    assert_eq!(stock(&pool, "SKU-S").await, (20, 4));
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn availability_check_is_read_only(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    add_product(&app.api, "SKU-A", 2).await;
    let body = json!({"items": [
        {"product_id": "SKU-A", "quantity": 1},
        {"product_id": "SKU-A", "quantity": 1},
        {"product_id": "SKU-GONE", "quantity": 1}]});
    let answer: AvailabilityResponse =
        expect_json(app.api.post("/availability/check", &body).await, 200).await;
    assert!(!answer.available);
    assert_eq!(answer.items.len(), 2, "repeated products are merged");
    assert!(answer.items[0].sufficient && answer.items[0].requested == 2);
    assert!(!answer.items[1].sufficient && answer.items[1].available == 0);
    let enough = json!({"items": [{"product_id": "SKU-A", "quantity": 2}]});
    let answer: AvailabilityResponse =
        expect_json(app.api.post("/availability/check", &enough).await, 200).await;
    assert!(answer.available);
    assert_eq!(stock(&pool, "SKU-A").await, (2, 0), "a check holds nothing");
    let bad = json!({"items": [{"product_id": "SKU-A", "quantity": 0}]});
    let problem = expect_problem(app.api.post("/availability/check", &bad).await, 422).await;
    assert_eq!(fields(&problem), ["items[0].quantity"]);
}

#[sqlx::test(migrations = "../../migrations/product")]
async fn demo_catalog_is_seeded_once(pool: PgPool) {
    let app = spawn_with(pool.clone(), &[("PRODUCT_SEED_DEMO_CATALOG", "true")]).await;
    let all: Vec<Product> = expect_json(app.api.get("/products").await, 200).await;
    assert_eq!(all.len(), product::demo_catalog::DEMO_PRODUCTS.len());
    // While the app runs: stopping it closes the pool it shares with the test.
    let again = product::demo_catalog::seed(&pool).await.unwrap();
    assert_eq!(again, 0);
    drop(app);
}
