//! Operator endpoints for dead letters (staff credential): list FAILED events
//! with their errors, replay one or all (back to PENDING), discard one with a
//! reason. Every replay and discard is written to `outbox_audit` (the `outbox` crate's
//! [`dead_letters`] does the work).

use ::outbox::dead_letters;
use axum::{
    Router,
    extract::State,
    http::HeaderMap,
    routing::{get, post},
};
use contracts::{Problem, common::TextRule};
use platform::{
    ApiResult,
    auth::{Staff, staff_member as actor},
    ensure_valid,
    extract::{Json, Path},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/outbox/failed", get(list_failed))
        .route("/outbox/failed/replay", post(replay_all))
        .route("/outbox/failed/{id}/replay", post(replay_one))
        .route("/outbox/failed/{id}/discard", post(discard_one))
}

pub use ::outbox::dead_letters::FailedEvent;

/// How many events an action moved.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Moved {
    pub count: u64,
}

/// Longest reason of a discard.
pub const MAX_DISCARD_REASON: usize = 1000;

/// Why an event is discarded.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Discard {
    /// Required, 1–1000 characters, not blank; line breaks allowed.
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]*$"
    )]
    pub reason: String,
}

/// FAILED events (dead letters), oldest first.
#[utoipa::path(get, path = "/outbox/failed", tag = "outbox", security(("staff" = [])),
    responses((status = 200, body = Vec<FailedEvent>), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list_failed(
    State(state): State<AppState>,
    _staff: Staff,
) -> ApiResult<Json<Vec<FailedEvent>>> {
    state
        .db
        .guard(async { Ok(Json(dead_letters::list(&state.db.pool).await?)) })
        .await
}

async fn replay(state: &AppState, only: Option<Uuid>, actor: &str) -> ApiResult<u64> {
    Ok(dead_letters::replay(&state.db.pool, only, actor)
        .await?
        .len() as u64)
}

/// Replay every FAILED event (back to PENDING).
#[utoipa::path(post, path = "/outbox/failed/replay", tag = "outbox", security(("staff" = [])),
    responses((status = 200, body = Moved), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn replay_all(
    State(state): State<AppState>,
    _staff: Staff,
    headers: HeaderMap,
) -> ApiResult<Json<Moved>> {
    let actor = actor(&headers);
    state
        .db
        .guard(async {
            Ok(Json(Moved {
                count: replay(&state, None, &actor).await?,
            }))
        })
        .await
}

/// Replay one FAILED event.
#[utoipa::path(post, path = "/outbox/failed/{id}/replay", tag = "outbox", security(("staff" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Moved), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem, description = "No FAILED event with this id")))]
pub async fn replay_one(
    State(state): State<AppState>,
    _staff: Staff,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Moved>> {
    let actor = actor(&headers);
    state
        .db
        .guard(async {
            match replay(&state, Some(id), &actor).await? {
                0 => Err(Problem::not_found(&format!("failed event {id}")).into()),
                count => Ok(Json(Moved { count })),
            }
        })
        .await
}

/// Discard one FAILED event, with a reason; it is kept as DISCARDED.
#[utoipa::path(post, path = "/outbox/failed/{id}/discard", tag = "outbox", security(("staff" = [])),
    params(("id" = Uuid, Path)), request_body = Discard,
    responses((status = 200, body = Moved), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn discard_one(
    State(state): State<AppState>,
    _staff: Staff,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Json(body): Json<Discard>,
) -> ApiResult<Json<Moved>> {
    let mut errors = Vec::new();
    TextRule::text(true, MAX_DISCARD_REASON).check(&mut errors, "reason", &body.reason);
    ensure_valid(errors)?;
    let actor = actor(&headers);
    state
        .db
        .guard(async {
            if !dead_letters::discard(&state.db.pool, id, &actor, body.reason.trim()).await? {
                return Err(Problem::not_found(&format!("failed event {id}")).into());
            }
            Ok(Json(Moved { count: 1 }))
        })
        .await
}
