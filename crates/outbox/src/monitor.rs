//! The outbox's gauges and alerts, for a service that has no alert checker of its own
//! (delivery; sales folds the same figures into its reliability view and alerts).
//!
//! Every `interval` it reads [`crate::relay::backlog`] and sets `outbox_events_pending`,
//! `outbox_events_failed`, `outbox_oldest_pending_age_seconds` and
//! `outbox_oldest_failed_age_seconds`; it raises (logs at error level, and gauges
//! `reliability_alert_active{alert}` to 1) and resolves (back to 0) three alerts:
//! - `OUTBOX_BACKLOG`: more rows pending than `backlog`;
//! - `OUTBOX_STALLED`: the oldest pending row is older than `stalled`;
//! - `OUTBOX_DEAD_LETTERS`: any FAILED row (replay or discard it).

use std::{collections::BTreeSet, time::Duration};

use chrono::Utc;
use platform::worker::{Next, Start, run_every};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::relay::{Backlog, backlog};

/// Alert thresholds of [`run`].
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// Time between evaluations.
    pub interval: Duration,
    /// `OUTBOX_BACKLOG` while more rows than this are pending.
    pub backlog: i64,
    /// `OUTBOX_STALLED` while the oldest pending row is older than this.
    pub stalled: Duration,
}

/// The alerts firing for `figures`.
pub fn firing(figures: &Backlog, thresholds: &Thresholds) -> BTreeSet<&'static str> {
    let mut alerts = BTreeSet::new();
    if figures.pending > thresholds.backlog {
        alerts.insert("OUTBOX_BACKLOG");
    }
    if figures
        .oldest_pending_age_seconds
        .is_some_and(|age| age > thresholds.stalled.as_secs_f64())
    {
        alerts.insert("OUTBOX_STALLED");
    }
    if figures.failed > 0 {
        alerts.insert("OUTBOX_DEAD_LETTERS");
    }
    alerts
}

/// Sets the backlog gauges.
pub fn record_gauges(figures: &Backlog) {
    metrics::gauge!("outbox_events_pending").set(figures.pending as f64);
    metrics::gauge!("outbox_events_failed").set(figures.failed as f64);
    metrics::gauge!("outbox_oldest_pending_age_seconds")
        .set(figures.oldest_pending_age_seconds.unwrap_or(0.0));
    metrics::gauge!("outbox_oldest_failed_age_seconds")
        .set(figures.oldest_failed_age_seconds.unwrap_or(0.0));
}

/// Evaluates every `thresholds.interval` until `token` is cancelled.
pub async fn run(pool: PgPool, thresholds: Thresholds, token: CancellationToken) {
    let active = parking_lot::Mutex::new(BTreeSet::<&'static str>::new());
    run_every(
        "outbox-monitor",
        thresholds.interval,
        Start::Immediately,
        token,
        || async {
            let figures = backlog(&pool, Utc::now()).await?;
            record_gauges(&figures);
            let now = firing(&figures, &thresholds);
            let mut active = active.lock();
            for alert in now.difference(&active) {
                metrics::gauge!("reliability_alert_active", "alert" => *alert).set(1.0);
                tracing::error!(
                    alert,
                    pending = figures.pending,
                    failed = figures.failed,
                    oldest_pending_age_seconds = figures.oldest_pending_age_seconds,
                    "Reliability alert raised"
                );
            }
            for alert in active.difference(&now) {
                metrics::gauge!("reliability_alert_active", "alert" => *alert).set(0.0);
                tracing::info!(alert, "Reliability alert resolved");
            }
            *active = now;
            Ok::<_, sqlx::Error>(Next::Wait)
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_follow_the_thresholds() {
        let thresholds = Thresholds {
            interval: Duration::from_secs(30),
            backlog: 100,
            stalled: Duration::from_secs(300),
        };
        let figures = |pending, failed, age| Backlog {
            pending,
            failed,
            oldest_pending_age_seconds: age,
            oldest_failed_age_seconds: None,
        };
        assert!(firing(&figures(0, 0, None), &thresholds).is_empty());
        assert_eq!(
            firing(&figures(101, 0, Some(1.0)), &thresholds),
            BTreeSet::from(["OUTBOX_BACKLOG"])
        );
        assert_eq!(
            firing(&figures(1, 2, Some(301.0)), &thresholds),
            BTreeSet::from(["OUTBOX_DEAD_LETTERS", "OUTBOX_STALLED"])
        );
    }
}
