//! `GET /health/reliability`: the reliability figures ([`crate::reliability`]).

use axum::{Json, extract::State};
use chrono::Utc;

use super::AppState;
use crate::reliability::{ReliabilityMetrics, snapshot};

/// Breakers, retries and reviews at a glance.
#[utoipa::path(get, path = "/health/reliability", tag = "health",
    responses((status = 200, body = ReliabilityMetrics)))]
pub async fn reliability(State(state): State<AppState>) -> Json<ReliabilityMetrics> {
    Json(snapshot(&state.reliability_sources(), Utc::now()).await)
}
