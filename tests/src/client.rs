//! Typed HTTP clients of the three services, as the system tests call them.
//!
//! Each call sends what the tests used to write inline (URL, credential, JSON body) and
//! checks the status the happy path answers, panicking with the response body when it
//! differs; request and response bodies are the `contracts` types. Where a test looks at
//! the raw answer (a status code, a problem+json, a header), the `*_raw` calls hand back
//! the [`reqwest::Response`] unchecked.
//!
//! - [`SalesClient`]: orders, cancellation, the review queue, reliability and metrics.
//! - [`ProductClient`]: reservations, products and their stock.
//! - [`DeliveryClient`]: deliveries and the courier's status updates.
//! - [`order_request`]: the order body every test places, and [`eventually`] to poll.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use contracts::{
    Address, LineItem,
    catalog::{Product, Reservation, StockUpdate},
    delivery::{Delivery, DeliveryStatus, DeliveryStatusUpdate},
    orders::{Order, OrderStatus, PlaceOrder},
};
use reqwest::{Method, RequestBuilder, Response};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{SERVICE_TOKEN, STAFF_TOKEN, Stack};

/// How often [`eventually`] and the `wait_for_*` calls poll: a customer's reads stay under
/// sales' shipped rate limit (50/s).
pub const POLL: Duration = Duration::from_millis(25);

/// A `POST /orders` body for `customer` with `(product, quantity)` items, shipped to the
/// address every test uses.
pub fn order_request(customer: &str, items: &[(&str, i32)]) -> PlaceOrder {
    PlaceOrder {
        customer_id: customer.to_owned(),
        items: items
            .iter()
            .map(|(product, quantity)| LineItem {
                product_id: (*product).to_owned(),
                quantity: *quantity,
            })
            .collect(),
        shipping_address: Address {
            recipient: "Ada".into(),
            line1: "1 Main St".into(),
            line2: None,
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        },
    }
}

/// Polls `probe` every [`POLL`] until it yields, or panics after `limit` naming `what`;
/// returns the value and how long it took.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return (value, started.elapsed());
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Reads `response`, asserts its status is `want` (showing the body if not) and parses it.
pub async fn expect_json<T: DeserializeOwned>(response: Response, want: u16, what: &str) -> T {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status.as_u16(), want, "{what}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"))
}

/// What each client holds: one connection pool and the service's base URL.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: String) -> Self {
        Self {
            http: reqwest::Client::new(),
            base,
        }
    }

    /// A request to `path`, with `token` as its bearer credential when given.
    fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `GET {path}` with `token`, expecting 200 and JSON.
    async fn get<T: DeserializeOwned>(&self, path: &str, token: Option<&str>) -> T {
        let response = self.request(Method::GET, path, token).send().await.unwrap();
        expect_json(response, 200, path).await
    }
}

/// Sales' API.
#[derive(Clone)]
pub struct SalesClient {
    api: Api,
}

