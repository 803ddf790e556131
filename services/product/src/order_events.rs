//! Consuming sales' order events from SQS, idempotently. Each event is applied in
//! one transaction with its inbox row (keyed by `event_id`): a redelivered event
//! finds its row and changes nothing, and an event not newer than the last
//! applied version of its order is acknowledged and ignored.
//!
//! - `ORDER_CREATED` commits the order's reservation. A reservation that expired
//!   meanwhile (the broker was down longer than the TTL) is taken again if stock
//!   allows, else noted as `EXPIRED_OUT_OF_STOCK`; so is a released one (an
//!   abandoned attempt's compensation released it while a retry with the same
//!   Idempotency-Key, hence the same order id, recorded the order; a cancelled
//!   order's `ORDER_CANCELLED`, newer, restocks what is taken). An order accepted
//!   without a reservation (product was down) is noted as `NO_RESERVATION`. Sales'
//!   re-check and reconciliation read those notes (never a silent oversell).
//! - `ORDER_CANCELLED` releases the reservation (restocking committed units).

use chrono::{DateTime, Utc};
use contracts::{
    catalog::{INSUFFICIENT_STOCK, ReservationStatus},
    orders::Order,
};
use messaging::{Envelope, Handler, HandlerError};
use platform::ApiError;
use sqlx::{PgConnection, PgPool, types::Json as Jsonb};
use uuid::Uuid;

use crate::reservations::{
    CancelRelease, Settle, find, order_cancelled, reactivate, release_for_cancellation, settle_in,
};

/// Event types this consumer applies (its queue's filter policy).
pub const CONSUMED: [&str; 2] = ["ORDER_CREATED", "ORDER_CANCELLED"];

/// What applying an event came to (stored as the inbox row's outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// This event_id was applied before.
    Duplicate,
    /// An event of a newer order version was applied before.
    Stale,
    Committed,
    AlreadyCommitted,
    /// The reservation had expired; stock allowed taking it again, committed.
    Retaken,
    /// The reservation had expired and stock ran out: noted for sales.
    ExpiredOutOfStock,
    /// The order was accepted without a reservation: noted for the re-check.
    NoReservation,
    Released,
    /// Nothing to do (e.g. released before the event came, or an unknown type).
    Ignored,
}

impl Applied {
    fn as_str(self) -> &'static str {
        match self {
            Self::Duplicate => "DUPLICATE",
            Self::Stale => "STALE",
            Self::Committed => "COMMITTED",
            Self::AlreadyCommitted => "ALREADY_COMMITTED",
            Self::Retaken => "RETAKEN",
            Self::ExpiredOutOfStock => "EXPIRED_OUT_OF_STOCK",
            Self::NoReservation => "NO_RESERVATION",
            Self::Released => "RELEASED",
            Self::Ignored => "IGNORED",
        }
    }
}

fn db(e: ApiError) -> sqlx::Error {
    match e {
        ApiError::Database(e) => e,
        ApiError::Problem(p) => sqlx::Error::Protocol(p.to_string()),
    }
}

