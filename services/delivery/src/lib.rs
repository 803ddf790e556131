//! The delivery service: one delivery per order (initiation is idempotent by
//! order id), cancellation before pickup, and courier status updates along
//! CREATED → PICKED_UP → IN_TRANSIT → DELIVERED (FAILED from the moving states),
//! each recorded in a status history and published as a `DELIVERY_STATUS_CHANGED` event
//! through delivery's transactional outbox (the `outbox` crate) to its SNS topic.
//!
//! # Layout
//! - [`config`]: `DELIVERY_*` settings and their defaults.
//! - [`app`]: `Application` (bind, serve, the outbox workers), the router and the OpenAPI document.
//! - [`deliveries`]: the endpoints and their queries; each status change enqueues its event.
//! - [`dead_letters`]: staff endpoints for the outbox's dead letters (list, replay, discard).

pub mod app;
pub mod config;
pub mod dead_letters;
pub mod deliveries;

pub use app::{Application, MIGRATOR};
pub use config::Config;