impl SalesClient {
    /// A client of the sales process at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            api: Api::new(base.into()),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.api.base
    }

    /// `GET {path}` with no credential, unchecked.
    pub async fn get_raw(&self, path: &str) -> Response {
        self.api
            .request(Method::GET, path, None)
            .send()
            .await
            .unwrap()
    }

    /// `POST {path}` with a JSON body and no credential, unchecked.
    pub async fn post_raw(&self, path: &str, body: &impl Serialize) -> Response {
        self.api
            .request(Method::POST, path, None)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `GET {path}` with the staff credential, expecting 200 and JSON.
    pub async fn staff_get(&self, path: &str) -> Value {
        self.api.get(path, Some(STAFF_TOKEN)).await
    }

    /// `POST /orders`, unchecked; with an `Idempotency-Key` when `key` is given.
    pub async fn place_raw(&self, order: &PlaceOrder, key: Option<&str>) -> Response {
        let mut request = self.api.request(Method::POST, "/orders", None).json(order);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    /// `POST /orders`, expecting 201; the order placed.
    pub async fn place(&self, order: &PlaceOrder) -> Order {
        expect_json(self.place_raw(order, None).await, 201, "POST /orders").await
    }

    /// [`SalesClient::place`] with an `Idempotency-Key`.
    pub async fn place_keyed(&self, order: &PlaceOrder, key: &str) -> Order {
        expect_json(self.place_raw(order, Some(key)).await, 201, "POST /orders").await
    }

    /// `GET /orders/{id}`, expecting 200.
    pub async fn get_order(&self, id: Uuid) -> Order {
        self.api.get(&format!("/orders/{id}"), None).await
    }

    /// Polls the order until it shows `status`; how long that took.
    pub async fn wait_for_status(
        &self,
        id: Uuid,
        status: OrderStatus,
        limit: Duration,
    ) -> Duration {
        let what = format!("order {id} {}", status.as_str());
        let ((), waited) = eventually(&what, limit, || async {
            (self.get_order(id).await.status == status).then_some(())
        })
        .await;
        waited
    }

    /// Polls the order until sales recorded its delivery; the delivery's id.
    pub async fn wait_for_delivery(&self, id: Uuid, limit: Duration) -> Uuid {
        let what = format!("the delivery of order {id}");
        eventually(&what, limit, || async {
            self.get_order(id).await.delivery_id
        })
        .await
        .0
    }

    /// `POST /orders/{id}/cancel` with no reason, expecting 200; the order as cancelled.
    pub async fn cancel(&self, id: Uuid) -> Order {
        let path = format!("/orders/{id}/cancel");
        expect_json(self.post_raw(&path, &json!({})).await, 200, &path).await
    }

    /// `GET /review/orders` (with `?query` when not empty), as staff.
    pub async fn review_queue(&self, query: &str) -> Value {
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        self.staff_get(&format!("/review/orders{query}")).await
    }

    /// `GET /review/orders/{id}`: the order, its reviews and history, as staff.
    pub async fn review_detail(&self, id: Uuid) -> Value {
        self.staff_get(&format!("/review/orders/{id}")).await
    }

    /// `POST /review/orders/{id}/{decision}` (`approve` or `reject`) as staff, unchecked.
    pub async fn decide(&self, id: Uuid, decision: &str, note: &str) -> Response {
        let path = format!("/review/orders/{id}/{decision}");
        self.api
            .request(Method::POST, &path, Some(STAFF_TOKEN))
            .json(&json!({ "note": note }))
            .send()
            .await
            .unwrap()
    }

    /// `GET /health/reliability`, expecting 200.
    pub async fn reliability(&self) -> Value {
        self.api.get("/health/reliability", None).await
    }

    /// How often the breaker `name` opened so far, from `/health/reliability`; `None` when
    /// sales cannot be asked or names no such breaker.
    pub async fn breaker_openings(&self, name: &str) -> Option<u64> {
        let response = self
            .api
            .request(Method::GET, "/health/reliability", None)
            .send()
            .await
            .ok()?;
        let view: Value = response.json().await.ok()?;
        view["breakers"]
            .as_array()?
            .iter()
            .find(|b| b["name"] == name)?["opened_total"]
            .as_u64()
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.get_raw("/metrics").await.text().await.unwrap()
    }
}

/// Product's API.
#[derive(Clone)]
pub struct ProductClient {
    api: Api,
}

impl ProductClient {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            api: Api::new(base.into()),
        }
    }

    /// `GET /reservations/{order_id}` with the service credential, expecting 200.
    pub async fn reservation(&self, order_id: Uuid) -> Reservation {
        let path = format!("/reservations/{order_id}");
        self.api.get(&path, Some(SERVICE_TOKEN)).await
    }

    /// `GET /products/{id}`, expecting 200.
    pub async fn product(&self, id: &str) -> Product {
        self.api.get(&format!("/products/{id}"), None).await
    }

    /// `PUT /products/{id}/stock` as staff, expecting 200.
    pub async fn set_stock(&self, id: &str, stock_on_hand: i32) -> Product {
        let path = format!("/products/{id}/stock");
        let response = self
            .api
            .request(Method::PUT, &path, Some(STAFF_TOKEN))
            .json(&StockUpdate { stock_on_hand })
            .send()
            .await
            .unwrap();
        expect_json(response, 200, &path).await
    }
}

/// Delivery's API.
#[derive(Clone)]
pub struct DeliveryClient {
    api: Api,
}

impl DeliveryClient {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            api: Api::new(base.into()),
        }
    }

    /// `POST /deliveries/{id}/status` as staff (the courier), answering within `timeout`;
    /// the response or the transport's error, unchecked.
    pub async fn set_status_raw(
        &self,
        id: Uuid,
        status: DeliveryStatus,
        timeout: Duration,
    ) -> reqwest::Result<Response> {
        let path = format!("/deliveries/{id}/status");
        self.api
            .request(Method::POST, &path, Some(STAFF_TOKEN))
            .json(&DeliveryStatusUpdate { status, note: None })
            .timeout(timeout)
            .send()
            .await
    }

    /// The courier moves the delivery to `status`: expects 200.
    pub async fn set_status(&self, id: Uuid, status: DeliveryStatus) -> Delivery {
        let response = self
            .set_status_raw(id, status, Duration::from_secs(10))
            .await
            .unwrap();
        let what = format!("delivery {id} → {}", status.as_str());
        expect_json(response, 200, &what).await
    }

    /// [`DeliveryClient::set_status`] through each of `statuses` in turn.
    pub async fn courier(&self, id: Uuid, statuses: &[DeliveryStatus]) {
        for status in statuses {
            self.set_status(id, *status).await;
        }
    }

    /// `GET /deliveries?order_id=…` as staff, expecting 200.
    pub async fn deliveries_of(&self, order_id: Uuid) -> Vec<Delivery> {
        let path = format!("/deliveries?order_id={order_id}");
        self.api.get(&path, Some(STAFF_TOKEN)).await
    }
}

impl Stack {
    /// A client of this stack's sales.
    pub fn sales_api(&self) -> SalesClient {
        SalesClient::new(self.sales.base_url())
    }

    /// A client of this stack's product.
    pub fn product_api(&self) -> ProductClient {
        ProductClient::new(self.product.base_url())
    }

    /// A client of this stack's delivery.
    pub fn delivery_api(&self) -> DeliveryClient {
        DeliveryClient::new(self.delivery.base_url())
    }
}
