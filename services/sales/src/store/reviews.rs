//! `manual_reviews`: every SQL statement on the table. Reason and status are enums
//! ([`ReviewReason`], [`ReviewStatus`]); the rules of opening and resolving live in
//! `orders::reviews`, the staff queue in `http::reviews`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use serde::Serialize;

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

contracts::text_enum!(ReviewReason);
contracts::text_enum!(ReviewStatus, exact);

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

    /// As stored: the column holds upper case only.
    pub fn exact(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// One manual review of an order.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Review {
    pub id: Uuid,
    pub order_id: Uuid,
    /// Why, e.g. `AVAILABILITY_UNVERIFIED`, `INVALID_STATUS_TRANSITION`.
    pub reason: ReviewReason,
    /// `OPEN`, `APPROVED`, `REJECTED` or `RESOLVED`.
    pub status: ReviewStatus,
    /// What the system knew when it opened the review (short items, statuses…).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// A staff member, `system`, or `customer`.
    pub resolved_by: Option<String>,
    /// What was decided: `APPROVED`, `ORDER_CANCELLED`, `AVAILABILITY_CONFIRMED`.
    pub resolution: Option<String>,
    pub note: Option<String>,
}

/// Opens a review unless one is open for the same order and reason; whether it did.
/// (`'OPEN'` is a literal: the conflict target names the partial unique index
/// `manual_reviews_one_open_per_reason` by its predicate.)
pub async fn open(
    conn: &mut PgConnection,
    order_id: Uuid,
    reason: ReviewReason,
    details: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let opened = sqlx::query!(
        "INSERT INTO manual_reviews (id, order_id, reason, details) VALUES ($1, $2, $3, $4)
         ON CONFLICT (order_id, reason) WHERE status = 'OPEN' DO NOTHING",
        Uuid::now_v7(),
        order_id,
        reason as _,
        details,
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(opened == 1)
}

/// Closes the order's open reviews (all, or only `only`); the ids closed.
#[allow(clippy::too_many_arguments)]
pub async fn close_open(
    conn: &mut PgConnection,
    order_id: Uuid,
    only: Option<Uuid>,
    status: ReviewStatus,
    by: &str,
    resolution: &str,
    note: Option<&str>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "UPDATE manual_reviews SET status = $3, resolved_at = now(), resolved_by = $4,
                resolution = $5, note = $6
         WHERE order_id = $1 AND status = $7 AND ($2::uuid IS NULL OR id = $2)
         RETURNING id",
        order_id,
        only,
        status as _,
        by,
        resolution,
        note,
        ReviewStatus::Open as _,
    )
    .fetch_all(conn)
    .await
}

/// Open reviews of one order.
pub async fn open_count_of(conn: &mut PgConnection, order_id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM manual_reviews WHERE order_id = $1 AND status = $2"#,
        order_id,
        ReviewStatus::Open as _,
    )
    .fetch_one(conn)
    .await
}

/// Number of open reviews.
pub async fn open_count(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM manual_reviews WHERE status = $1"#,
        ReviewStatus::Open as _,
    )
    .fetch_one(conn)
    .await
}

/// Whether review `id` is still open for `reason`.
pub async fn is_open(
    conn: &mut PgConnection,
    id: Uuid,
    reason: ReviewReason,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM manual_reviews WHERE id = $1 AND status = $2
                          AND reason = $3) AS "open!""#,
        id,
        ReviewStatus::Open as _,
        reason as _,
    )
    .fetch_one(conn)
    .await
}

/// An open review given another reason, `details` merged into its own.
pub async fn reclassify(
    conn: &mut PgConnection,
    id: Uuid,
    reason: ReviewReason,
    details: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE manual_reviews SET reason = $2, details = details || $3
         WHERE id = $1 AND status = $4",
        id,
        reason as _,
        details,
        ReviewStatus::Open as _,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The reviews of an order, oldest first.
pub async fn of_order(conn: &mut PgConnection, order_id: Uuid) -> Result<Vec<Review>, sqlx::Error> {
    sqlx::query_as!(
        Review,
        r#"SELECT id, order_id, reason AS "reason: ReviewReason", status AS "status: ReviewStatus",
                  details, created_at, resolved_at, resolved_by, resolution, note
           FROM manual_reviews WHERE order_id = $1 ORDER BY created_at, id"#,
        order_id,
    )
    .fetch_all(conn)
    .await
}

/// A queue entry: the review and a summary of its order.
#[derive(Debug, Clone)]
pub struct EntryRow {
    pub review: Review,
    pub customer_id: String,
    pub order_status: contracts::orders::OrderStatus,
    pub requires_manual_review: bool,
    pub fallback_used: bool,
    pub delivery_id: Option<Uuid>,
    pub version: i32,
    pub order_created_at: DateTime<Utc>,
    pub order_updated_at: DateTime<Utc>,
    pub item_lines: i64,
    pub item_units: i64,
}

/// Reviews in `status` (and of `reason`), oldest first, after the `(created_at, id)`
/// position `after`, at most `limit`.
pub async fn queue(
    pool: &PgPool,
    status: ReviewStatus,
    reason: Option<ReviewReason>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<EntryRow>, sqlx::Error> {
    use contracts::orders::OrderStatus;
    let rows = sqlx::query!(
        r#"SELECT r.id, r.order_id, r.reason AS "reason: ReviewReason", r.status AS "status: ReviewStatus",
                  r.details, r.created_at, r.resolved_at, r.resolved_by, r.resolution, r.note,
                  o.customer_id, o.status AS "order_status: OrderStatus",
                  o.requires_manual_review, o.fallback_used, o.delivery_id, o.version,
                  o.created_at AS order_created_at, o.updated_at AS order_updated_at,
                  i.item_lines AS "item_lines!", i.item_units AS "item_units!"
           FROM manual_reviews r JOIN orders o ON o.id = r.order_id
           CROSS JOIN LATERAL (SELECT count(*) AS item_lines, coalesce(sum(quantity), 0)::bigint AS item_units
                               FROM order_items WHERE order_id = o.id) i
           WHERE r.status = $1 AND ($2::text IS NULL OR r.reason = $2)
             AND ($3::timestamptz IS NULL OR (r.created_at, r.id) > ($3, $4::uuid))
           ORDER BY r.created_at, r.id LIMIT $5"#,
        status as _,
        reason as _,
        after.map(|a| a.0),
        after.map(|a| a.1),
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| EntryRow {
            review: Review {
                id: r.id,
                order_id: r.order_id,
                reason: r.reason,
                status: r.status,
                details: r.details,
                created_at: r.created_at,
                resolved_at: r.resolved_at,
                resolved_by: r.resolved_by,
                resolution: r.resolution,
                note: r.note,
            },
            customer_id: r.customer_id,
            order_status: r.order_status,
            requires_manual_review: r.requires_manual_review,
            fallback_used: r.fallback_used,
            delivery_id: r.delivery_id,
            version: r.version,
            order_created_at: r.order_created_at,
            order_updated_at: r.order_updated_at,
            item_lines: r.item_lines,
            item_units: r.item_units,
        })
        .collect())
}

/// How many reviews of `status` there are per reason, most first.
pub async fn counts_by_reason(
    pool: &PgPool,
    status: ReviewStatus,
) -> Result<Vec<(ReviewReason, i64)>, sqlx::Error> {
    Ok(sqlx::query!(
        r#"SELECT reason AS "reason: ReviewReason", count(*) AS "n!" FROM manual_reviews
           WHERE status = $1 GROUP BY reason ORDER BY count(*) DESC, reason"#,
        status as _,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.reason, r.n))
    .collect())
}
