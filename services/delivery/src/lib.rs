//! The delivery service: one delivery per order (initiation is idempotent by
//! order id), cancellation before pickup, and courier status updates along
//! CREATED → PICKED_UP → IN_TRANSIT → DELIVERED (FAILED from the moving states),
//! each recorded in a status history.
//!
//! # Layout
//! - [`config`]: `DELIVERY_*` settings and their defaults.
//! - [`app`]: `Application` (bind, serve), the router and the OpenAPI document.
//! - [`deliveries`]: the endpoints and their queries.

pub mod app;
pub mod config;
pub mod deliveries;

pub use app::{Application, MIGRATOR};
pub use config::Config;
