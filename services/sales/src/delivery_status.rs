//! Following delivery's statuses: one implementation for the two ways sales learns one,
//! the `DELIVERY_STATUS_CHANGED` events delivery publishes (the path: within a second of
//! the change) and reconciliation (the safety net: it asks delivery).
//!
//! [`apply`] maps the delivery's status onto the order's
//! ([`crate::orders::status::from_delivery`]) in the caller's transaction, the order row
//! locked:
//! - the same status → nothing to do;
//! - reachable along valid transitions → applied step by step (e.g. PENDING_SHIPMENT →
//!   SHIPPED → DELIVERED), each with its history row and `ORDER_STATUS_CHANGED` event; a
//!   failed delivery also opens a `DELIVERY_FAILED` review;
//! - not reachable → never applied: an `INVALID_STATUS_TRANSITION` review with `from`/`to`
//!   in its details.
//!
//! It also records the delivery's version on the order (`orders.delivery_version`, never
//! lowered), so an event older than what was applied is ignored.
//!
//! [`Consumer`] is the SQS handler of delivery's events: each one is applied in one
//! transaction with its inbox row (`delivery_events_inbox`, keyed by event id), so a
//! redelivered event changes nothing, and an event whose delivery version is not newer than
//! the order's is acknowledged and ignored. Delivery's `CREATED` events never reach it: the
//! queue's subscription filters them out (sales records the delivery id itself when it
//! initiates the delivery, so they would cost a transaction each and change nothing).

use chrono::Utc;
use contracts::{
    delivery::{DELIVERY_STATUS_CHANGED, Delivery, DeliveryStatus},
    orders::OrderStatus,
};
use messaging::{Envelope, Handler, HandlerError};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    db::Db,
    orders::status::{self, TransitionError},
    reviews::{self, ReviewReason},
};

/// Event types the consumer applies (its queue's filter policy).
pub const CONSUMED: [&str; 1] = [DELIVERY_STATUS_CHANGED];

/// Delivery statuses the queue's subscription drops (its filter policy's `anything-but` on
/// the `status` attribute): sales knows a delivery was created, it created it.
pub const NOT_DELIVERED: [DeliveryStatus; 1] = [DeliveryStatus::Created];

/// Who learnt the delivery's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Delivery's `DELIVERY_STATUS_CHANGED` event.
    Event,
    /// Reconciliation asked delivery.
    Reconciliation,
}

/// What applying a delivery's status to its order came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The order already shows what the delivery implies.
    Consistent,
    /// The order's status was corrected; `flagged` when a `DELIVERY_FAILED` review opened.
    Fixed { flagged: bool },
    /// No valid path: an `INVALID_STATUS_TRANSITION` review (`opened` unless already open).
    Flagged { opened: bool },
}

/// Applies `delivery`'s status to order `order_id`, which is in `current` and locked by the
/// caller's transaction (see the module docs).
pub async fn apply(
    conn: &mut PgConnection,
    order_id: Uuid,
    current: OrderStatus,
    delivery: &Delivery,
    source: Source,
) -> Result<Settled, TransitionError> {
    sqlx::query(
        "UPDATE orders SET delivery_version = GREATEST(delivery_version, $2) WHERE id = $1",
    )
    .bind(order_id)
    .bind(delivery.version)
    .execute(&mut *conn)
    .await?;
    let target = status::from_delivery(delivery.status);
    if current == target {
        return Ok(Settled::Consistent);
    }
    let Some(steps) = status::path(current, target) else {
        tracing::warn!(%order_id, current = current.as_str(), expected = target.as_str(),
            delivery_status = delivery.status.as_str(), ?source,
            "Order status inconsistency detected; flagged for manual review");
        let details = json!({
            "from": current, "to": target,
            "delivery_id": delivery.id, "delivery_status": delivery.status,
        });
        let opened = reviews::open_flagged(
            conn,
            order_id,
            ReviewReason::InvalidStatusTransition,
            &details,
        )
        .await?;
        return Ok(Settled::Flagged { opened });
    };
    let reason = match source {
        Source::Reconciliation => format!(
            "reconciled with delivery {} ({})",
            delivery.id,
            delivery.status.as_str()
        ),
        Source::Event => format!("delivery {} is {}", delivery.id, delivery.status.as_str()),
    };
    for step in steps {
        status::transition(&mut *conn, order_id, step, &reason).await?;
    }
    match source {
        Source::Reconciliation => {
            tracing::info!(%order_id, from = current.as_str(), to = target.as_str(),
            delivery_status = delivery.status.as_str(), "Order status reconciled")
        }
        Source::Event => tracing::info!(%order_id, from = current.as_str(), to = target.as_str(),
            delivery_status = delivery.status.as_str(), "Order status follows its delivery"),
    }
    let flagged = if target == OrderStatus::DeliveryFailed {
        let details = json!({"delivery_id": delivery.id, "delivery_status": delivery.status});
        reviews::open_flagged(conn, order_id, ReviewReason::DeliveryFailed, &details).await?
    } else {
        false
    };
    Ok(Settled::Fixed { flagged })
}

/// What the consumer did with one event (stored as its inbox row's outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This event id was applied before.
    Duplicate,
    /// A newer version of the delivery was applied before.
    Stale,
    /// The order already showed it.
    Consistent,
    /// The order's status changed.
    Applied,
    /// An `INVALID_STATUS_TRANSITION` review (or one already open).
    Flagged,
    /// No such order here, or an event type this consumer does not apply.
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Duplicate => "DUPLICATE",
            Self::Stale => "STALE",
            Self::Consistent => "CONSISTENT",
            Self::Applied => "APPLIED",
            Self::Flagged => "FLAGGED",
            Self::Ignored => "IGNORED",
        }
    }
}

