//! Manual reviews: orders waiting for a person, with a reason code. This module
//! opens, flags and resolves them in the caller's transaction; the staff queue
//! over HTTP is `http::reviews`. Reason and status are enums end to end (text
//! columns, [`crate::store::text`]).

use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    outbox::events,
    store::{self, Hold, OrderLock, text::text_column},
};

/// Why an order waits for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReviewReason {
    /// Accepted while product could not be asked.
    AvailabilityUnverified,
    /// Accepted on the fallback, and product later had not enough stock.
    OutOfStockAfterFallback,
    /// Accepted on the fallback for a product that does not exist (found by the re-check).
    UnknownProduct,
    /// Its reservation lapsed while `ORDER_CREATED` waited for the broker, and the stock is gone.
    ReservationLapsed,
    /// Delivery reported a status the order cannot move to.
    InvalidStatusTransition,
    /// Delivery could not be initiated within the retry limits.
    DeliveryRetriesExhausted,
    /// The courier reported the delivery failed.
    DeliveryFailed,
    /// An order pending shipment for too long.
    StalePendingShipment,
}

impl ReviewReason {
    pub const ALL: [Self; 8] = [
        Self::AvailabilityUnverified,
        Self::OutOfStockAfterFallback,
        Self::UnknownProduct,
        Self::ReservationLapsed,
        Self::InvalidStatusTransition,
        Self::DeliveryRetriesExhausted,
        Self::DeliveryFailed,
        Self::StalePendingShipment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AvailabilityUnverified => "AVAILABILITY_UNVERIFIED",
            Self::OutOfStockAfterFallback => "OUT_OF_STOCK_AFTER_FALLBACK",
            Self::UnknownProduct => "UNKNOWN_PRODUCT",
            Self::ReservationLapsed => "RESERVATION_LAPSED",
            Self::InvalidStatusTransition => "INVALID_STATUS_TRANSITION",
            Self::DeliveryRetriesExhausted => "DELIVERY_RETRIES_EXHAUSTED",
            Self::DeliveryFailed => "DELIVERY_FAILED",
            Self::StalePendingShipment => "STALE_PENDING_SHIPMENT",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Opens a review of `order_id` for `reason` in the caller's transaction, unless
/// one is already open for the same reason. Returns whether one was opened.
pub async fn open(
    conn: &mut PgConnection,
    order_id: Uuid,
    reason: ReviewReason,
    details: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    store::reviews::open(conn, order_id, reason, details).await
}

/// [`open`] for the locked order, and flags it (`requires_manual_review`) if it was not:
/// then the version is bumped, history written and `ORDER_FLAGGED_FOR_REVIEW`
/// emitted, so the customer's view and the events agree. Returns whether a
/// review was opened.
pub async fn open_flagged(
    lock: &mut OrderLock<'_>,
    reason: ReviewReason,
    details: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let order_id = lock.id();
    let opened = open(lock.conn(), order_id, reason, details).await?;
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

/// Lifecycle of a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReviewStatus {
    Open,
    /// Staff approved: the order proceeds.
    Approved,
    /// Staff rejected: the order was cancelled.
    Rejected,
    /// Settled otherwise (by the system, or by the order's cancellation).
    Resolved,
}

text_column!(ReviewReason);
text_column!(ReviewStatus);

impl crate::store::text::TextEnum for ReviewReason {
    const WHAT: &'static str = "review reason";
    fn as_str(self) -> &'static str {
        ReviewReason::as_str(self)
    }
    fn parse(s: &str) -> Option<Self> {
        ReviewReason::parse(s)
    }
}

impl crate::store::text::TextEnum for ReviewStatus {
    const WHAT: &'static str = "review status";
    fn as_str(self) -> &'static str {
        ReviewStatus::as_str(self)
    }
    // Exact: the column holds upper case only.
    fn parse(s: &str) -> Option<Self> {
        ReviewStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl ReviewStatus {
    pub const ALL: [Self; 4] = [Self::Open, Self::Approved, Self::Rejected, Self::Resolved];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "OPEN",
            Self::Approved => "APPROVED",
            Self::Rejected => "REJECTED",
            Self::Resolved => "RESOLVED",
        }
    }

    /// Parses `OPEN` or `open`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
    }
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

/// Open reviews of one order.
pub async fn open_count_of(conn: &mut PgConnection, order_id: Uuid) -> Result<i64, sqlx::Error> {
    store::reviews::open_count_of(conn, order_id).await
}

/// Number of open reviews.
pub async fn open_count(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    store::reviews::open_count(conn).await
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
