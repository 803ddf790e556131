//! Delivery initiation that survives delivery being down: the one mechanism for a
//! delivery that could not be initiated. Every new order gets a row in
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

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use contracts::{
    delivery::DeliveryRequest,
    orders::{Order, OrderStatus},
};
use futures_util::{StreamExt, stream};
use platform::{
    trace_context,
    worker::{Next, Start, run_every},
};
use serde_json::json;
use sqlx::{PgConnection, types::Json};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    config::DeliveryRetryConfig,
    db::Db,
    orders::store,
    outbox::{self, events},
    peers::{PeerError, delivery::DeliveryClient},
    reviews::{self, ReviewReason},
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
    let trace = sqlx::types::Json(platform::trace_context::current_map());
    sqlx::query(
        "INSERT INTO delivery_retries (order_id, next_attempt_at, trace, status) VALUES ($1, $2, $3, $4)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(first_attempt_at)
    .bind(trace)
    .bind(if held { "HELD" } else { "PENDING" })
    .execute(conn)
    .await?;
    Ok(())
}

/// Lets a held delivery start: its row becomes PENDING, due at `now`, in the caller's
/// transaction (which clears the order's hold with it). Nothing if it was not held.
pub async fn release_hold(
    conn: &mut PgConnection,
    order_id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE delivery_retries SET status = 'PENDING', next_attempt_at = $2, updated_at = now()
         WHERE order_id = $1 AND status = 'HELD'",
    )
    .bind(order_id)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(released == 1)
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

/// A claimed row as read: order, attempts so far, created, the order's trace context.
type Claimed = (Uuid, i32, DateTime<Utc>, Json<BTreeMap<String, String>>);

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
    let updated = store::record_delivery(&mut *conn, order_id, delivery_id, known).await?;
    mark(conn, order_id, "DONE", None, now).await?;
    Ok(updated)
}

/// Makes one attempt for `order` and records its result.
pub async fn attempt(
    db: &Db,
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
                db.cache.updated_in_background(updated);
            }
            tracing::info!(order_id = %order.id, delivery_id = %created.id, attempts = due.attempts + 1, "delivery initiated");
            if updated
                .as_ref()
                .is_some_and(|o| o.status == OrderStatus::Cancelled)
            {
                // The order was cancelled while this delivery was being made: undo it.
                crate::compensations::cancel_made_delivery(delivery, order.id, created.id).await;
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
            sqlx::query("UPDATE delivery_retries SET next_attempt_at = $2, updated_at = now() WHERE order_id = $1 AND status = 'PENDING'")
                .bind(order.id)
                .bind(retry_at)
                .execute(&db.pool)
                .await?;
            Ok(Attempted::BreakerOpen)
        }
        Err(e) => {
            let mut tx = db.pool.begin().await?;
            let result = record_failure(
                &mut tx,
                config,
                order.id,
                order.version,
                due,
                now,
                &e.to_string(),
            )
            .await?;
            tx.commit().await?;
            if matches!(result, Attempted::Exhausted) {
                // The order may have been flagged for review.
                db.cache.reload(&db.pool, order.id).await;
            }
            Ok(result)
        }
    }
}

/// Records a failed initiation in the caller's transaction: another attempt scheduled
/// with backoff (and, on the first failure, `DELIVERY_INITIATION_FAILED`), or, past the
/// attempt or age limit, the row EXHAUSTED and a `DELIVERY_RETRIES_EXHAUSTED` review.
pub async fn record_failure(
    conn: &mut PgConnection,
    config: &DeliveryRetryConfig,
    order_id: Uuid,
    order_version: i32,
    due: Due,
    now: DateTime<Utc>,
    error: &str,
) -> Result<Attempted, sqlx::Error> {
    let attempts = due.attempts + 1;
    let too_old = resilience::deadline::elapsed(due.created_at, now, config.max_age);
    // The order before its retry row and reviews, like every writer (a
    // cancellation holds the order and then stops the retry row).
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(order_id)
        .execute(&mut *conn)
        .await?;
    let result = if attempts >= config.max_attempts || too_old {
        sqlx::query(
            "UPDATE delivery_retries SET status = 'EXHAUSTED', attempts = $2, last_error = $3, updated_at = now()
             WHERE order_id = $1",
        )
        .bind(order_id)
        .bind(attempts)
        .bind(error)
        .execute(&mut *conn)
        .await?;
        let payload =
            json!({"order_id": order_id, "attempts": attempts, "error": error, "exhausted": true});
        outbox::enqueue(
            &mut *conn,
            order_id,
            order_version,
            events::DELIVERY_INITIATION_FAILED,
            &payload,
        )
        .await?;
        let details = json!({"attempts": attempts, "last_error": error});
        reviews::open_flagged(
            &mut *conn,
            order_id,
            ReviewReason::DeliveryRetriesExhausted,
            &details,
        )
        .await?;
        tracing::error!(%order_id, attempts, error, "delivery retries exhausted; order sent to manual review");
        Attempted::Exhausted
    } else {
        // No jitter: claims are leased and batched, so rows due together do not stampede.
        let delay =
            resilience::backoff::exponential(attempts as u32, config.first_delay, config.max_delay);
        let next = after(now, delay);
        sqlx::query(
            "UPDATE delivery_retries SET attempts = $2, last_error = $3, next_attempt_at = $4, updated_at = now()
             WHERE order_id = $1 AND status = 'PENDING'",
        )
        .bind(order_id)
        .bind(attempts)
        .bind(error)
        .bind(next)
        .execute(&mut *conn)
        .await?;
        if attempts == 1 {
            let payload = json!({"order_id": order_id, "attempts": attempts, "error": error, "next_attempt_at": next});
            outbox::enqueue(
                &mut *conn,
                order_id,
                order_version,
                events::DELIVERY_INITIATION_FAILED,
                &payload,
            )
            .await?;
        }
        tracing::warn!(%order_id, attempts, error, next_attempt_at = %next, "Delivery initiation failed, will retry via background job");
        Attempted::Rescheduled { attempts }
    };
    Ok(result)
}

