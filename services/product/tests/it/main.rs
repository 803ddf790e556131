//! Integration tests of the product service: the real app on port 0 against a
//! fresh PostgreSQL database per test (`#[sqlx::test]`).
#![allow(clippy::unwrap_used)]

mod bad_input;
mod catalog;
mod http;
mod order_events;
mod reservations;

use std::collections::HashMap;

use platform::config::Env;
use product::{Application, Config};
use serde_json::json;
use sqlx::PgPool;
use testkit::{Api, Running, SERVICE_TOKEN, STAFF_TOKEN};

/// Starts the service on a free port. Its `api` calls as sales does, with the
/// service token (`api.anonymous()` calls without any credential).
pub async fn spawn(pool: PgPool) -> Running {
    spawn_with(pool, &[]).await
}

pub async fn spawn_with(pool: PgPool, extra: &[(&str, &str)]) -> Running {
    let mut vars: HashMap<String, String> = [
        ("PRODUCT_LISTEN_ADDR", "127.0.0.1:0"),
        ("PRODUCT_STAFF_TOKEN", STAFF_TOKEN),
        ("PRODUCT_SERVICE_TOKEN", SERVICE_TOKEN),
        ("PRODUCT_EXPIRY_SWEEP_INTERVAL_MS", "3600000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    let config = Config::from(&Env::from_map("PRODUCT_", vars)).unwrap();
    let app = Application::with_pool(config, pool).await.unwrap();
    let port = app.port();
    let mut running = Running::spawn(port, |token| app.run(token));
    running.api = Api::with_bearer(running.api.base.clone(), SERVICE_TOKEN);
    running
}

/// Adds a product through the staff API.
pub async fn add_product(api: &Api, id: &str, stock: i32) {
    let response = api
        .staff(
            reqwest::Method::POST,
            "/products",
            Some(&json!({"id": id, "name": format!("{id} name"), "price_cents": 1000, "stock_on_hand": stock})),
        )
        .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}

/// (stock_on_hand, reserved) of a product, read from the database.
pub async fn stock(pool: &PgPool, id: &str) -> (i32, i32) {
    let row = sqlx::query!(
        "SELECT stock_on_hand, reserved FROM products WHERE id = $1",
        id
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (row.stock_on_hand, row.reserved)
}
