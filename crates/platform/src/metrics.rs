//! Prometheus metrics of a service: the process-wide recorder of the `metrics`
//! facade (metrics-exporter-prometheus), `GET /metrics` in the Prometheus text
//! format, and the middleware counting HTTP requests.
//!
//! [`install`] sets the global recorder once per process (later calls return the
//! same handle), so call it before anything that registers metric handles once
//! and keeps them (circuit breakers do): a handle taken before the recorder is
//! installed records nothing. Each service's `Application` calls it first thing.
//! Without a recorder every `metrics` call is a no-op, which is what unit tests and
//! benchmarks of other crates get.
//!
//! Histograms named `*_duration_seconds` (request latencies) and `*_lag_seconds`
//! (commit → publish of the outbox) get fixed buckets, so they render as real
//! Prometheus histograms rather than summaries.
//!
//! Metric names are agreed across the services (no per-service prefix); the
//! descriptions below are the catalogue. Health checks and scrapes of `/metrics`
//! are counted like any other route, under their template.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{MatchedPath, Request},
    http::{HeaderValue, Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets (seconds) of `*_duration_seconds`: 1 ms to 10 s.
pub const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets (seconds) of `*_lag_seconds`: 1 ms (the relay's normal lag) to 10 min
/// (events waiting out a broker outage).
pub const LAG_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// How often histogram samples are folded in between scrapes (keeps memory bounded).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Longest a scrape waits for its refresh hook before rendering what it has.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process) and returns its handle.
///
/// If another recorder was installed first (not by this function), a warning is
/// logged and the returned handle renders only what reaches it (nothing).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_duration_seconds".into()),
                &DURATION_BUCKETS,
            )
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_lag_seconds".into()), &LAG_BUCKETS))
            .map(PrometheusBuilder::build_recorder)
            // The bucket lists are non-empty constants: this cannot fail.
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        match metrics::set_global_recorder(recorder) {
            Ok(()) => describe(),
            Err(e) => tracing::warn!(error = %e, "a metrics recorder was already installed; /metrics stays empty"),
        }
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the metrics upkeep thread; scrapes still do it");
        }
        handle
    })
}

/// The current metrics in the Prometheus text format (installs the recorder if needed).
pub fn render() -> String {
    install().render()
}

/// A hook run before each scrape renders, e.g. to refresh gauges computed from a database.
pub type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Wraps an async closure as a [`Refresh`] hook.
pub fn refresh_hook<F, Fut>(f: F) -> Refresh
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// `GET /metrics` (installs the recorder if needed).
pub fn router() -> Router {
    router_with(None)
}

