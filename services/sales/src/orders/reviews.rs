//! Manual reviews: orders waiting for a person, with a reason code. This module
//! opens, flags and resolves them in the caller's transaction; the staff queue
//! over HTTP is `http::reviews`. Reason and status are enums end to end (text
//! columns, `contracts::text_enum!`).

use chrono::Utc;
use contracts::orders::OrderStatus;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use crate::store::reviews::{ReviewReason, ReviewStatus};
use crate::{
    cache::OrderCache,
    orders::compensations::CancelError,
    outbox::events,
    store::{self, Hold, OrderLock},
};

/// Opens a review of the locked order for `reason` (unless one is open for the same
/// reason: [`store::reviews::open`]), and flags the order (`requires_manual_review`) if it was not:
/// then the version is bumped, history written and `ORDER_FLAGGED_FOR_REVIEW`
/// emitted, so the customer's view and the events agree. Returns whether a
/// review was opened.
pub async fn open_flagged(
    lock: &mut OrderLock<'_>,
    reason: ReviewReason,
    details: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let order_id = lock.id();
    let opened = store::reviews::open(lock.conn(), order_id, reason, details).await?;
    if !lock.row.requires_manual_review {
        lock.record_change(
            Some(true),
            Hold::Keep,
            &format!("flagged for manual review: {}", reason.as_str()),
            events::ORDER_FLAGGED_FOR_REVIEW,
        )
        .await?;
    }
    Ok(opened)
}

/// How a set of open reviews is closed.
#[derive(Debug, Clone)]
pub struct Resolution<'a> {
    /// APPROVED, REJECTED or RESOLVED.
    pub status: ReviewStatus,
    /// Who: a staff member, `system`, or `customer`.
    pub by: &'a str,
    /// What was decided, e.g. `APPROVED`, `ORDER_CANCELLED`, `AVAILABILITY_CONFIRMED`.
    pub resolution: &'a str,
    pub note: Option<&'a str>,
}

/// Closes the order's open reviews (all of them, or only `only`) as `how` says,
/// in the caller's transaction; returns the ids closed (none: nothing was open).
pub async fn resolve_open(
    conn: &mut PgConnection,
    order_id: Uuid,
    only: Option<Uuid>,
    how: &Resolution<'_>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    store::reviews::close_open(
        conn,
        order_id,
        only,
        how.status,
        how.by,
        how.resolution,
        how.note,
    )
    .await
}

/// Approves order `id`'s open reviews as `actor` (an authenticated staff member) with a
/// checked `note`, in one transaction: the reviews APPROVED, the flag and any delivery hold
/// cleared, a held delivery released (and exhausted retries restarted with fresh limits),
/// history and `ORDER_REVIEW_APPROVED`; returns how many reviews it closed. Staff
/// rejection is the other decision: [`crate::orders::cancellation`] with
/// `OpenReviews::Reject`.
pub async fn approve(
    pool: &PgPool,
    cache: &OrderCache,
    id: Uuid,
    actor: &str,
    note: &str,
) -> Result<usize, CancelError> {
    // Dropping `tx` without commit (any early return) rolls back.
    let mut tx = pool.begin().await?;
    let mut lock = store::lock(&mut tx, id)
        .await?
        .ok_or(CancelError::NotFound(id))?;
    let how = Resolution {
        status: ReviewStatus::Approved,
        by: actor,
        resolution: "APPROVED",
        note: Some(note),
    };
    let closed = resolve_open(lock.conn(), id, None, &how).await?;
    if closed.is_empty() {
        return Err(CancelError::NoOpenReview(id));
    }
    if lock.row.status == OrderStatus::PendingShipment && lock.row.delivery_id.is_none() {
        // A held delivery (a fallback order) may start now.
        store::delivery_retries::release_hold(lock.conn(), id, Utc::now()).await?;
        // Retries gave up: approving asks for them again, with fresh limits.
        store::delivery_retries::restart_exhausted(&mut lock).await?;
    }
    let order = lock
        .record_change(
            Some(false),
            Hold::Clear,
            &format!("review approved (by {actor}): {note}"),
            events::ORDER_REVIEW_APPROVED,
        )
        .await?;
    tx.commit().await?;
    cache.updated(&order).await;
    Ok(closed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_statuses_round_trip_through_text() {
        for r in ReviewReason::ALL {
            assert_eq!(ReviewReason::parse(r.as_str()), Some(r));
            assert_eq!(
                serde_json::to_value(r).expect("serializes"),
                serde_json::json!(r.as_str())
            );
        }
        assert_eq!(ReviewStatus::parse("open"), Some(ReviewStatus::Open));
        assert_eq!(
            ReviewStatus::parse("REJECTED"),
            Some(ReviewStatus::Rejected)
        );
        assert_eq!(ReviewStatus::parse("closed"), None);
    }
}