/// Why an event could not be applied now (it stays on the queue, then goes to the DLQ).
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("not a delivery: {0}")]
    Payload(#[from] serde_json::Error),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Applies one delivery event exactly once per event id (see the module docs), and
/// refreshes the cached order when its status changed.
pub async fn consume(db: &Db, event: &Envelope) -> Result<Outcome, ConsumeError> {
    if event.event_type != DELIVERY_STATUS_CHANGED {
        return Ok(Outcome::Ignored);
    }
    let delivery: Delivery = serde_json::from_value(event.payload.clone())?;
    // Dropping `tx` without commit (any early return) rolls back.
    let mut tx = db.pool.begin().await?;
    let fresh = sqlx::query(
        "INSERT INTO delivery_events_inbox (event_id, delivery_id, delivery_version, order_id, outcome)
         VALUES ($1, $2, $3, $4, 'APPLYING') ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.event_id)
    .bind(delivery.id)
    .bind(event.aggregate_version)
    .bind(delivery.order_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if fresh == 0 {
        return Ok(Outcome::Duplicate);
    }
    // Locks the order: a cancellation, a staff decision or reconciliation waits, or is waited for.
    let row: Option<(String, i32, Option<Uuid>)> = sqlx::query_as(
        "SELECT status, delivery_version, delivery_id FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(delivery.order_id)
    .fetch_optional(&mut *tx)
    .await?;
    let mut recorded_now = false;
    let outcome = match row.and_then(|(s, v, d)| Some((OrderStatus::parse(&s)?, v, d))) {
        None => Outcome::Ignored,
        Some((_, applied, _)) if event.aggregate_version <= applied => Outcome::Stale,
        Some((current, _, recorded)) => {
            if recorded.is_none() {
                // Delivery made it, but sales has not recorded it yet (the answer to the
                // initiation was lost, or its retry is still due): this event says which
                // it is, so it is recorded now, as the retry would (DELIVERY_INITIATED,
                // the retry row done), before its status is applied.
                crate::delivery_retry::record_initiated(
                    &mut tx,
                    delivery.order_id,
                    delivery.id,
                    None,
                    Utc::now(),
                )
                .await?;
                recorded_now = true;
            }
            match apply(
                &mut tx,
                delivery.order_id,
                current,
                &delivery,
                Source::Event,
            )
            .await?
            {
                Settled::Consistent => Outcome::Consistent,
                Settled::Fixed { .. } => Outcome::Applied,
                Settled::Flagged { .. } => Outcome::Flagged,
            }
        }
    };
    sqlx::query("UPDATE delivery_events_inbox SET outcome = $2 WHERE event_id = $1")
        .bind(event.event_id)
        .bind(outcome.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if recorded_now || matches!(outcome, Outcome::Applied | Outcome::Flagged) {
        // The next read sees the change.
        db.cache.reload(&db.pool, delivery.order_id).await;
    }
    tracing::info!(event_id = %event.event_id, delivery_id = %delivery.id, order_id = %delivery.order_id,
        delivery_status = delivery.status.as_str(), delivery_version = event.aggregate_version,
        outcome = outcome.as_str(), "delivery event applied");
    Ok(outcome)
}

/// How long the handler keeps an event while sales' database is unreachable before it
/// gives the message back to the queue (where a receive counts toward its DLQ).
pub const OUTAGE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

impl ConsumeError {
    /// Sales' database was unreachable (not the event's fault).
    fn is_outage(&self) -> bool {
        match self {
            Self::Database(e) | Self::Transition(TransitionError::Database(e)) => {
                platform::db::is_unavailable(e)
            }
            _ => false,
        }
    }
}

/// The SQS handler of delivery's events.
#[derive(Clone)]
pub struct Consumer {
    pub db: Db,
}

impl Consumer {
    /// [`consume`], tried again while the database is unreachable (for up to
    /// [`OUTAGE_PATIENCE`], the consumer extending the message's visibility meanwhile), so a
    /// database outage does not spend the message's receives and send it to the DLQ.
    async fn consume_patiently(&self, envelope: &Envelope) -> Result<Outcome, ConsumeError> {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            match consume(&self.db, envelope).await {
                Err(e) if e.is_outage() && started.elapsed() < OUTAGE_PATIENCE => {
                    attempt += 1;
                    let wait = resilience::backoff::exponential(
                        attempt,
                        std::time::Duration::from_millis(100),
                        std::time::Duration::from_secs(2),
                    );
                    tracing::debug!(event_id = %envelope.event_id, error = %e, ?wait,
                        "database unreachable; the delivery event waits");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }
}

impl Handler for Consumer {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        let started = Utc::now();
        let consumed = self.consume_patiently(&envelope).await;
        // `delivery_events_total{result}`: a redelivery or an outdated version is a duplicate.
        let result = match &consumed {
            Ok(Outcome::Duplicate | Outcome::Stale) => "duplicate",
            Ok(_) => "processed",
            Err(_) => "failed",
        };
        metrics::counter!("delivery_events_total", "result" => result).increment(1);
        if let Ok(Outcome::Applied) = consumed {
            // Commit at delivery to the order showing it.
            let lag = (started - envelope.occurred_at)
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1e6;
            metrics::histogram!("delivery_status_lag_seconds").record(lag.max(0.0));
        }
        consumed
            .map(|_| ())
            .map_err(|e| HandlerError::Retry(e.to_string()))
    }
}