/// `GET /metrics`, running `refresh` (bounded by a short timeout) before each render.
pub fn router_with(refresh: Option<Refresh>) -> Router {
    let handle = install();
    Router::new().route(
        "/metrics",
        get(move || {
            let refresh = refresh.clone();
            async move {
                if let Some(refresh) = refresh
                    && tokio::time::timeout(REFRESH_TIMEOUT, refresh())
                        .await
                        .is_err()
                {
                    tracing::warn!("metrics refresh timed out; rendering the last values");
                }
                (
                    [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}

/// OpenAPI description of `/metrics`, merged into each service's document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(metrics_doc))]
pub struct MetricsApi;

/// Prometheus metrics of this process.
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain")))]
#[allow(dead_code)]
fn metrics_doc() {}

/// Middleware: `http_requests_total` and `http_request_duration_seconds` by method,
/// route template (`unmatched` when no route matched; never the raw path, so ids
/// do not become labels) and status.
pub async fn track_http(request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The standard methods by name; anything else is `OTHER` (bounded label values).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// HELP texts of the agreed metrics (shown only for metrics that were recorded).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "http_requests_total",
        "HTTP requests by method, route template and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by method, route template and status"
    );
    describe_gauge!(
        "circuit_breaker_state",
        "Circuit breaker state: 0 closed, 1 open, 2 half-open"
    );
    describe_counter!(
        "circuit_breaker_calls_total",
        "Calls through a circuit breaker by outcome: success, failure, rejected"
    );
    describe_gauge!(
        "outbox_events_pending",
        "Outbox rows waiting to be published"
    );
    describe_gauge!(
        "outbox_events_failed",
        "Outbox rows that failed every attempt (dead letters)"
    );
    describe_gauge!(
        "outbox_oldest_pending_age_seconds",
        Unit::Seconds,
        "Age of the oldest pending outbox row"
    );
    describe_counter!(
        "outbox_events_published_total",
        "Outbox events published to the broker"
    );
    describe_histogram!(
        "outbox_relay_lag_seconds",
        Unit::Seconds,
        "Time from an outbox row's commit to its publication"
    );
    describe_gauge!(
        "delivery_retries_pending",
        "Orders whose delivery is not initiated yet"
    );
    describe_counter!("reconciliation_runs_total", "Reconciliation runs by result");
    describe_gauge!("manual_review_queue_length", "Open manual reviews");
    describe_counter!(
        "cache_requests_total",
        "Cache reads by result: hit, miss, error, corrupt"
    );
    describe_counter!("cache_writes_total", "Cache writes by result: ok, failed");
    describe_gauge!("cache_available", "1 while the cache answers, else 0");
    describe_counter!(
        "consumer_messages_total",
        "Consumed messages by result: processed, duplicate, failed"
    );
    describe_counter!(
        "rate_limit_rejected_total",
        "Requests refused by the rate limiter"
    );
    describe_gauge!(
        "reliability_alert_active",
        "1 while a reliability alert episode is open, else 0"
    );
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request as HttpRequest, routing::post};
    use tower::ServiceExt;

    use super::*;

    fn app() -> Router {
        Router::new()
            .route("/things/{id}", get(|| async { "thing" }))
            .route(
                "/things",
                post(|| async { axum::http::StatusCode::CREATED }),
            )
            .merge(router())
            .layer(axum::middleware::from_fn(track_http))
    }

    async fn call(app: &Router, method: &str, uri: &str) -> Response {
        app.clone()
            .oneshot(
                HttpRequest::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible")
    }

    /// The value of the series named `name` whose labels include every one of `labels`.
    fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .find(|l| labels.iter().all(|want| l.contains(want)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[tokio::test]
    async fn install_is_idempotent_and_requests_are_counted_by_route_template() {
        let first: *const PrometheusHandle = install();
        let second: *const PrometheusHandle = install();
        assert_eq!(first, second, "one recorder per process");

        let app = app();
        // A unique id per run: the raw path must never show up as a label.
        let id = format!("x{}", std::process::id());
        for _ in 0..3 {
            assert_eq!(
                call(&app, "GET", &format!("/things/{id}")).await.status(),
                200
            );
        }
        assert_eq!(call(&app, "POST", "/things").await.status(), 201);
        assert_eq!(call(&app, "GET", "/no/such/route").await.status(), 404);
        assert_eq!(call(&app, "DELETE", "/things").await.status(), 405);

        let response = call(&app, "GET", "/metrics").await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(!text.contains(&id), "raw ids are never labels:\n{text}");
        let count = |labels: &[&str]| value(&text, "http_requests_total", labels);
        assert_eq!(
            count(&[
                r#"route="/things/{id}""#,
                r#"method="GET""#,
                r#"status="200""#
            ]),
            Some(3.0)
        );
        assert_eq!(
            count(&[r#"route="/things""#, r#"method="POST""#, r#"status="201""#]),
            Some(1.0)
        );
        assert_eq!(
            count(&[r#"route="unmatched""#, r#"status="404""#]),
            Some(1.0)
        );
        assert_eq!(
            count(&[
                r#"route="/things""#,
                r#"method="DELETE""#,
                r#"status="405""#
            ]),
            Some(1.0)
        );
        // A real histogram (buckets), not a summary.
        assert!(
            text.contains("http_request_duration_seconds_bucket{"),
            "histogram buckets rendered:\n{text}"
        );
        assert_eq!(
            value(
                &text,
                "http_request_duration_seconds_count",
                &[r#"route="/things/{id}""#]
            ),
            Some(3.0)
        );
    }

    #[tokio::test]
    async fn the_refresh_hook_runs_before_each_scrape() {
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = calls.clone();
        let app = router_with(Some(refresh_hook(move || {
            let c = c.clone();
            async move {
                let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                metrics::gauge!("platform_test_refreshed").set(n as f64);
            }
        })));
        call(&app, "GET", "/metrics").await;
        let response = call(&app, "GET", "/metrics").await;
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        assert_eq!(value(&text, "platform_test_refreshed", &[]), Some(2.0));
    }
}