/// Applies one event, exactly once per `event_id`.
pub async fn apply(
    pool: &PgPool,
    event: &Envelope,
    now: DateTime<Utc>,
) -> Result<Applied, sqlx::Error> {
    // Dropping `tx` without commit (any early return) rolls back.
    let mut tx = pool.begin().await?;
    let fresh = sqlx::query!(
        "INSERT INTO inbox (event_id, event_type, aggregate_id, aggregate_version, outcome)
         VALUES ($1, $2, $3, $4, 'APPLYING') ON CONFLICT (event_id) DO NOTHING",
        event.event_id,
        event.event_type,
        event.aggregate_id,
        event.aggregate_version,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if fresh == 0 {
        return Ok(Applied::Duplicate);
    }
    sqlx::query!(
        "INSERT INTO order_versions (order_id, last_version) VALUES ($1, 0) ON CONFLICT DO NOTHING",
        event.aggregate_id,
    )
    .execute(&mut *tx)
    .await?;
    let last = sqlx::query_scalar!(
        "SELECT last_version FROM order_versions WHERE order_id = $1 FOR UPDATE",
        event.aggregate_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    let applied = if event.aggregate_version <= last {
        Applied::Stale
    } else {
        let applied = match event.event_type.as_str() {
            "ORDER_CREATED" => on_created(&mut tx, event, now).await?,
            "ORDER_CANCELLED" => on_cancelled(&mut tx, event.aggregate_id, now).await?,
            _ => Applied::Ignored,
        };
        sqlx::query!(
            "UPDATE order_versions SET last_version = $2, updated_at = now() WHERE order_id = $1",
            event.aggregate_id,
            event.aggregate_version,
        )
        .execute(&mut *tx)
        .await?;
        applied
    };
    sqlx::query!(
        "UPDATE inbox SET outcome = $2 WHERE event_id = $1",
        event.event_id,
        applied.as_str(),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(event_id = %event.event_id, event_type = %event.event_type, order_id = %event.aggregate_id,
        outcome = applied.as_str(), "order event applied");
    Ok(applied)
}

async fn reservation_status(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<ReservationStatus>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT status AS "status: ReservationStatus" FROM reservations WHERE order_id = $1 FOR UPDATE"#,
        order_id,
    )
    .fetch_optional(conn)
    .await
}

async fn note_unreserved(
    conn: &mut PgConnection,
    order: &Order,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO unreserved_orders (order_id, reason, items) VALUES ($1, $2, $3)
         ON CONFLICT (order_id) DO UPDATE SET reason = EXCLUDED.reason",
        order.id,
        reason,
        Jsonb(&order.items) as _,
    )
    .execute(conn)
    .await?;
    Ok(())
}

async fn on_created(
    tx: &mut PgConnection,
    event: &Envelope,
    now: DateTime<Utc>,
) -> Result<Applied, sqlx::Error> {
    let order: Order = serde_json::from_value(event.payload.clone())
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let status = reservation_status(&mut *tx, order.id).await?;
    if order_cancelled(&mut *tx, order.id).await? {
        // A late event of an order cancelled since: its stock was given back for good.
        return Ok(Applied::Ignored);
    }
    match status {
        Some(ReservationStatus::Active) => {
            settle_in(&mut *tx, order.id, Settle::Commit, now)
                .await
                .map_err(db)?;
            Ok(Applied::Committed)
        }
        Some(ReservationStatus::Committed) => Ok(Applied::AlreadyCommitted),
        // The order exists (this event says so): its units must leave stock once.
        Some(ReservationStatus::Expired | ReservationStatus::Released) => {
            retake(tx, &order, now).await
        }
        None => {
            note_unreserved(tx, &order, "NO_RESERVATION").await?;
            Ok(Applied::NoReservation)
        }
    }
}

/// An expired (or released) reservation of a confirmed order: its units are held
/// again and committed at once if every item is available, else the order is noted
/// for sales. The reservation row is locked already ([`reservation_status`]).
async fn retake(
    tx: &mut PgConnection,
    order: &Order,
    now: DateTime<Utc>,
) -> Result<Applied, sqlx::Error> {
    let existing = find(&mut *tx, order.id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    match reactivate(&mut *tx, &existing, now, now).await {
        Ok(_) => {}
        Err(ApiError::Problem(p)) if p.kind.ends_with(INSUFFICIENT_STOCK) => {
            note_unreserved(tx, order, "EXPIRED_OUT_OF_STOCK").await?;
            tracing::warn!(order_id = %order.id, "reservation expired before the order was confirmed and stock ran out; noted for sales");
            return Ok(Applied::ExpiredOutOfStock);
        }
        Err(e) => return Err(db(e)),
    }
    settle_in(&mut *tx, order.id, Settle::Commit, now)
        .await
        .map_err(db)?;
    Ok(Applied::Retaken)
}

async fn on_cancelled(
    tx: &mut PgConnection,
    order_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Applied, sqlx::Error> {
    sqlx::query!(
        "DELETE FROM unreserved_orders WHERE order_id = $1",
        order_id
    )
    .execute(&mut *tx)
    .await?;
    // The same release as sales' direct call: whichever comes second finds nothing held.
    match release_for_cancellation(tx, order_id, now)
        .await
        .map_err(db)?
    {
        CancelRelease::Released | CancelRelease::Restocked => Ok(Applied::Released),
        CancelRelease::NothingHeld => Ok(Applied::Ignored),
    }
}

/// The SQS handler.
#[derive(Clone)]
pub struct OrderEvents {
    pub pool: PgPool,
}

impl Handler for OrderEvents {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        let applied = apply(&self.pool, &envelope, Utc::now()).await;
        // `consumer_messages_total{result}`: a redelivery or an outdated version is a duplicate.
        let result = match &applied {
            Ok(Applied::Duplicate | Applied::Stale) => "duplicate",
            Ok(_) => "processed",
            Err(_) => "failed",
        };
        metrics::counter!("consumer_messages_total", "result" => result).increment(1);
        applied
            .map(|_| ())
            .map_err(|e| HandlerError::Retry(e.to_string()))
    }
}
