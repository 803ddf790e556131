//! `/health/live` (the process answers) and `/health/ready` (its database is
//! reachable and every migration this binary carries has been applied).

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use sqlx::{PgPool, migrate::Migrator};
use utoipa::ToSchema;

/// Answer of the health endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthReport {
    /// `ok`, or `unavailable` when a check failed.
    pub status: &'static str,
    /// `ok`, or what is wrong with the database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// `ok`, or which migrations are missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrations: Option<String>,
    /// Further readiness details of the service (e.g. circuit breaker states).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// A service's own readiness check: `(ready, details)`. It must not block.
pub type ReadinessCheck = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

/// OpenAPI description of the health routes, merged into each service's document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(live_doc, ready_doc, openapi_doc))]
pub struct HealthApi;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "The process is alive", body = HealthReport)))]
#[allow(dead_code)]
fn live_doc() {}

/// Readiness: the database is reachable and every migration is applied.
#[utoipa::path(get, path = "/health/ready", tag = "health", responses(
    (status = 200, description = "Ready to serve", body = HealthReport),
    (status = 503, description = "Database unreachable or migrations missing", body = HealthReport)))]
#[allow(dead_code)]
fn ready_doc() {}

/// This OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI document of this service", body = Object)))]
#[allow(dead_code)]
fn openapi_doc() {}

/// The two health routes of a service backed by `pool` and `migrator`.
pub fn router(pool: PgPool, migrator: &'static Migrator) -> Router {
    router_with(pool, migrator, None)
}

/// The health routes with an extra readiness check of the service's own.
pub fn router_with(
    pool: PgPool,
    migrator: &'static Migrator,
    extra: Option<ReadinessCheck>,
) -> Router {
    Router::new()
        .route(
            "/health/live",
            get(|| async {
                Json(HealthReport {
                    status: "ok",
                    database: None,
                    migrations: None,
                    details: None,
                })
            }),
        )
        .route(
            "/health/ready",
            get(move || {
                let pool = pool.clone();
                let extra = extra.clone();
                async move { readiness(&pool, migrator, extra).await }
            }),
        )
}

async fn readiness(pool: &PgPool, migrator: &Migrator, extra: Option<ReadinessCheck>) -> Response {
    let applied = tokio::time::timeout(
        Duration::from_secs(2),
        // sqlx's own bookkeeping table (scripts/sqlx-prepare creates it as sqlx does).
        sqlx::query_scalar!("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(pool),
    )
    .await;
    let (database, migrations) = match applied {
        Err(_) => ("timed out".to_owned(), "unknown".to_owned()),
        Ok(Err(e)) => (crate::db::describe(&e), "unknown".to_owned()),
        Ok(Ok(applied)) => {
            let missing: Vec<String> = migrator
                .iter()
                .filter(|m| !m.migration_type.is_down_migration())
                .filter(|m| !applied.contains(&m.version))
                .map(|m| m.version.to_string())
                .collect();
            let migrations = if missing.is_empty() {
                "ok".to_owned()
            } else {
                format!("missing {}", missing.join(", "))
            };
            ("ok".to_owned(), migrations)
        }
    };
    let (extra_ready, details) = match extra {
        Some(check) => {
            let (ok, details) = check();
            (ok, Some(details))
        }
        None => (true, None),
    };
    let ready = database == "ok" && migrations == "ok" && extra_ready;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(HealthReport {
            status: if ready { "ok" } else { "unavailable" },
            database: Some(database),
            migrations: Some(migrations),
            details,
        }),
    )
        .into_response()
}
