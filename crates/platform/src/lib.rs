//! What every service of the system stands on: typed configuration from the
//! environment, telemetry, the HTTP server with its error shape, health checks,
//! the database pool with migrations, staff authentication and graceful shutdown.
//!
//! # Layout
//! - [`config`]: reading typed settings from environment variables (errors name the variable).
//! - [`telemetry`]: logs (JSON when not on a terminal, with `trace_id`) and OTLP trace export.
//! - [`trace_context`]: W3C trace context in and out of HTTP headers and message attributes.
//! - [`shutdown`]: ctrl-c / SIGTERM into a `CancellationToken`.
//! - [`extract`]: `Json`, `Path` and `Query` extractors whose rejections are problem+json.
//! - [`server`]: the common middleware stack, 404/405 as problems, serving until cancelled.
//! - [`openapi`]: finishing a service's OpenAPI document (problem+json, the stack's statuses).
//! - [`health`]: `/health/live` and `/health/ready` (database reachable, migrations applied).
//! - [`metrics`]: the Prometheus recorder, `GET /metrics` and the HTTP request metrics middleware.
//! - [`db`]: pool set-up, create-if-missing, migrations, and mapping database errors to 503.
//! - [`error`]: `ApiError`, the handlers' error (problem, or database → 503/500).
//! - [`worker`]: the loop around a background worker's single step.
//! - [`service`]: the bootstrap of every service: its binary's `main`, and binding, serving
//!   and stopping with its workers.
//! - [`auth`]: the staff credential (`Authorization: Bearer …`).

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod extract;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;
pub mod worker;

pub use contracts::{FieldError, Problem};
pub use error::{ApiError, ApiResult, ensure_valid};
