//! `delivery_retries`, one row per order whose delivery sales initiates: every SQL
//! statement on the table. The rules of when to try again live in
//! `orders::delivery`; its worker is `workers::delivery_retry`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, types::Json};
use uuid::Uuid;

use super::OrderLock;

/// The status of a retry row.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RetryStatus {
    /// Due at `next_attempt_at`.
    Pending,
    /// Waiting for a stock check or a staff decision (a fallback order's).
    Held,
    /// Initiated, or no longer needed.
    Done,
    /// Attempts or age ran out: a review is open.
    Exhausted,
}

impl RetryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Held => "HELD",
            Self::Done => "DONE",
            Self::Exhausted => "EXHAUSTED",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Held, Self::Done, Self::Exhausted]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}
contracts::text_enum!(RetryStatus);

/// A claimed row as read: the order, attempts so far, created, the order's trace context.
#[derive(Debug)]
pub struct Claimed {
    pub order_id: Uuid,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub trace: Json<BTreeMap<String, String>>,
}

/// The row of a new order (in the order's transaction), PENDING or HELD; one per order.
pub async fn insert(
    conn: &mut PgConnection,
    order_id: Uuid,
    first_attempt_at: DateTime<Utc>,
    trace: &BTreeMap<String, String>,
    status: RetryStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO delivery_retries (order_id, next_attempt_at, trace, status) VALUES ($1, $2, $3, $4)
         ON CONFLICT (order_id) DO NOTHING",
        order_id,
        first_attempt_at,
        Json(trace) as _,
        status as _,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A HELD row becomes PENDING, due at `now`; whether it was held.
pub async fn release_hold(
    conn: &mut PgConnection,
    order_id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let released = sqlx::query!(
        "UPDATE delivery_retries SET status = $3, next_attempt_at = $2, updated_at = now()
         WHERE order_id = $1 AND status = $4",
        order_id,
        now,
        RetryStatus::Pending as _,
        RetryStatus::Held as _,
    )
    .execute(conn)
    .await?
    .rows_affected();
    Ok(released == 1)
}

/// An EXHAUSTED row asked for again with fresh limits (a staff approval).
pub async fn restart_exhausted(lock: &mut OrderLock<'_>) -> Result<(), sqlx::Error> {
    let order_id = lock.id();
    sqlx::query!(
        "UPDATE delivery_retries SET status = $2, attempts = 0, next_attempt_at = now(),
                created_at = now(), updated_at = now()
         WHERE order_id = $1 AND status = $3",
        order_id,
        RetryStatus::Pending as _,
        RetryStatus::Exhausted as _,
    )
    .execute(lock.conn())
    .await?;
    Ok(())
}

/// A PENDING row looked at again at `at`, nothing counted (the breaker was open).
pub async fn defer(pool: &PgPool, order_id: Uuid, at: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE delivery_retries SET next_attempt_at = $2, updated_at = now() WHERE order_id = $1 AND status = $3",
        order_id,
        at,
        RetryStatus::Pending as _,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A failed attempt of a PENDING row: `attempts`, the error, the next try at `next`.
pub async fn reschedule(
    lock: &mut OrderLock<'_>,
    attempts: i32,
    error: &str,
    next: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let order_id = lock.id();
    sqlx::query!(
        "UPDATE delivery_retries SET attempts = $2, last_error = $3, next_attempt_at = $4, updated_at = now()
         WHERE order_id = $1 AND status = $5",
        order_id,
        attempts,
        error,
        next,
        RetryStatus::Pending as _,
    )
    .execute(lock.conn())
    .await?;
    Ok(())
}

/// The last failed attempt: the row EXHAUSTED.
pub async fn exhaust(
    lock: &mut OrderLock<'_>,
    attempts: i32,
    error: &str,
) -> Result<(), sqlx::Error> {
    let order_id = lock.id();
    sqlx::query!(
        "UPDATE delivery_retries SET status = $4, attempts = $2, last_error = $3, updated_at = now()
         WHERE order_id = $1",
        order_id,
        attempts,
        error,
        RetryStatus::Exhausted as _,
    )
    .execute(lock.conn())
    .await?;
    Ok(())
}

/// The row DONE: its delivery was initiated, or its order needs none any more.
pub async fn done(
    conn: &mut PgConnection,
    order_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE delivery_retries SET status = $2, updated_at = $3 WHERE order_id = $1",
        order_id,
        RetryStatus::Done as _,
        now,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A cancelled order's PENDING or HELD row DONE: no delivery is initiated for it.
pub async fn stop(lock: &mut OrderLock<'_>) -> Result<(), sqlx::Error> {
    let order_id = lock.id();
    sqlx::query!(
        "UPDATE delivery_retries SET status = $2, last_error = 'order cancelled', updated_at = now()
         WHERE order_id = $1 AND status IN ($3, $4)",
        order_id,
        RetryStatus::Done as _,
        RetryStatus::Pending as _,
        RetryStatus::Held as _,
    )
    .execute(lock.conn())
    .await?;
    Ok(())
}

/// Claims up to `batch` PENDING rows due at `now`, pushing them to `lease_until`.
pub async fn claim_due(
    pool: &PgPool,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    batch: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as!(
        Claimed,
        r#"UPDATE delivery_retries SET next_attempt_at = $2, updated_at = now()
           WHERE order_id IN (
               SELECT order_id FROM delivery_retries
               WHERE status = $4 AND next_attempt_at <= $1
               ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
           RETURNING order_id, attempts, created_at, trace AS "trace: Json<BTreeMap<String, String>>""#,
        now,
        lease_until,
        batch,
        RetryStatus::Pending as _,
    )
    .fetch_all(pool)
    .await
}

/// Pending (not yet initiated) deliveries.
pub async fn pending_count(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM delivery_retries WHERE status = $1"#,
        RetryStatus::Pending as _,
    )
    .fetch_one(conn)
    .await
}

/// The order's delivery initiation retries.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DeliveryRetry {
    /// `PENDING`, `HELD`, `DONE` or `EXHAUSTED`.
    pub status: RetryStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The row of order `order_id`, if it has one.
pub async fn of_order(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<DeliveryRetry>, sqlx::Error> {
    sqlx::query_as!(
        DeliveryRetry,
        r#"SELECT status AS "status: RetryStatus", attempts, next_attempt_at, last_error, created_at, updated_at
           FROM delivery_retries WHERE order_id = $1"#,
        order_id,
    )
    .fetch_optional(conn)
    .await
}