async fn mark(
    conn: &mut PgConnection,
    order_id: Uuid,
    status: &str,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE delivery_retries SET status = $2, last_error = COALESCE($3, last_error), updated_at = $4
         WHERE order_id = $1",
    )
    .bind(order_id)
    .bind(status)
    .bind(error)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Counts of one worker step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    pub claimed: usize,
    pub initiated: usize,
    pub rescheduled: usize,
    pub exhausted: usize,
}

/// The background worker.
#[derive(Clone)]
pub struct Worker {
    pub db: Db,
    pub delivery: DeliveryClient,
    pub config: DeliveryRetryConfig,
}

impl Worker {
    /// Claims due rows (pushing them one lease ahead) and attempts each.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<StepReport, sqlx::Error> {
        let mut report = StepReport::default();
        if self.db.is_open() || self.delivery.breaker().remaining_open().is_some() {
            return Ok(report);
        }
        let claimed: Vec<Claimed> = sqlx::query_as(
            "UPDATE delivery_retries SET next_attempt_at = $2, updated_at = now()
             WHERE order_id IN (
                 SELECT order_id FROM delivery_retries
                 WHERE status = 'PENDING' AND next_attempt_at <= $1
                 ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING order_id, attempts, created_at, trace",
        )
        .bind(now)
        .bind(after(now, self.config.lease))
        .bind(self.config.batch)
        .fetch_all(&self.db.pool)
        .await?;
        report.claimed = claimed.len();
        // Several at once: after an outage the backlog is worked off at the pace of
        // `concurrency` delivery calls, not one. Once the breaker opens, the rest
        // see it open and stay leased for later.
        let outcomes: Vec<Result<Option<Attempted>, sqlx::Error>> = stream::iter(claimed)
            .map(|(order_id, attempts, created_at, Json(trace))| {
                let due = Due {
                    order_id,
                    attempts,
                    created_at,
                };
                // Part of the order's trace, however much later it runs.
                let span = tracing::info_span!("delivery retry", %order_id, attempts);
                trace_context::set_parent(&span, trace_context::from_map(&trace));
                self.attempt_one(due, now).instrument(span)
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        for outcome in outcomes {
            match outcome? {
                Some(Attempted::Initiated(_)) => report.initiated += 1,
                Some(Attempted::Rescheduled { .. }) => report.rescheduled += 1,
                Some(Attempted::Exhausted) => report.exhausted += 1,
                Some(Attempted::BreakerOpen) | None => {}
            }
        }
        Ok(report)
    }

    /// One claimed row: attempted, or marked DONE when its order moved on (`None`).
    async fn attempt_one(
        &self,
        due: Due,
        now: DateTime<Utc>,
    ) -> Result<Option<Attempted>, sqlx::Error> {
        let order_id = due.order_id;
        let mut conn = self.db.pool.acquire().await?;
        let order = store::load(&mut conn, order_id).await?;
        drop(conn);
        // A cancelled (or otherwise moved on) order needs no delivery any more.
        let Some(order) =
            order.filter(|o| o.delivery_id.is_none() && o.status == OrderStatus::PendingShipment)
        else {
            let mut conn = self.db.pool.acquire().await?;
            mark(&mut conn, order_id, "DONE", None, now).await?;
            return Ok(None);
        };
        let attempted = attempt(&self.db, &self.delivery, &self.config, &order, due, now).await?;
        Ok(Some(attempted))
    }

    /// Runs [`Worker::run_once`] every poll interval until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        let interval = self.config.poll_interval;
        run_every(
            "delivery-retry",
            interval,
            Start::Immediately,
            token,
            || async {
                let r = self.run_once(Utc::now()).await?;
                // A full batch with progress: there may be more due right now.
                let more = r.claimed as i64 >= self.config.batch && r.initiated > 0;
                Ok::<_, sqlx::Error>(if more { Next::Again } else { Next::Wait })
            },
        )
        .await;
    }
}

/// Pending (not yet initiated) deliveries.
pub async fn pending_count(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM delivery_retries WHERE status = 'PENDING'")
        .fetch_one(conn)
        .await
}
