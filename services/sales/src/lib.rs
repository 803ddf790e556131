//! The sales service: customers place and follow orders here. Placing an order
//! reserves stock at product, writes the order, its items, its status history and
//! an `ORDER_CREATED` outbox event in one transaction, then commits the
//! reservation and initiates the delivery at delivery.
//!
//! # Layout
//! - [`config`]: `SALES_*` settings and their defaults.
//! - [`app`]: `Application` (bind, serve), the router and the OpenAPI document.
//! - [`peers`]: HTTP clients of product and delivery, with outcomes classified.
//! - [`orders`]: the order endpoints: placing (the write path), reading, listing.
//! - [`outbox`]: writing events in the caller's transaction.

pub mod app;
pub mod config;
pub mod orders;
pub mod outbox;
pub mod peers;

pub use app::{Application, MIGRATOR};
pub use config::Config;
