//! Integration tests of the sales service against the real product and delivery
//! services, all three in this process on port 0, each with its own schema of a
//! fresh PostgreSQL database per test (`#[sqlx::test]`), talking real HTTP.
#![allow(clippy::unwrap_used)]

mod alerting;
mod bad_input;
mod caching;
mod cancelling;
mod console;
mod faults;
mod following;
mod http;
mod listing;
mod owned_relay;
mod placing;
mod rate_limiting;
mod rechecking;
mod reconciling;
mod relaying;
mod retries;
mod reviewing;
mod sagas;
mod transitions;

use std::collections::HashMap;

use platform::config::Env;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use testkit::{Api, Running, SERVICE_TOKEN, STAFF_TOKEN};

/// The three services of one test.
pub struct Stack {
    pub sales: Running,
    pub product: Option<Running>,
    pub delivery: Option<Running>,
    pub sales_db: PgPool,
    pub product_db: PgPool,
    pub delivery_db: PgPool,
    /// The port sales calls delivery on (nothing listens there while delivery is down).
    pub delivery_port: u16,
    /// The port sales calls product on (nothing listens there while product is down).
    pub product_port: u16,
    /// Holds the peers' ports while they are down from the start ([`Peers`]); released when
    /// one is started.
    delivery_hold: Option<ClosedPort>,
    product_hold: Option<ClosedPort>,
    /// Sales' delivery retry worker, to drive step by step with a chosen clock.
    pub retry_worker: sales::workers::delivery_retry::Worker,
    /// Sales' reconciliation job, to drive run by run.
    pub reconciliation: sales::workers::reconciliation::Worker,
    /// Sales' availability re-check, to drive round by round.
    pub recheck: sales::workers::availability_recheck::Worker,
    /// Sales' reliability alert checker, to drive evaluation by evaluation.
    pub alerts: sales::workers::alerts::Checker,
    /// The test's database, for pools made after a stopped service closed its own.
    options: PgConnectOptions,
}

fn vars(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

async fn schema_pool(options: &PgConnectOptions, schema: &str) -> PgPool {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .unwrap();
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    PgPoolOptions::new()
        .max_connections(5)
        .connect_with(options.clone().options([("search_path", schema)]))
        .await
        .unwrap()
}

/// A peer whose `api` calls as sales does, with the service token.
fn as_sales(mut running: Running) -> Running {
    running.api = Api::with_bearer(running.api.base.clone(), SERVICE_TOKEN);
    running
}

/// A port nothing listens on, held for as long as this lives: bound but not listening, so a
/// connection to it is refused, and bound without `SO_REUSEADDR`, so no other test's server
/// (they bind port 0 in parallel processes) is given it meanwhile. A port bound and released
/// at once could be, and a "down" peer would then answer as that stranger.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    ClosedPort {
        _socket: socket,
        port,
    }
}

/// Which peers to run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Peers {
    Both,
    ProductDown,
    DeliveryDown,
}

impl Stack {
    pub async fn start(options: PgConnectOptions) -> Self {
        Self::start_with(options, Peers::Both).await
    }

    pub async fn start_with(options: PgConnectOptions, peers: Peers) -> Self {
        Self::start_configured(options, peers, &[]).await
    }

