//! The product service: the catalog, stock on hand, and reservations that hold
//! stock for orders (all items or none, idempotent by order id, expiring after a
//! TTL unless committed).
//!
//! # Layout
//! - [`config`]: `PRODUCT_*` settings and their defaults.
//! - [`app`]: `Application` (bind, serve, workers), the router and the OpenAPI document.
//! - [`catalog`]: products, staff stock updates, the read-only availability check.
//! - [`reservations`]: reserve, read, commit, release; the stock arithmetic lives here.
//! - [`expiry`]: the worker returning expired reservations' stock.
//! - [`order_events`]: consuming sales' order events (inbox, versions, effects).
//! - [`demo_catalog`]: the products a development stack starts with.

pub mod app;
pub mod catalog;
pub mod config;
pub mod demo_catalog;
pub mod expiry;
pub mod order_events;
pub mod reservations;

pub use app::{Application, MIGRATOR};
pub use config::Config;
