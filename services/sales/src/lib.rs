//! The sales service: customers place and follow orders here. Placing an order
//! reserves stock at product (or, when product is unavailable, accepts the order
//! flagged for manual review), writes the order, its items, its status history
//! and its outbox events in one transaction, then commits the reservation and
//! initiates the delivery (retried in the background while delivery is down).
//! Each dependency sits behind its own circuit breaker.
//!
//! # Layout
//!
//! Layers, top to bottom; a module uses only the layers below it:
//!
//! 1. [`app`]: the composition root, `Application` (bind, serve, spawn the workers).
//! 2. [`http`]: the only place that sees `AppState`. One router per feature
//!    (`http::orders`, `http::cancel`, `http::reviews`, `http::sagas`,
//!    `http::reliability`), the staff console (`http::console`), the OpenAPI document.
//! 3. [`placement`]: order placement as a persisted saga (reserve → record → deliver →
//!    record the delivery), its steps and their dependencies.
//!    [`workers`]: the background jobs (delivery retry, reconciliation, availability
//!    re-check, reservation keeper, alert checker, delivery events consumer, saga
//!    recovery), each with a narrow dependency struct.
//! 4. [`orders`]: the order's domain operations: the status state machine, following
//!    delivery's statuses, durable delivery initiation, manual reviews, the compensations
//!    and cancelling. [`reliability`]: the reliability figures and open alert episodes.
//!    [`staff`]: staff accounts and verifying their credential.
//! 5. [`store`]: each table's SQL in one module (`OrderLock`: writers lock the order
//!    first). [`peers`]: product and delivery clients behind their breakers. [`cache`]:
//!    the order cache in Redis. [`rate_limit`]: per-client limits. [`db`]: the pool behind
//!    its breaker. [`outbox`]: writing events in the caller's transaction.
//! 6. [`config`]: `SALES_*` settings and their defaults.

pub mod app;
pub mod cache;
pub mod config;
pub mod db;
pub mod http;
pub mod orders;
pub mod outbox;
pub mod peers;
pub mod placement;
pub mod rate_limit;
pub mod reliability;
pub mod staff;
pub mod store;
pub mod workers;

pub use app::Application;
pub use config::Config;
pub use db::MIGRATOR;
