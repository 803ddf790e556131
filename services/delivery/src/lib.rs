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
//! - The staff endpoints of the dead letters are the `outbox` crate's
//!   (`outbox::dead_letters::http`), mounted by [`app`].

pub mod app;
pub mod config;
pub mod deliveries;

pub use app::{Application, MIGRATOR};
pub use config::Config;
