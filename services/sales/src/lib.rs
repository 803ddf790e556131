//! The sales service: customers place and follow orders here. Placing an order
//! reserves stock at product (or, when product is unavailable, accepts the order
//! flagged for manual review), writes the order, its items, its status history
//! and its outbox events in one transaction, then commits the reservation and
//! initiates the delivery (retried in the background while delivery is down).
//! Each dependency sits behind its own circuit breaker.
//!
//! # Layout
//! - [`config`]: `SALES_*` settings and their defaults.
//! - [`app`]: `Application` (bind, serve), the router and the OpenAPI document.
//! - [`peers`]: HTTP clients of product and delivery behind their breakers.
//! - [`db`]: the database behind its breaker (503 + `Retry-After` when open).
//! - [`cache`]: Redis (optional): the order cache of `GET /orders/{id}` and per-client rate limits.
//! - [`order_saga`]: order placement as a persisted saga (reserve → record → deliver), its
//!   recovery worker and `GET /sagas/{id}`.
//! - [`orders`]: the order endpoints: placing (the write path), reading, listing.
//! - [`orders::status`]: the order status state machine; every status change goes through it.
//! - [`cancellation`]: cancelling an order before shipment (customer and staff).
//! - [`compensations`]: the order's compensations, one implementation for the saga and
//!   cancellations.
//! - [`delivery_retry`]: durable delivery initiation and its background worker.
//! - [`delivery_status`]: following delivery's statuses (one implementation for its
//!   `DELIVERY_STATUS_CHANGED` events and reconciliation), and the events' SQS consumer.
//! - [`reconciliation`]: the safety net comparing orders with delivery's status, and its run records.
//! - [`availability_recheck`]: reserving fallback orders' items once product answers again.
//! - [`reviews`]: opening, flagging and resolving manual reviews.
//! - [`review`]: the staff review queue (list, detail, approve, reject).
//! - [`reservation_keeper`]: renews reservations while their `ORDER_CREATED` waits for the broker.
//! - [`reliability`]: `/health/reliability`, the readiness details and the database-derived gauges.
//! - [`alerts`]: the reliability alert checker (episodes logged, gauged and POSTed to a webhook).
//! - [`outbox`]: writing order events in the caller's transaction (the `outbox` crate).
//! - [`staff`]: staff accounts (one per person, argon2id-hashed secrets), the operator
//!   command `sales staff add|list|revoke`, and verifying the staff routes' credential.
//! - [`console`]: the staff console at `/console` (server-rendered HTML, sessions, CSRF).

pub mod alerts;
pub mod app;
pub mod availability_recheck;
pub mod cache;
pub mod cancellation;
pub mod compensations;
pub mod config;
pub mod console;
pub mod db;
pub mod delivery_retry;
pub mod delivery_status;
pub mod order_saga;
pub mod orders;
pub mod outbox;
pub mod peers;
pub mod reconciliation;
pub mod reliability;
pub mod reservation_keeper;
pub mod review;
pub mod reviews;
pub mod staff;

pub use app::{Application, MIGRATOR};
pub use config::Config;
