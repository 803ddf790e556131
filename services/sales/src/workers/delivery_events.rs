//! The consumer of delivery's `DELIVERY_STATUS_CHANGED` events: each one is applied
//! ([`crate::orders::following::apply`]) in one transaction with its inbox row
//! (`delivery_events_inbox`, keyed by event id), so a redelivered event changes nothing,
//! and an event whose delivery version is not newer than the order's is acknowledged and
//! ignored. Delivery's `CREATED` events never reach it: the queue's subscription filters
//! them out.

use chrono::Utc;
use contracts::delivery::{DELIVERY_STATUS_CHANGED, Delivery, DeliveryStatus};
use messaging::{Envelope, Handler, HandlerError};

use crate::{
    cache::OrderCache,
    db::Db,
    orders::{
        following::{Settled, Source, apply},
        status::TransitionError,
    },
    store,
};

/// Event types the consumer applies (its queue's filter policy).
pub const CONSUMED: [&str; 1] = [DELIVERY_STATUS_CHANGED];

/// Delivery statuses the queue's subscription drops (its filter policy's `anything-but` on
/// the `status` attribute): sales knows a delivery was created, it created it.
pub const NOT_DELIVERED: [DeliveryStatus; 1] = [DeliveryStatus::Created];

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
pub async fn consume(
    db: &Db,
    cache: &OrderCache,
    event: &Envelope,
) -> Result<Outcome, ConsumeError> {
    if event.event_type != DELIVERY_STATUS_CHANGED {
        return Ok(Outcome::Ignored);
    }
    let delivery: Delivery = serde_json::from_value(event.payload.clone())?;
    // Dropping `tx` without commit (any early return) rolls back.
    let mut tx = db.pool.begin().await?;
    let fresh = store::inbox::claim(
        &mut tx,
        event.event_id,
        delivery.id,
        event.aggregate_version,
        delivery.order_id,
    )
    .await?;
    if !fresh {
        return Ok(Outcome::Duplicate);
    }
    // Locks the order: a cancellation, a staff decision or reconciliation waits, or is waited for.
    let mut recorded_now = false;
    let outcome = match store::lock(&mut tx, delivery.order_id).await? {
        None => Outcome::Ignored,
        Some(lock) if event.aggregate_version <= lock.row.delivery_version => Outcome::Stale,
        Some(mut lock) => {
            if lock.row.delivery_id.is_none() {
                // Delivery made it, but sales has not recorded it yet (the answer to the
                // initiation was lost, or its retry is still due): this event says which
                // it is, so it is recorded now, as the retry would (DELIVERY_INITIATED,
                // the retry row done), before its status is applied.
                crate::orders::delivery::record_initiated(
                    lock.conn(),
                    delivery.order_id,
                    delivery.id,
                    None,
                    Utc::now(),
                )
                .await?;
                recorded_now = true;
            }
            match apply(&mut lock, &delivery, Source::Event).await? {
                Settled::Consistent => Outcome::Consistent,
                Settled::Fixed { .. } => Outcome::Applied,
                Settled::Flagged { .. } => Outcome::Flagged,
            }
        }
    };
    store::inbox::settle(&mut tx, event.event_id, outcome.as_str()).await?;
    tx.commit().await?;
    if recorded_now || matches!(outcome, Outcome::Applied | Outcome::Flagged) {
        // The next read sees the change.
        cache.reload(&db.pool, delivery.order_id).await;
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
    pub cache: OrderCache,
}

impl Consumer {
    /// [`consume`], tried again while the database is unreachable (for up to
    /// [`OUTAGE_PATIENCE`], the consumer extending the message's visibility meanwhile), so a
    /// database outage does not spend the message's receives and send it to the DLQ.
    async fn consume_patiently(&self, envelope: &Envelope) -> Result<Outcome, ConsumeError> {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            match consume(&self.db, &self.cache, envelope).await {
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
