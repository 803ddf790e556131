//! Helpers for the services' integration tests and the system tests: an HTTP
//! client bound to a base URL, assertions on JSON and problem+json answers, and a
//! handle that runs a service in the test's runtime until dropped.
//!
//! # Layout
//! - [`Api`]: a `reqwest` client with a base URL and an optional staff token.
//! - [`expect_json`] / [`expect_problem`] / [`expect_rejected`]: status + body assertions.
//! - [`snapshot`]: every row of a database schema, to prove a request changed nothing.
//! - [`Running`]: a service task cancelled when the handle drops.
//! - [`proxy`]: a TCP proxy that cuts and refuses connections to a dependency.
#![allow(clippy::unwrap_used)]

pub mod proxy;

use std::future::Future;

use contracts::Problem;
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// The staff account the tests give sales (`Bearer <name>:<secret>`).
pub const STAFF_NAME: &str = "test-staff";
/// Its secret (the console password).
pub const STAFF_SECRET: &str = "test-staff-secret";
/// Staff token the tests configure product and delivery with, which is also the
/// credential of sales' staff account [`STAFF_NAME`].
pub const STAFF_TOKEN: &str = "test-staff:test-staff-secret";

/// Service token the tests configure product and delivery with, and sales with
/// for its calls to them.
pub const SERVICE_TOKEN: &str = "test-service-token";

