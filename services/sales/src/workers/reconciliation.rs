//! Reconciliation with delivery: orders whose status may lag
//! behind their delivery are compared with delivery's authoritative status.
//!
//! A run takes, least recently checked first, orders with a delivery that are
//! pending shipment or shipped and have not changed for `stale_after`, plus
//! flagged orders (`requires_manual_review`) in any status. For each it reads
//! the delivery through the delivery breaker and maps its status
//! ([`crate::orders::status::from_delivery`]) and settles the difference with
//! [`crate::orders::following::apply`], the implementation delivery's events go
//! through too:
//! - the same status → nothing to do;
//! - reachable along valid transitions → applied step by step (e.g.
//!   PENDING_SHIPMENT → SHIPPED → DELIVERED), logged `Order status reconciled`;
//!   a failed delivery also opens a `DELIVERY_FAILED` review;
//! - not reachable → never applied: an `INVALID_STATUS_TRANSITION` review
//!   with `from`/`to` in its details.
//!
//! Reconciliation is the safety net: sales follows delivery's
//! `DELIVERY_STATUS_CHANGED` events within a second (`workers::delivery_events`),
//! and a run only catches what an event lost or late left behind. It can be
//! switched off (`SALES_RECONCILIATION_ENABLED=false`).
//!
//! An error on one order is logged and counted, and the run goes on (an open
//! delivery breaker ends it early: every further call would be refused). Each
//! run is a row of `reconciliation_runs`; [`jobs_status`] turns the latest into
//! the `reconciliationJobsStatus` of `/health/reliability`.
//!
//! A run also gives back the stock of cancelled orders whose release product has
//! not confirmed (`stock_released_at` unset): their direct release failed, and
//! `ORDER_CANCELLED` may be late or a dead letter; no unit of stock waits on one
//! message.
//!
//! Several sales instances: a run holds a transaction-level advisory lock, so
//! runs never overlap (another instance's attempt meanwhile is skipped), and a
//! run that dies releases it with its connection. Each order is changed under
//! its row lock, so a customer's cancellation cannot interleave.

use std::time::Instant;

use chrono::{DateTime, Utc};
use contracts::orders::OrderStatus;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use resilience::deadline::{after, before};

pub use crate::store::reconciliation_runs::{JobsStatus, RunStatus, classify, jobs_status};
use crate::{
    cache::OrderCache,
    config::ReconciliationConfig,
    db::Db,
    orders::{
        following::{self as delivery_status, Settled, Source},
        reviews::{self, ReviewReason},
        status::{self, TransitionError},
    },
    peers::{PeerError, delivery::DeliveryClient},
    store,
};

/// Key of the advisory lock held by the running reconciliation.
pub const LOCK_KEY: i64 = 0x5a1e_54ec;

/// What one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The run's row in `reconciliation_runs` (none when skipped).
    pub run_id: Option<Uuid>,
    /// Another instance was running, or the database breaker is open: nothing done.
    pub skipped: bool,
    pub status: Option<RunStatus>,
    /// Orders compared with delivery (errors included).
    pub checked: u32,
    /// Orders whose status was corrected.
    pub fixed: u32,
    /// Reviews opened (invalid transitions, failed deliveries).
    pub flagged: u32,
    /// Orders that could not be checked.
    pub errors: u32,
}

impl RunReport {
    fn skipped() -> Self {
        Self {
            run_id: None,
            skipped: true,
            status: None,
            checked: 0,
            fixed: 0,
            flagged: 0,
            errors: 0,
        }
    }
}

/// What checking one order came to.
enum Checked {
    Consistent,
    Fixed { flagged: bool },
    Flagged { opened: bool },
}

