//! Delivery initiation that survives delivery being down: the one mechanism for a
//! delivery that could not be initiated (its worker is `workers::delivery_retry`). Every new order gets a row in
//! `delivery_retries` in its own transaction (PENDING, or HELD while its delivery
//! waits for a stock check); the order saga's inline attempt, or later this worker,
//! initiates the delivery and marks the row DONE (both through [`record_initiated`]
//! and [`record_failure`]). Failures back off exponentially (60 s → 5 min by default) and,
//! past the attempt or age limit, open a `DELIVERY_RETRIES_EXHAUSTED` review.
//!
//! Safe with several sales instances: a step claims due rows by pushing their
//! `next_attempt_at` one lease ahead (`FOR UPDATE SKIP LOCKED`), so no two
//! instances work on a row at once, and a row whose worker died comes back after
//! the lease. Delivery dedups on the order id, so a retry racing a slow success
//! never makes a second delivery.

use chrono::{DateTime, Utc};
use contracts::{
    delivery::DeliveryRequest,
    orders::{Order, OrderStatus},
};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    cache::OrderCache,
    config::DeliveryRetryConfig,
    db::Db,
    orders::reviews::{self, ReviewReason},
    outbox::{self, events},
    peers::{PeerError, delivery::DeliveryClient},
    store::{self, OrderLock, delivery_retries::RetryStatus},
};

use resilience::deadline::after;

/// Adds the row of a new order (in the order's transaction): PENDING, or HELD when
/// the order's delivery must wait ([`contracts::orders::DeliveryHold`]). If nothing
/// else happens, the worker tries a PENDING row at `first_attempt_at`.
pub async fn schedule(
    conn: &mut PgConnection,
    order_id: Uuid,
    first_attempt_at: DateTime<Utc>,
    held: bool,
) -> Result<(), sqlx::Error> {
    // The order's trace, for the worker's later attempts to continue it.
    let trace = platform::trace_context::current_map();
    let status = if held {
        RetryStatus::Held
    } else {
        RetryStatus::Pending
    };
    store::delivery_retries::insert(conn, order_id, first_attempt_at, &trace, status).await
}

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempted {
    /// The delivery exists and is recorded on the order.
    Initiated(Box<Order>),
    /// It failed; another attempt is scheduled.
    Rescheduled { attempts: i32 },
    /// It failed for the last time; a manual review is open.
    Exhausted,
    /// The delivery breaker is open: no call was made, nothing counted.
    BreakerOpen,
}

/// One claimed row.
#[derive(Debug, Clone, Copy)]
pub struct Due {
    pub order_id: Uuid,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
}

/// Records an initiated delivery in the caller's transaction: the order's delivery
/// id (once, with `DELIVERY_INITIATED`) and its retry row DONE. `known`: the order as
/// the caller holds it (its items are not read again). Returns the order as it is now
/// (`None` if it does not exist); if it was cancelled meanwhile, the caller must cancel
/// the delivery just made.
pub async fn record_initiated(
    conn: &mut PgConnection,
    order_id: Uuid,
    delivery_id: Uuid,
    known: Option<&Order>,
    now: DateTime<Utc>,
) -> Result<Option<Order>, sqlx::Error> {
    let updated = store::orders::record_delivery(&mut *conn, order_id, delivery_id, known).await?;
    store::delivery_retries::done(conn, order_id, now).await?;
    Ok(updated)
}

