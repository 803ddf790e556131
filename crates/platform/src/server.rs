//! The HTTP server every service runs: common middleware, problem+json for every
//! framework-made error (404, 405, 408, 413, panics), and serving until cancelled.

use std::{any::Any, time::Duration};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use contracts::{Problem, problem::PROBLEM_JSON};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::{
    catch_panic::CatchPanicLayer,
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::{DefaultOnResponse, TraceLayer},
};
use tracing::Level;

use crate::config::ServerConfig;

/// Wraps a service's complete router with the common stack. Apply last, after
/// every route (including health and OpenAPI) has been merged in.
pub fn with_common_layers(router: Router, config: &ServerConfig) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(RequestBodyLimitLayer::new(config.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            config.request_timeout,
        ))
        .layer(axum::middleware::map_response(problem_for_bare_errors))
        .layer(CatchPanicLayer::custom(panic_response))
        // Outside timeout, panic and problem mapping: records the status the client gets.
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// The span of one request: a child of the caller's `traceparent` when there is
/// one (so a trace continues across services), named `METHOD /route/{template}`.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let method = request.method();
    let name = match request.extensions().get::<axum::extract::MatchedPath>() {
        Some(route) => format!("{method} {}", route.as_str()),
        None => method.to_string(),
    };
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        %method,
        uri = %request.uri(),
        version = ?request.version(),
        request_id,
        otel.name = name,
        otel.kind = "server",
    );
    crate::trace_context::set_parent(&span, crate::trace_context::from_headers(request.headers()));
    span
}

/// Serves `/openapi.json`.
pub fn openapi_router(doc: utoipa::openapi::OpenApi) -> Router {
    let json = doc.to_pretty_json().unwrap_or_else(|_| "{}".into());
    Router::new().route(
        "/openapi.json",
        get(move || {
            let json = json.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], json) }
        }),
    )
}

async fn not_found() -> Problem {
    Problem::no_such_route()
}

async fn method_not_allowed() -> Problem {
    Problem::from_status(StatusCode::METHOD_NOT_ALLOWED)
}

/// Error responses made by the framework or middleware come without a JSON body:
/// give them the problem shape, keeping their status and headers.
async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    // A page written for people (the sales console's) is answered as it is.
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_json || is_html {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let mut problem = Problem::from_status(status);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        problem = problem.with_detail("the request took too long; try again");
    }
    let fresh = problem.into_response();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    let (_, body) = fresh.into_parts();
    Response::from_parts(parts, body)
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = message, "request handler panicked");
    Problem::internal().into_response()
}

/// Serves `router` on `listener` until `token` is cancelled, then lets in-flight
/// requests finish (bounded by `grace`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    token: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    let shutdown = token.clone();
    // Handlers and middleware may extract `ConnectInfo<SocketAddr>` (sales' rate limits).
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result,
        () = async {
            token.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("graceful shutdown took longer than the grace period; stopping");
            Ok(())
        }
    }
}

/// Adds the `staff` bearer security scheme to an OpenAPI document.
pub struct StaffSecurity;

impl utoipa::Modify for StaffSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "staff",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The service's staff token"))
                    .build(),
            ),
        );
    }
}

/// Adds the `service` bearer security scheme: the internal endpoints that only
/// the system's services call (a staff token passes there too).
pub struct ServiceSecurity;

impl utoipa::Modify for ServiceSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "service",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A service token of this service ({P}SERVICE_TOKEN); sales holds one",
                    ))
                    .build(),
            ),
        );
    }
}
