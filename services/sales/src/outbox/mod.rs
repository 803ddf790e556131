//! Sales' use of the transactional outbox (the `outbox` crate): order events are written
//! inside the caller's transaction (so an event exists exactly when the change it describes
//! was committed), then relayed to sales' SNS topic.
//!
//! # Layout
//! - [`enqueue`]: append an order event in the caller's transaction.
//! - [`events`]: the event types sales emits.
//! - [`relay`], [`owned`], [`cleanup`]: the crate's relay (and its fast path) and retention, re-exported.

pub use ::outbox::{cleanup, owned, relay};

use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// Aggregate type of order events.
pub const ORDER: &str = "order";

/// Event types sales emits.
pub mod events {
    pub const ORDER_CREATED: &str = "ORDER_CREATED";
    pub const DELIVERY_INITIATED: &str = "DELIVERY_INITIATED";
    pub const DELIVERY_INITIATION_FAILED: &str = "DELIVERY_INITIATION_FAILED";
    pub const AVAILABILITY_CHECK_FALLBACK_USED: &str = "AVAILABILITY_CHECK_FALLBACK_USED";
    /// A status transition other than cancellation (payload: the full order).
    pub const ORDER_STATUS_CHANGED: &str = "ORDER_STATUS_CHANGED";
    /// The order was cancelled (payload: the full order); product releases the reservation.
    pub const ORDER_CANCELLED: &str = "ORDER_CANCELLED";
    /// The order now waits for a person (payload: the full order).
    pub const ORDER_FLAGGED_FOR_REVIEW: &str = "ORDER_FLAGGED_FOR_REVIEW";
    /// Staff approved the order's open reviews (payload: the full order).
    pub const ORDER_REVIEW_APPROVED: &str = "ORDER_REVIEW_APPROVED";
    /// Staff rejected the open reviews of an order already cancelled (payload: the full order).
    pub const ORDER_REVIEW_REJECTED: &str = "ORDER_REVIEW_REJECTED";
    /// The availability re-check reserved an order accepted on the fallback (payload: the full order).
    pub const AVAILABILITY_CONFIRMED: &str = "AVAILABILITY_CONFIRMED";
}

/// Appends one PENDING order event ([`ORDER`]) in the caller's transaction; returns its id
/// (the event id consumers dedup on). See [`::outbox::enqueue`].
pub async fn enqueue(
    conn: &mut PgConnection,
    aggregate_id: Uuid,
    aggregate_version: i32,
    event_type: &str,
    payload: &impl Serialize,
) -> Result<Uuid, sqlx::Error> {
    ::outbox::enqueue(
        conn,
        ORDER,
        aggregate_id,
        aggregate_version,
        event_type,
        payload,
    )
    .await
}
