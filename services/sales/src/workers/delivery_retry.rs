//! The delivery retry worker: claims due `delivery_retries` rows (pushing them one lease
//! ahead, `FOR UPDATE SKIP LOCKED`) and makes an attempt for each
//! ([`crate::orders::delivery::attempt`]). Safe with several sales instances: no two work on
//! a row at once, and a row whose worker died comes back after the lease.

use chrono::{DateTime, Utc};
use contracts::orders::OrderStatus;
use futures_util::{StreamExt, stream};
use platform::{
    trace_context,
    worker::{Next, Start, run_every},
};
use resilience::deadline::after;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    cache::OrderCache,
    config::DeliveryRetryConfig,
    db::Db,
    orders::delivery::{Attempted, Due, attempt},
    peers::delivery::DeliveryClient,
    store,
};

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
    pub cache: OrderCache,
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
        let claimed = store::delivery_retries::claim_due(
            &self.db.pool,
            now,
            after(now, self.config.lease),
            self.config.batch,
        )
        .await?;
        report.claimed = claimed.len();
        // Several at once: after an outage the backlog is worked off at the pace of
        // `concurrency` delivery calls, not one. Once the breaker opens, the rest
        // see it open and stay leased for later.
        let outcomes: Vec<Result<Option<Attempted>, sqlx::Error>> = stream::iter(claimed)
            .map(|claimed| {
                let (order_id, attempts) = (claimed.order_id, claimed.attempts);
                let due = Due {
                    order_id,
                    attempts,
                    created_at: claimed.created_at,
                };
                let trace = claimed.trace.0;
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
        let order = store::orders::load(&mut conn, order_id).await?;
        drop(conn);
        // A cancelled (or otherwise moved on) order needs no delivery any more.
        let Some(order) =
            order.filter(|o| o.delivery_id.is_none() && o.status == OrderStatus::PendingShipment)
        else {
            let mut conn = self.db.pool.acquire().await?;
            store::delivery_retries::done(&mut conn, order_id, now).await?;
            return Ok(None);
        };
        let attempted = attempt(
            &self.db,
            &self.cache,
            &self.delivery,
            &self.config,
            &order,
            due,
            now,
        )
        .await?;
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
