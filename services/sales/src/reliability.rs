//! The reliability view: `GET /health/reliability` (breaker states and the
//! figures of the eventual-consistency machinery), and the readiness details
//! (an open database breaker makes the service not ready).

use std::{collections::BTreeMap, sync::Arc};

use axum::{Json, extract::State};
use resilience::{BreakerSnapshot, Registry};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::{
    app::AppState,
    delivery_retry,
    outbox::relay,
    reconciliation::{self, JobsStatus},
    reviews,
};

/// The seed's `ReliabilityMetrics`, growing as capabilities land.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReliabilityMetrics {
    /// State of each named breaker: `CLOSED`, `OPEN` or `HALF_OPEN`.
    pub circuit_breaker_states: BTreeMap<String, String>,
    /// Outbox rows waiting to be published (null when the database is unavailable).
    pub outbox_events_pending: Option<i64>,
    /// Dead letters: outbox rows that failed every attempt.
    pub failed_event_count: Option<i64>,
    /// Age of the oldest PENDING outbox row, in seconds.
    pub oldest_pending_age_seconds: Option<f64>,
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
}

/// Breakers, retries and reviews at a glance.
#[utoipa::path(get, path = "/health/reliability", tag = "health",
    responses((status = 200, body = ReliabilityMetrics)))]
pub async fn reliability(State(state): State<AppState>) -> Json<ReliabilityMetrics> {
    let breakers = state.breakers.snapshots();
    let now = chrono::Utc::now();
    let counts = async {
        let mut conn = state.db.pool.acquire().await?;
        let pending = delivery_retry::pending_count(&mut conn).await?;
        let reviews = reviews::open_count(&mut conn).await?;
        let jobs = reconciliation::jobs_status(
            &mut conn,
            now,
            state.config.reconciliation.interval,
            state.started_at,
        )
        .await?;
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
    Json(ReliabilityMetrics {
        circuit_breaker_states: breakers
            .iter()
            .map(|b| (b.name.clone(), b.state.as_str().to_owned()))
            .collect(),
        outbox_events_pending: outbox.map(|o| o.0),
        failed_event_count: outbox.map(|o| o.1),
        oldest_pending_age_seconds: outbox.and_then(|o| o.2),
        delivery_retries_pending: pending,
        manual_review_queue_length: reviews,
        reconciliation_jobs_status: jobs,
        breakers,
    })
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
