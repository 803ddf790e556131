//! The order's domain operations, above the store and below placement, the workers and
//! HTTP: the status state machine ([`status`]), following delivery's statuses
//! ([`following`]), durable delivery initiation ([`delivery`]), manual reviews
//! ([`reviews`]), the compensations ([`compensations`]) and cancelling ([`cancellation`]),
//! and the Idempotency-Key ([`idempotency`]).

pub mod cancellation;
pub mod compensations;
pub mod delivery;
pub mod following;
pub mod idempotency;
pub mod reviews;
pub mod status;

/// The order saga's step names (its definition is `placement`; the compensations
/// name the steps they undo).
pub mod saga_steps {
    pub const RESERVE_INVENTORY: &str = "reserve_inventory";
    pub const RECORD_ORDER: &str = "record_order";
    pub const INITIATE_DELIVERY: &str = "initiate_delivery";
    pub const RECORD_DELIVERY: &str = "record_delivery";
}
