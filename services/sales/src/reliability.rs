//! The reliability figures: breaker states and the figures of the eventual-consistency
//! machinery (shown by `GET /health/reliability`), the readiness details (an open
//! database breaker makes the service not ready), and the open alert episodes ([`Alerts`]).
//!
//! [`snapshot`] takes the figures once; the endpoint, the `/metrics` refresh
//! ([`refresh_metrics`]) and the alert checker (`workers::alerts`) all use it, so a
//! new figure is added in one place.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
};

use chrono::{DateTime, Utc};
use resilience::{BreakerSnapshot, Registry};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::{
    config::ReconciliationConfig,
    db::Db,
    outbox::relay,
    store::{
        self,
        reconciliation_runs::{self, JobsStatus},
    },
};

/// What the figures are taken from.
#[derive(Clone)]
pub struct Sources {
    pub db: Db,
    pub breakers: Registry,
    pub reconciliation: ReconciliationConfig,
    /// When this instance started (the reconciliation status counts its grace from it).
    pub started_at: DateTime<Utc>,
    /// The open alert episodes (the alert checker's).
    pub alerts: Alerts,
}

/// The alerts the checker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Alert {
    CircuitBreakerOpen,
    OutboxBacklog,
    ManualReviewBacklog,
    OutboxStalled,
    OutboxDeadLetters,
}

impl Alert {
    /// Every alert, in evaluation order.
    pub const ALL: [Alert; 5] = [
        Alert::CircuitBreakerOpen,
        Alert::OutboxBacklog,
        Alert::ManualReviewBacklog,
        Alert::OutboxStalled,
        Alert::OutboxDeadLetters,
    ];

    /// The stable name (`alert` field of logs and webhook bodies, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Alert::CircuitBreakerOpen => "CIRCUIT_BREAKER_OPEN",
            Alert::OutboxBacklog => "OUTBOX_BACKLOG",
            Alert::ManualReviewBacklog => "MANUAL_REVIEW_BACKLOG",
            Alert::OutboxStalled => "OUTBOX_STALLED",
            Alert::OutboxDeadLetters => "OUTBOX_DEAD_LETTERS",
        }
    }
}

/// An open alert episode.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveAlert {
    pub alert: Alert,
    /// The figure at the last evaluation (open breakers; pending rows; open reviews;
    /// age in seconds).
    pub value: f64,
    pub threshold: f64,
    /// What the figure is made of (e.g. the open breakers' names).
    #[schema(value_type = Object)]
    pub details: Value,
    /// When the episode started.
    pub since: DateTime<Utc>,
}

/// The open episodes, by alert.
pub type ActiveSet = BTreeMap<Alert, ActiveAlert>;

/// The open episodes of this instance, shared by the checker and `/health/reliability`.
#[derive(Clone, Default)]
pub struct Alerts {
    active: Arc<Mutex<ActiveSet>>,
    /// Serializes evaluations (the checker's loop and tests driving it).
    pub(crate) evaluating: Arc<tokio::sync::Mutex<()>>,
}

impl Alerts {
    /// The open episodes, in alert order.
    pub fn active(&self) -> Vec<ActiveAlert> {
        self.lock().values().cloned().collect()
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ActiveSet> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.lock().keys()).finish()
    }
}

/// The reliability view (`GET /health/reliability`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReliabilityMetrics {
    /// State of each named breaker: `CLOSED`, `OPEN` or `HALF_OPEN`.
    pub circuit_breaker_states: BTreeMap<String, String>,
    /// Outbox rows waiting to be published (null when the database is unavailable).
    pub outbox_events_pending: Option<i64>,
    /// Dead letters: outbox rows the broker refused for good (replay or discard them).
    pub failed_event_count: Option<i64>,
    /// Age of the oldest PENDING outbox row, in seconds.
    pub oldest_pending_age_seconds: Option<f64>,
    /// Age of the oldest dead letter, in seconds (null when there is none).
    pub oldest_failed_age_seconds: Option<f64>,
    /// Orders whose delivery is not initiated yet (null when the database is unavailable).
    pub delivery_retries_pending: Option<i64>,
    /// Open manual reviews (null when the database is unavailable).
    pub manual_review_queue_length: Option<i64>,
    /// `HEALTHY` (the last reconciliation run succeeded, recently), `DEGRADED` (it had
    /// errors, or no run finished for two intervals) or `FAILED` (it failed entirely);
    /// null when the database is unavailable.
    pub reconciliation_jobs_status: Option<JobsStatus>,
    /// Each breaker's window counts and settings.
    #[schema(value_type = Vec<Object>)]
    pub breakers: Vec<BreakerSnapshot>,
    /// Reliability alerts of this instance whose episode is open (as of the alert
    /// checker's last evaluation).
    pub active_alerts: Vec<ActiveAlert>,
}