#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error(transparent)]
    Delivery(#[from] PeerError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The reconciliation worker.
#[derive(Clone)]
pub struct Worker {
    pub db: Db,
    pub cache: OrderCache,
    pub delivery: DeliveryClient,
    /// Releases the stock of cancelled orders product has not confirmed back.
    pub product: crate::peers::product::ProductClient,
    pub config: ReconciliationConfig,
}

impl Worker {
    /// One run at `now` (see the module docs). `Err` only when not even the
    /// run's record could be written.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<RunReport, sqlx::Error> {
        if self.db.is_open() {
            count_run("skipped");
            return Ok(RunReport::skipped());
        }
        // Held until the run's end: dropping it (any early return) unlocks.
        let mut lock = self.db.pool.begin().await?;
        let locked = store::locks::try_for_transaction(&mut lock, LOCK_KEY).await?;
        if !locked {
            tracing::debug!("another instance is reconciling; skipped");
            count_run("skipped");
            return Ok(RunReport::skipped());
        }
        // Holding the lock, no other run is alive: one still RUNNING died.
        store::reconciliation_runs::fail_interrupted(&self.db.pool, now).await?;
        let run_id = Uuid::now_v7();
        store::reconciliation_runs::start(&self.db.pool, run_id, now).await?;

        let clock = Instant::now();
        let mut report = RunReport {
            run_id: Some(run_id),
            skipped: false,
            status: Some(RunStatus::Running),
            checked: 0,
            fixed: 0,
            flagged: 0,
            errors: 0,
        };
        let mut first_error = None;
        let result = self.reconcile(now, &mut report, &mut first_error).await;
        let (status, error) = match result {
            Ok(()) if report.errors == 0 => (RunStatus::Succeeded, None),
            Ok(()) => (RunStatus::Partial, first_error),
            Err(e) => {
                tracing::error!(error = %e, "reconciliation run failed");
                (RunStatus::Failed, Some(e.to_string()))
            }
        };
        report.status = Some(status);
        let finished_at = after(now, clock.elapsed());
        let counts = store::reconciliation_runs::Counts {
            checked: report.checked as i32,
            fixed: report.fixed as i32,
            flagged: report.flagged as i32,
            errors: report.errors as i32,
        };
        store::reconciliation_runs::finish(
            &self.db.pool,
            run_id,
            finished_at,
            counts,
            status,
            error.as_deref(),
        )
        .await?;
        store::reconciliation_runs::prune(&self.db.pool, before(now, self.config.run_retention))
            .await?;
        lock.commit().await?;
        count_run(match status {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Partial => "partial",
            RunStatus::Failed | RunStatus::Running => "failed",
        });
        tracing::info!(%run_id, status = status.as_str(), checked = report.checked, fixed = report.fixed,
            flagged = report.flagged, errors = report.errors, "reconciliation run finished");
        Ok(report)
    }

    async fn reconcile(
        &self,
        now: DateTime<Utc>,
        report: &mut RunReport,
        first_error: &mut Option<String>,
    ) -> Result<(), sqlx::Error> {
        let candidates = store::orders::reconciliation_candidates(
            &self.db.pool,
            before(now, self.config.stale_after),
            self.config.batch,
        )
        .await?;
        for (order_id, delivery_id) in candidates {
            report.checked += 1;
            match self.check(order_id, delivery_id, now).await {
                Ok(Checked::Consistent) => {}
                Ok(Checked::Fixed { flagged }) => {
                    report.fixed += 1;
                    report.flagged += u32::from(flagged);
                }
                Ok(Checked::Flagged { opened }) => report.flagged += u32::from(opened),
                Err(e) => {
                    report.errors += 1;
                    tracing::error!(%order_id, %delivery_id, error = %e, "Reconciliation failed for order");
                    first_error.get_or_insert_with(|| format!("order {order_id}: {e}"));
                    if matches!(
                        e,
                        CheckError::Delivery(PeerError::Unavailable { not_sent: true, .. })
                    ) {
                        // Every further call would be refused: leave the rest for the next run.
                        break;
                    }
                }
            }
        }
        self.release_cancelled_stock(report, first_error).await
    }

    /// Cancelled orders whose units product has not confirmed back (the direct release
    /// failed, and `ORDER_CANCELLED` may be late or a dead letter) are released again; each
    /// one released counts as checked and fixed. Skipped while product's breaker is open.
    async fn release_cancelled_stock(
        &self,
        report: &mut RunReport,
        first_error: &mut Option<String>,
    ) -> Result<(), sqlx::Error> {
        if self.product.breaker().remaining_open().is_some() {
            return Ok(());
        }
        let unconfirmed =
            store::orders::unconfirmed_releases(&self.db.pool, self.config.batch).await?;
        for order_id in unconfirmed {
            report.checked += 1;
            if crate::orders::compensations::release_stock(&self.db.pool, &self.product, order_id)
                .await
            {
                report.fixed += 1;
            } else {
                report.errors += 1;
                first_error.get_or_insert_with(|| {
                    format!("order {order_id}: its stock could not be released at product")
                });
                // Product refuses or is away: the rest waits for the next run.
                break;
            }
        }
        Ok(())
    }

    /// Compares one order with its delivery and settles the difference.
    async fn check(
        &self,
        order_id: Uuid,
        delivery_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Checked, CheckError> {
        let delivery = self.delivery.get(delivery_id).await?;
        let target = status::from_delivery(delivery.status);
        // Dropping `tx` without commit (any early return) rolls back.
        let mut tx = self.db.pool.begin().await?;
        // Locks the order (its status is read after any concurrent writer committed).
        let mut lock = store::lock(&mut tx, order_id)
            .await?
            .ok_or(TransitionError::NotFound(order_id))?;
        let unchanged_since = lock.mark_reconciled(now).await?;
        let current = lock.row.status;
        let stale_shipment = current == OrderStatus::PendingShipment
            && unchanged_since <= before(now, self.config.stale_shipment_review_after);
        let checked = if current == target && stale_shipment {
            // Consistent, but nobody has picked the parcel up for days: a person looks
            // (approving bumps the order, so it comes back only after another period).
            let details = json!({
                "delivery_id": delivery.id, "delivery_status": delivery.status,
                "unchanged_since": unchanged_since,
            });
            let opened =
                reviews::open_flagged(&mut lock, ReviewReason::StalePendingShipment, &details)
                    .await?;
            if opened {
                tracing::warn!(%order_id, %delivery_id, %unchanged_since,
                    "Order pending shipment for too long; flagged for manual review");
            }
            Checked::Flagged { opened }
        } else {
            match delivery_status::apply(&mut lock, &delivery, Source::Reconciliation).await? {
                Settled::Consistent => Checked::Consistent,
                Settled::Fixed { flagged } => Checked::Fixed { flagged },
                Settled::Flagged { opened } => Checked::Flagged { opened },
            }
        };
        tx.commit().await?;
        if !matches!(
            checked,
            Checked::Consistent | Checked::Flagged { opened: false }
        ) {
            // Status or flag changed: the cached order follows before the next read
            // (an order already in review is re-checked every run, unchanged).
            self.cache.reload(&self.db.pool, order_id).await;
        }
        Ok(checked)
    }

    /// Runs [`Worker::run_once`] every interval until `token` is cancelled
    /// (the first run one interval after start).
    pub async fn run(self, token: CancellationToken) {
        let interval = self.config.interval;
        platform::worker::run_every(
            "reconciliation",
            interval,
            platform::worker::Start::AfterInterval,
            token,
            || async {
                // A run whose record could not even be written is a failed run too.
                self.run_once(Utc::now())
                    .await
                    .inspect_err(|_| count_run("failed"))?;
                Ok::<_, sqlx::Error>(platform::worker::Next::Wait)
            },
        )
        .await;
    }
}

/// `reconciliation_runs_total{result}`: succeeded, partial, failed or skipped.
fn count_run(result: &'static str) {
    metrics::counter!("reconciliation_runs_total", "result" => result).increment(1);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_jobs_status_follows_the_last_run_and_its_age() {
        let interval = Duration::from_secs(300);
        let now = Utc::now();
        let ago = |secs: i64| now - chrono::Duration::seconds(secs);
        let started = ago(3600);
        assert_eq!(
            classify(None, now, interval, ago(10)),
            JobsStatus::Healthy,
            "just started"
        );
        assert_eq!(classify(None, now, interval, started), JobsStatus::Degraded);
        assert_eq!(
            classify(
                Some((RunStatus::Succeeded, ago(60))),
                now,
                interval,
                started
            ),
            JobsStatus::Healthy
        );
        assert_eq!(
            classify(Some((RunStatus::Partial, ago(60))), now, interval, started),
            JobsStatus::Degraded
        );
        assert_eq!(
            classify(Some((RunStatus::Failed, ago(60))), now, interval, started),
            JobsStatus::Failed
        );
        assert_eq!(
            classify(
                Some((RunStatus::Succeeded, ago(601))),
                now,
                interval,
                started
            ),
            JobsStatus::Degraded,
            "no run for two intervals"
        );
        assert_eq!(
            classify(
                Some((RunStatus::Succeeded, ago(601))),
                now,
                interval,
                ago(5)
            ),
            JobsStatus::Healthy,
            "an old run, but this instance just started"
        );
    }
}
