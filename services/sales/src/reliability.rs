//! The reliability view: `GET /health/reliability` (breaker states and the
//! figures of the eventual-consistency machinery), and the readiness details
//! (an open database breaker makes the service not ready).
//!
//! [`snapshot`] takes the figures once; the endpoint, the `/metrics` refresh
//! ([`refresh_metrics`]) and the alert checker ([`crate::alerts`]) all use it, so a
//! new figure is added in one place.

use std::{collections::BTreeMap, sync::Arc};

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use resilience::{BreakerSnapshot, Registry};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::{
    alerts::ActiveAlert,
    app::AppState,
    delivery_retry,
    outbox::relay,
    reconciliation::{self, JobsStatus},
    reviews,
};

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

/// Breakers, retries and reviews at a glance.
#[utoipa::path(get, path = "/health/reliability", tag = "health",
    responses((status = 200, body = ReliabilityMetrics)))]
pub async fn reliability(State(state): State<AppState>) -> Json<ReliabilityMetrics> {
    Json(snapshot(&state, Utc::now()).await)
}

/// The figures at `now`: breakers always; the database's figures unless its breaker is open
/// or a query fails (then null).
pub async fn snapshot(state: &AppState, now: DateTime<Utc>) -> ReliabilityMetrics {
    let breakers = state.breakers.snapshots();
    let counts = async {
        let mut conn = state.db.pool.acquire().await?;
        let pending = delivery_retry::pending_count(&mut conn).await?;
        let reviews = reviews::open_count(&mut conn).await?;
        let jobs = if state.config.reconciliation.enabled {
            reconciliation::jobs_status(
                &mut conn,
                now,
                state.config.reconciliation.interval,
                state.started_at,
            )
            .await?
        } else {
            reconciliation::JobsStatus::Disabled
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
pub async fn refresh_metrics(state: &AppState) {
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