    /// Starts the stack with extra `SALES_*` settings.
    pub async fn start_configured(
        options: PgConnectOptions,
        peers: Peers,
        sales_vars: &[(&str, &str)],
    ) -> Self {
        let sales_db = schema_pool(&options, "sales").await;
        let product_db = schema_pool(&options, "product").await;
        let delivery_db = schema_pool(&options, "delivery").await;
        product::MIGRATOR.run(&product_db).await.unwrap();
        delivery::MIGRATOR.run(&delivery_db).await.unwrap();
        sales::MIGRATOR.run(&sales_db).await.unwrap();
        sales::staff::add(&sales_db, testkit::STAFF_NAME, testkit::STAFF_SECRET)
            .await
            .unwrap();

        let product_config = product::Config::from(&Env::from_map(
            "PRODUCT_",
            vars(&[
                ("PRODUCT_LISTEN_ADDR", "127.0.0.1:0".into()),
                ("PRODUCT_STAFF_TOKEN", STAFF_TOKEN.into()),
                ("PRODUCT_SERVICE_TOKEN", SERVICE_TOKEN.into()),
            ]),
        ))
        .unwrap();
        let product_app = product::Application::with_pool(product_config, product_db.clone())
            .await
            .unwrap();
        let product_port = product_app.port();
        let product = (peers != Peers::ProductDown)
            .then(|| as_sales(Running::spawn(product_port, |t| product_app.run(t))));

        let delivery_config = delivery::Config::from(&Env::from_map(
            "DELIVERY_",
            vars(&[
                ("DELIVERY_LISTEN_ADDR", "127.0.0.1:0".into()),
                ("DELIVERY_STAFF_TOKEN", STAFF_TOKEN.into()),
                ("DELIVERY_SERVICE_TOKEN", SERVICE_TOKEN.into()),
            ]),
        ))
        .unwrap();
        let delivery_app = delivery::Application::with_pool(delivery_config, delivery_db.clone())
            .await
            .unwrap();
        let delivery_port = delivery_app.port();
        let delivery = (peers != Peers::DeliveryDown)
            .then(|| as_sales(Running::spawn(delivery_port, |t| delivery_app.run(t))));

        let hold = |up: bool| (!up).then(closed_port);
        let (delivery_hold, product_hold) = (hold(delivery.is_some()), hold(product.is_some()));
        let delivery_port = delivery_hold.as_ref().map_or(delivery_port, |h| h.port);
        let product_port = product_hold.as_ref().map_or(product_port, |h| h.port);
        let mut sales_vars_map = vars(&[
            ("SALES_LISTEN_ADDR", "127.0.0.1:0".into()),
            ("SALES_PRODUCT_SERVICE_TOKEN", SERVICE_TOKEN.into()),
            ("SALES_DELIVERY_SERVICE_TOKEN", SERVICE_TOKEN.into()),
            (
                "SALES_PRODUCT_URL",
                format!("http://127.0.0.1:{product_port}"),
            ),
            (
                "SALES_DELIVERY_URL",
                format!("http://127.0.0.1:{delivery_port}"),
            ),
            ("SALES_HTTP_REQUEST_TIMEOUT_MS", "2000".into()),
            // Tests drive the workers themselves.
            ("SALES_DELIVERY_RETRY_POLL_INTERVAL_MS", "3600000".into()),
            ("SALES_RECONCILIATION_INTERVAL_MS", "3600000".into()),
            ("SALES_RECONCILIATION_STALE_AFTER_MS", "0".into()),
            ("SALES_AVAILABILITY_RECHECK_INTERVAL_MS", "3600000".into()),
            ("SALES_AVAILABILITY_RECHECK_WAKE", "false".into()),
            ("SALES_ALERTS_INTERVAL_MS", "3600000".into()),
        ]);
        for (k, v) in sales_vars {
            sales_vars_map.insert((*k).to_owned(), (*v).to_owned());
        }
        let sales_config = sales::Config::from(&Env::from_map("SALES_", sales_vars_map)).unwrap();
        let sales_app = sales::Application::with_pool(sales_config, sales_db.clone())
            .await
            .unwrap();
        let sales_port = sales_app.port();
        let retry_worker = sales_app.delivery_retry_worker();
        let reconciliation = sales_app.reconciliation_worker();
        let recheck = sales_app.availability_recheck_worker();
        let alerts = sales_app.alert_checker();
        let sales = Running::spawn(sales_port, |t| sales_app.run(t));

        let stack = Self {
            sales,
            product,
            delivery,
            sales_db,
            product_db,
            delivery_db,
            delivery_port,
            product_port,
            delivery_hold,
            product_hold,
            retry_worker,
            reconciliation,
            recheck,
            alerts,
            options,
        };
        for (id, stock) in [("SKU-A", 10), ("SKU-B", 3)] {
            stack.add_product(id, stock).await;
        }
        stack
    }

    /// Starts delivery on the port sales calls (after [`Peers::DeliveryDown`]).
    pub async fn start_delivery(&mut self) {
        self.delivery_hold = None;
        let config = delivery::Config::from(&Env::from_map(
            "DELIVERY_",
            vars(&[
                (
                    "DELIVERY_LISTEN_ADDR",
                    format!("127.0.0.1:{}", self.delivery_port),
                ),
                ("DELIVERY_STAFF_TOKEN", STAFF_TOKEN.into()),
                ("DELIVERY_SERVICE_TOKEN", SERVICE_TOKEN.into()),
            ]),
        ))
        .unwrap();
        let app = delivery::Application::with_pool(config, self.delivery_db.clone())
            .await
            .unwrap();
        self.delivery = Some(as_sales(Running::spawn(self.delivery_port, |t| app.run(t))));
    }

