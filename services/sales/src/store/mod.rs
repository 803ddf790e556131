//! The store layer: each sales table has one owning module here, holding all of its SQL
//! (compile-checked: `sqlx::query!`, `query_as!`, `query_scalar!`). Statuses and reasons
//! travel as enums (`contracts::text_enum!`: one string per variant, an unknown value a decode error). Writers of an order take its [`OrderLock`] first.
//!
//! Above it, the domain operations (`orders`) decide; this layer only reads and
//! writes. It uses nothing of sales but `outbox` (the events written with a change).

pub mod delivery_retries;
pub mod idempotency;
pub mod inbox;
pub mod locks;
pub mod orders;
pub mod reconciliation_runs;
pub mod reviews;
pub mod sagas;
pub mod staff;

pub use orders::{Hold, OrderLock, lock};