/// The figures at `now`: breakers always; the database's figures unless its breaker is open
/// or a query fails (then null).
pub async fn snapshot(state: &Sources, now: DateTime<Utc>) -> ReliabilityMetrics {
    let breakers = state.breakers.snapshots();
    let counts = async {
        let mut conn = state.db.pool.acquire().await?;
        let pending = store::delivery_retries::pending_count(&mut conn).await?;
        let reviews = store::reviews::open_count(&mut conn).await?;
        let jobs = if state.reconciliation.enabled {
            reconciliation_runs::jobs_status(
                &mut conn,
                now,
                state.reconciliation.interval,
                state.started_at,
            )
            .await?
        } else {
            JobsStatus::Disabled
        };
        let outbox = relay::backlog(&state.db.pool, now).await?;
        Ok::<_, sqlx::Error>((pending, reviews, jobs, outbox))
    };
    let (pending, reviews, jobs, outbox) = if state.db.is_open() {
        (None, None, None, None)
    } else {
        match counts.await {
            Ok((p, r, j, o)) => (Some(p), Some(r), Some(j), Some(o)),
            Err(_) => (None, None, None, None),
        }
    };
    ReliabilityMetrics {
        circuit_breaker_states: breakers
            .iter()
            .map(|b| (b.name.clone(), b.state.as_str().to_owned()))
            .collect(),
        outbox_events_pending: outbox.map(|o| o.pending),
        failed_event_count: outbox.map(|o| o.failed),
        oldest_pending_age_seconds: outbox.and_then(|o| o.oldest_pending_age_seconds),
        oldest_failed_age_seconds: outbox.and_then(|o| o.oldest_failed_age_seconds),
        delivery_retries_pending: pending,
        manual_review_queue_length: reviews,
        reconciliation_jobs_status: jobs,
        breakers,
        active_alerts: state.alerts.active(),
    }
}

/// Sets the gauges derived from the database (`outbox_events_pending`, `outbox_events_failed`,
/// `outbox_oldest_pending_age_seconds`, `outbox_oldest_failed_age_seconds`,
/// `delivery_retries_pending`, `manual_review_queue_length`); a figure that is unknown keeps
/// its last value.
pub fn record_gauges(figures: &ReliabilityMetrics) {
    let set = |name: &'static str, value: Option<f64>| {
        if let Some(value) = value {
            metrics::gauge!(name).set(value);
        }
    };
    set(
        "outbox_events_pending",
        figures.outbox_events_pending.map(|n| n as f64),
    );
    set(
        "outbox_events_failed",
        figures.failed_event_count.map(|n| n as f64),
    );
    // No pending row: age 0 (known), unlike an unknown count.
    set(
        "outbox_oldest_pending_age_seconds",
        figures
            .outbox_events_pending
            .map(|_| figures.oldest_pending_age_seconds.unwrap_or(0.0)),
    );
    set(
        "outbox_oldest_failed_age_seconds",
        figures
            .failed_event_count
            .map(|_| figures.oldest_failed_age_seconds.unwrap_or(0.0)),
    );
    set(
        "delivery_retries_pending",
        figures.delivery_retries_pending.map(|n| n as f64),
    );
    set(
        "manual_review_queue_length",
        figures.manual_review_queue_length.map(|n| n as f64),
    );
}

/// Takes a snapshot and sets the gauges from it (the `/metrics` refresh hook).
pub async fn refresh_metrics(state: &Sources) {
    record_gauges(&snapshot(state, Utc::now()).await);
}

/// Readiness check: not ready while the database breaker is open; details list every breaker.
pub fn readiness(registry: Registry, database_breaker: String) -> platform::health::ReadinessCheck {
    Arc::new(move || {
        let states: BTreeMap<String, &str> = registry
            .snapshots()
            .into_iter()
            .map(|b| (b.name, b.state.as_str()))
            .collect();
        let database_open = registry
            .get(&database_breaker)
            .is_some_and(|b| b.remaining_open().is_some());
        (!database_open, json!({ "circuit_breakers": states }))
    })
}
