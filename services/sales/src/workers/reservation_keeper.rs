//! Keeps reservations alive while their `ORDER_CREATED` waits for the broker.
//!
//! An order's reservation is committed by product when it consumes the order's
//! `ORDER_CREATED` (the order path makes no commit call of its own). A broker outage longer
//! than the reservation's TTL (product's, 15 minutes by default) would let it expire under a
//! recorded order. So every `interval` this worker takes the orders whose `ORDER_CREATED` is
//! still unsent after `renew_after` (which must be well under product's TTL) and asks product
//! to renew their reservations, 100 per call: an active one's deadline moves a TTL ahead; one
//! that lapsed anyway (product was away too) is taken again if stock allows, and if it does
//! not, the order goes to manual review (`RESERVATION_LAPSED`) instead of an oversell. Only
//! outages cost calls: with the broker up no `ORDER_CREATED` waits that long.

use chrono::{DateTime, Utc};
use contracts::catalog::{MAX_RENEWALS, RenewalOutcome};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use crate::config::KeeperConfig;
use crate::{
    cache::OrderCache,
    db::Db,
    orders::reviews::{self, ReviewReason},
    peers::product::ProductClient,
    store,
};

/// Counts of one round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeeperReport {
    pub renewed: usize,
    pub retaken: usize,
    /// Lapsed and gone: sent to manual review.
    pub gone: usize,
    /// Product could not be asked: the round stopped.
    pub product_unavailable: bool,
}

/// The keeper worker.
#[derive(Clone)]
pub struct Worker {
    pub db: Db,
    pub cache: OrderCache,
    pub product: ProductClient,
    pub config: KeeperConfig,
}

impl Worker {
    /// One round at `now`.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<KeeperReport, sqlx::Error> {
        let mut report = KeeperReport::default();
        if self.db.is_open() || self.product.breaker().remaining_open().is_some() {
            report.product_unavailable = true;
            return Ok(report);
        }
        let waiting = store::orders::waiting_for_broker(
            &self.db.pool,
            resilience::deadline::before(now, self.config.renew_after),
        )
        .await?;
        for chunk in waiting.chunks(MAX_RENEWALS) {
            let renewals = match self.product.renew(chunk).await {
                Ok(renewals) => renewals,
                Err(e) => {
                    tracing::warn!(error = %e, orders = chunk.len(), "reservations not renewed; the next round tries again");
                    report.product_unavailable = true;
                    break;
                }
            };
            for renewal in renewals {
                match renewal.outcome {
                    RenewalOutcome::Renewed => report.renewed += 1,
                    RenewalOutcome::Retaken => report.retaken += 1,
                    RenewalOutcome::Gone => {
                        report.gone += 1;
                        self.lapsed(renewal.order_id).await?;
                    }
                    RenewalOutcome::Committed
                    | RenewalOutcome::Cancelled
                    | RenewalOutcome::Unknown => {}
                }
            }
        }
        if report.renewed + report.retaken + report.gone > 0 {
            tracing::info!(?report, "reservations kept alive while ORDER_CREATED waits");
        }
        Ok(report)
    }

    async fn lapsed(&self, order_id: Uuid) -> Result<(), sqlx::Error> {
        let mut tx = self.db.pool.begin().await?;
        let details = json!({
            "cause": "the reservation expired while ORDER_CREATED waited for the broker, and the stock is gone",
        });
        if let Some(mut lock) = store::lock(&mut tx, order_id).await? {
            reviews::open_flagged(&mut lock, ReviewReason::ReservationLapsed, &details).await?;
        }
        tx.commit().await?;
        self.cache.reload(&self.db.pool, order_id).await;
        tracing::error!(%order_id, "reservation lapsed while ORDER_CREATED waited; order sent to manual review");
        Ok(())
    }

    /// Runs [`Worker::run_once`] every interval until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        platform::worker::run_every(
            "reservation-keeper",
            self.config.interval,
            platform::worker::Start::AfterInterval,
            token,
            || async {
                self.run_once(Utc::now()).await?;
                Ok::<_, sqlx::Error>(platform::worker::Next::Wait)
            },
        )
        .await;
    }
}