/// Makes one attempt for `order` and records its result.
pub async fn attempt(
    db: &Db,
    cache: &OrderCache,
    delivery: &DeliveryClient,
    config: &DeliveryRetryConfig,
    order: &Order,
    due: Due,
    now: DateTime<Utc>,
) -> Result<Attempted, sqlx::Error> {
    let request = DeliveryRequest {
        order_id: order.id,
        address: order.shipping_address.clone(),
        items: order.items.clone(),
    };
    match delivery.initiate(&request).await {
        Ok(created) => {
            let mut tx = db.pool.begin().await?;
            let updated = record_initiated(&mut tx, order.id, created.id, Some(order), now).await?;
            tx.commit().await?;
            if let Some(updated) = &updated {
                // Only the delivery id changed: no status read waits on it.
                cache.updated_in_background(updated);
            }
            tracing::info!(order_id = %order.id, delivery_id = %created.id, attempts = due.attempts + 1, "delivery initiated");
            if updated
                .as_ref()
                .is_some_and(|o| o.status == OrderStatus::Cancelled)
            {
                // The order was cancelled while this delivery was being made: undo it.
                crate::orders::compensations::cancel_made_delivery(delivery, order.id, created.id)
                    .await;
            }
            Ok(Attempted::Initiated(Box::new(
                updated.unwrap_or_else(|| order.clone()),
            )))
        }
        Err(PeerError::Unavailable { not_sent: true, .. }) => {
            // Not an attempt: look again when the breaker may let a trial through.
            let retry_at = after(
                now,
                delivery
                    .breaker()
                    .remaining_open()
                    .unwrap_or(config.poll_interval),
            );
            store::delivery_retries::defer(&db.pool, order.id, retry_at).await?;
            Ok(Attempted::BreakerOpen)
        }
        Err(e) => {
            let mut tx = db.pool.begin().await?;
            // The order first, like every writer.
            let Some(mut lock) = store::lock(&mut tx, order.id).await? else {
                return Ok(Attempted::Exhausted);
            };
            let result =
                record_failure(&mut lock, config, order.version, due, now, &e.to_string()).await?;
            tx.commit().await?;
            if matches!(result, Attempted::Exhausted) {
                // The order may have been flagged for review.
                cache.reload(&db.pool, order.id).await;
            }
            Ok(result)
        }
    }
}

/// Records a failed initiation in the caller's transaction: another attempt scheduled
/// with backoff (and, on the first failure, `DELIVERY_INITIATION_FAILED`), or, past the
/// attempt or age limit, the row EXHAUSTED and a `DELIVERY_RETRIES_EXHAUSTED` review.
pub async fn record_failure(
    lock: &mut OrderLock<'_>,
    config: &DeliveryRetryConfig,
    order_version: i32,
    due: Due,
    now: DateTime<Utc>,
    error: &str,
) -> Result<Attempted, sqlx::Error> {
    let attempts = due.attempts + 1;
    let too_old = resilience::deadline::elapsed(due.created_at, now, config.max_age);
    let order_id = lock.id();
    let result = if attempts >= config.max_attempts || too_old {
        store::delivery_retries::exhaust(lock, attempts, error).await?;
        let payload =
            json!({"order_id": order_id, "attempts": attempts, "error": error, "exhausted": true});
        announce_failure(lock, order_version, &payload).await?;
        let details = json!({"attempts": attempts, "last_error": error});
        reviews::open_flagged(lock, ReviewReason::DeliveryRetriesExhausted, &details).await?;
        tracing::error!(%order_id, attempts, error, "delivery retries exhausted; order sent to manual review");
        Attempted::Exhausted
    } else {
        // No jitter: claims are leased and batched, so rows due together do not stampede.
        let delay =
            resilience::backoff::exponential(attempts as u32, config.first_delay, config.max_delay);
        let next = after(now, delay);
        store::delivery_retries::reschedule(lock, attempts, error, next).await?;
        if attempts == 1 {
            let payload = json!({"order_id": order_id, "attempts": attempts, "error": error, "next_attempt_at": next});
            announce_failure(lock, order_version, &payload).await?;
        }
        tracing::warn!(%order_id, attempts, error, next_attempt_at = %next, "Delivery initiation failed, will retry via background job");
        Attempted::Rescheduled { attempts }
    };
    Ok(result)
}

/// `DELIVERY_INITIATION_FAILED` with `payload`, in the order's transaction.
async fn announce_failure(
    lock: &mut OrderLock<'_>,
    order_version: i32,
    payload: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    let order_id = lock.id();
    outbox::enqueue(
        lock.conn(),
        order_id,
        order_version,
        events::DELIVERY_INITIATION_FAILED,
        payload,
    )
    .await?;
    Ok(())
}