    /// Starts product on the port sales calls (after [`Peers::ProductDown`], or after
    /// stopping it: a stopped product closed its pool, so it gets a fresh one).
    pub async fn start_product(&mut self) {
        self.product_hold = None;
        self.product_db = schema_pool(&self.options, "product").await;
        let config = product::Config::from(&Env::from_map(
            "PRODUCT_",
            vars(&[
                (
                    "PRODUCT_LISTEN_ADDR",
                    format!("127.0.0.1:{}", self.product_port),
                ),
                ("PRODUCT_STAFF_TOKEN", STAFF_TOKEN.into()),
                ("PRODUCT_SERVICE_TOKEN", SERVICE_TOKEN.into()),
            ]),
        ))
        .unwrap();
        let app = product::Application::with_pool(config, self.product_db.clone())
            .await
            .unwrap();
        self.product = Some(as_sales(Running::spawn(self.product_port, |t| app.run(t))));
    }

    /// Delivery's API (panics while delivery is down).
    pub fn delivery_api(&self) -> &Api {
        &self.delivery.as_ref().unwrap().api
    }

    /// Moves a delivery along the courier's path, through delivery's staff endpoint.
    pub async fn courier(&self, delivery_id: uuid::Uuid, statuses: &[&str]) {
        for status in statuses {
            let response = self
                .delivery_api()
                .staff(
                    Method::POST,
                    &format!("/deliveries/{delivery_id}/status"),
                    Some(&json!({"status": status})),
                )
                .await;
            assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        }
    }

    /// Relays the order's pending outbox events of `event_type` to product's
    /// consumer, as the outbox relay and SQS would (the broker is off here).
    pub async fn relay_to_product(&self, order_id: uuid::Uuid, event_type: &str) -> usize {
        #[derive(sqlx::FromRow)]
        struct Row {
            id: uuid::Uuid,
            aggregate_version: i32,
            payload: Value,
            created_at: chrono::DateTime<chrono::Utc>,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, aggregate_version, payload, created_at FROM outbox_events
             WHERE aggregate_id = $1 AND event_type = $2 ORDER BY created_at",
        )
        .bind(order_id)
        .bind(event_type)
        .fetch_all(&self.sales_db)
        .await
        .unwrap();
        for row in &rows {
            let envelope = messaging::Envelope {
                event_id: row.id,
                event_type: event_type.to_owned(),
                aggregate_type: "order".into(),
                aggregate_id: order_id,
                aggregate_version: row.aggregate_version,
                occurred_at: row.created_at,
                schema_version: 1,
                payload: row.payload.clone(),
                trace: Default::default(),
            };
            product::order_events::apply(&self.product_db, &envelope, chrono::Utc::now())
                .await
                .unwrap();
        }
        rows.len()
    }

    /// Event types of an order's outbox rows, oldest first.
    pub async fn events_of(&self, order_id: uuid::Uuid) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT event_type FROM outbox_events WHERE aggregate_id = $1 ORDER BY created_at, id",
        )
        .bind(order_id)
        .fetch_all(&self.sales_db)
        .await
        .unwrap()
    }

    /// (reason, status) of an order's reviews, oldest first.
    pub async fn reviews_of(&self, order_id: uuid::Uuid) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT reason, status FROM manual_reviews WHERE order_id = $1 ORDER BY created_at, id",
        )
        .bind(order_id)
        .fetch_all(&self.sales_db)
        .await
        .unwrap()
    }

    pub fn api(&self) -> &Api {
        &self.sales.api
    }

    /// Adds a product directly in product's database (works with product down too).
    pub async fn add_product(&self, id: &str, stock: i32) {
        sqlx::query(
            "INSERT INTO products (id, name, price_cents, stock_on_hand) VALUES ($1, $1, 100, $2)",
        )
        .bind(id)
        .bind(stock)
        .execute(&self.product_db)
        .await
        .unwrap();
    }

    /// (stock_on_hand, reserved) at product.
    pub async fn stock(&self, id: &str) -> (i32, i32) {
        sqlx::query_as("SELECT stock_on_hand, reserved FROM products WHERE id = $1")
            .bind(id)
            .fetch_one(&self.product_db)
            .await
            .unwrap()
    }

    pub async fn count(&self, pool: &PgPool, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap()
    }

    pub async fn place(&self, body: &Value, key: Option<&str>) -> reqwest::Response {
        let mut request = self.api().request(Method::POST, "/orders").json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }
}

/// A valid order body.
pub fn order_body(customer: &str, items: &[(&str, i32)]) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(id, q)| json!({"product_id": id, "quantity": q}))
        .collect();
    json!({
        "customer_id": customer,
        "items": items,
        "shipping_address": {"recipient": "Grace Hopper", "line1": "1 Compiler Way",
            "city": "Arlington", "postal_code": "22201", "country": "US"}
    })
}