/// An HTTP client for one service.
#[derive(Clone, Debug)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: reqwest::Client::new(),
        }
    }

    /// A client that sends `Authorization: Bearer <token>` on every request that
    /// sets no credential of its own (as sales calls product and delivery).
    pub fn with_bearer(base: impl Into<String>, token: &str) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        Self {
            base: base.into(),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap(),
        }
    }

    /// The same service without any credential.
    pub fn anonymous(&self) -> Self {
        Self::new(self.base.clone())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Response {
        self.request(Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn staff(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Response {
        let mut req = self.request(method, path).bearer_auth(STAFF_TOKEN);
        if let Some(body) = body {
            req = req.json(body);
        }
        req.send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.request(Method::DELETE, path).send().await.unwrap()
    }
}

/// Asserts the status and decodes the JSON body.
#[track_caller]
pub fn expect_json<T: DeserializeOwned>(
    response: Response,
    status: u16,
) -> impl Future<Output = T> {
    let caller = std::panic::Location::caller();
    async move {
        let got = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(got, status, "unexpected status at {caller}; body: {text}");
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("body is not the expected JSON at {caller} ({e}): {text}"))
    }
}

/// Asserts the status, the problem+json content type, and decodes the problem.
#[track_caller]
pub fn expect_problem(response: Response, status: u16) -> impl Future<Output = Problem> {
    let caller = std::panic::Location::caller();
    async move {
        let got = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = response.text().await.unwrap();
        assert_eq!(got, status, "unexpected status at {caller}; body: {text}");
        assert_eq!(
            content_type, "application/problem+json",
            "not a problem document at {caller}: {text}"
        );
        let problem: Problem = serde_json::from_str(&text).unwrap();
        assert_eq!(problem.status, status, "status member at {caller}");
        problem
    }
}

/// Every row of every table of the pool's schema (its `search_path`), as JSON
/// text per table: equal snapshots before and after a request prove it changed
/// nothing. sqlx's migration table is left out.
pub async fn snapshot(pool: &sqlx::PgPool) -> std::collections::BTreeMap<String, String> {
    let tables = sqlx::query_scalar!(
        r#"SELECT tablename::text AS "table!" FROM pg_tables WHERE schemaname = current_schema()
           AND tablename <> '_sqlx_migrations' ORDER BY tablename"#,
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for table in tables {
        // The one query built at run time: its table is a value of the loop.
        let rows: String = sqlx::query_scalar(&format!(
            "SELECT coalesce(json_agg(r ORDER BY r::text), '[]')::text FROM (SELECT to_jsonb(t) AS r FROM \"{table}\" t) s"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.insert(table, rows);
    }
    out
}

/// Asserts `response` is a 4xx problem naming `field` (when given) among its errors.
#[track_caller]
pub fn expect_rejected(
    response: Response,
    status: u16,
    field: Option<&'static str>,
) -> impl Future<Output = Problem> {
    let caller = std::panic::Location::caller();
    let problem = expect_problem(response, status);
    async move {
        let problem = problem.await;
        if let Some(field) = field {
            assert!(
                fields(&problem).contains(&field),
                "the problem at {caller} does not name {field}: {problem:?}"
            );
        }
        problem
    }
}

/// Checks what every service's OpenAPI document must say (`platform::openapi`):
/// every error body is `application/problem+json`; every operation documents 503;
/// one with a body 400, 413, 415 and 422; one with a path parameter 400; one that
/// needs a credential 401 (with `WWW-Authenticate`) and 403. `internal` lists the
/// operations (`"post /reservations"`) that must take the service credential.
pub fn assert_openapi_is_exact(doc: &serde_json::Value, internal: &[&str]) {
    let paths = doc["paths"].as_object().expect("paths");
    let mut seen_internal = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("a path item") {
            let at = format!("{method} {path}");
            let responses = op["responses"].as_object().expect("responses");
            let has = |status: &str| responses.contains_key(status);
            for (status, response) in responses {
                if status.starts_with(['4', '5']) {
                    assert!(
                        response["content"]["application/problem+json"].is_object(),
                        "{at} {status}: no application/problem+json body"
                    );
                    assert!(
                        response["content"]["application/json"]["schema"]["$ref"]
                            != "#/components/schemas/Problem",
                        "{at} {status}: a problem documented as application/json"
                    );
                }
            }
            assert!(has("503"), "{at}: 503 undocumented");
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(has(status), "{at}: {status} undocumented");
                }
            }
            if path.contains('{') {
                assert!(has("400"), "{at}: 400 undocumented");
            }
            let schemes: Vec<&str> = op["security"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(|r| r.as_object())
                        .flat_map(|r| r.keys().map(String::as_str))
                        .collect()
                })
                .unwrap_or_default();
            if !schemes.is_empty() {
                assert!(has("401") && has("403"), "{at}: 401/403 undocumented");
                assert!(
                    responses["401"]["headers"]["WWW-Authenticate"].is_object(),
                    "{at}: 401 without WWW-Authenticate"
                );
            }
            if schemes.contains(&"service") {
                seen_internal.push(at.clone());
            }
        }
    }
    seen_internal.sort();
    let mut internal: Vec<String> = internal.iter().map(|s| (*s).to_owned()).collect();
    internal.sort();
    assert_eq!(
        seen_internal, internal,
        "operations taking the service credential"
    );
}

/// The fields named by a problem's field errors.
pub fn fields(problem: &Problem) -> Vec<&str> {
    problem.errors.iter().map(|e| e.field.as_str()).collect()
}

/// A service running in the test's runtime; cancelled when dropped.
pub struct Running {
    pub api: Api,
    token: CancellationToken,
}

impl Running {
    /// Spawns `run(token)` and points an [`Api`] at `127.0.0.1:port`.
    pub fn spawn<F, Fut, E>(port: u16, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Debug + Send + 'static,
    {
        let token = CancellationToken::new();
        let fut = run(token.clone());
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                panic!("service stopped with an error: {e:?}");
            }
        });
        Self {
            api: Api::new(format!("http://127.0.0.1:{port}")),
            token,
        }
    }
}

impl Running {
    /// Stops the service and waits (up to 10 s) until its port refuses connections,
    /// so what follows really runs with the service down.
    pub async fn stop(self) {
        self.token.cancel();
        let addr = self.api.base.trim_start_matches("http://").to_owned();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&addr).await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "{addr} still accepts connections"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
