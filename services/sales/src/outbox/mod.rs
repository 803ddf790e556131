//! The transactional outbox: events are written inside the caller's transaction
//! (so an event exists exactly when the change it describes was committed), then
//! relayed to SNS.
//!
//! # Layout
//! - [`enqueue`]: append an event in the caller's transaction.
//! - [`relay`]: the relay to SNS (claim, publish, mark), woken by LISTEN/NOTIFY.
//! - [`owned`]: the writer's own fast path: a row's notification carries it to the
//!   process that wrote it, which publishes it and marks it SENT in batches.
//! - [`cleanup`]: retention of SENT rows.
//! - [`admin`]: staff endpoints for dead letters (list, replay, discard).

pub mod admin;
pub mod cleanup;
pub mod owned;
pub mod relay;

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

/// Appends one PENDING event; returns its id (the event id consumers dedup on).
/// The current span's trace context is stored with it, for the relay to continue. When
/// this process runs a relay, the row names it as its owner ([`owned::owner`]): the
/// relay publishes it from its notification, without reading it.
pub async fn enqueue(
    conn: &mut PgConnection,
    aggregate_id: Uuid,
    aggregate_version: i32,
    event_type: &str,
    payload: &impl Serialize,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    let payload = serde_json::to_value(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let trace = sqlx::types::Json(platform::trace_context::current_map());
    sqlx::query(
        "INSERT INTO outbox_events (id, aggregate_type, aggregate_id, aggregate_version, event_type, payload, trace, owner)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(ORDER)
    .bind(aggregate_id)
    .bind(aggregate_version)
    .bind(event_type)
    .bind(payload)
    .bind(trace)
    .bind(owned::owner())
    .execute(conn)
    .await?;
    Ok(id)
}
