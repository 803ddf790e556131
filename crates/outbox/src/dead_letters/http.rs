//! The dead-letter endpoints of a service (staff credential): `GET /outbox/failed` lists
//! FAILED events with their errors, `POST /outbox/failed/replay` and
//! `POST /outbox/failed/{id}/replay` put them back to PENDING, `POST /outbox/failed/{id}/discard`
//! discards one with a reason. Each action is audited ([`super`]). Generic over the service's
//! state, which provides a [`Store`] (its pool, and the breaker its database work runs behind,
//! if any) and the staff token through `FromRef`. The handlers carry their OpenAPI description;
//! a service lists them in its document's `paths`.

use axum::{
    Router,
    extract::{FromRef, State},
    http::HeaderMap,
    routing::{get, post},
};
use contracts::{Problem, common::TextRule};
use platform::{
    ApiResult,
    auth::{Staff, StaffToken, staff_member as actor},
    ensure_valid,
    extract::{Json, Path},
};
use resilience::CircuitBreaker;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::FailedEvent;

/// What the endpoints need of a service: the database holding its outbox, and the breaker
/// its requests' database work runs behind (none: the work runs as is).
#[derive(Clone)]
pub struct Store {
    pub pool: PgPool,
    pub breaker: Option<CircuitBreaker>,
}

impl Store {
    async fn guard<T>(&self, work: impl Future<Output = ApiResult<T>>) -> ApiResult<T> {
        match &self.breaker {
            Some(breaker) => platform::db::guard(breaker, work).await,
            None => work.await,
        }
    }
}

/// The routes, for a state `S` that provides a [`Store`] and the [`StaffToken`].
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Store: FromRef<S>,
    StaffToken: FromRef<S>,
{
    Router::new()
        .route("/outbox/failed", get(list_failed::<S>))
        .route("/outbox/failed/replay", post(replay_all::<S>))
        .route("/outbox/failed/{id}/replay", post(replay_one::<S>))
        .route("/outbox/failed/{id}/discard", post(discard_one::<S>))
}

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
pub async fn list_failed<S>(
    State(state): State<S>,
    _staff: Staff,
) -> ApiResult<Json<Vec<FailedEvent>>>
where
    Store: FromRef<S>,
{
    let store = Store::from_ref(&state);
    store
        .guard(async { Ok(Json(super::list(&store.pool).await?)) })
        .await
}

async fn replay<S>(state: &S, only: Option<Uuid>, headers: &HeaderMap) -> ApiResult<u64>
where
    Store: FromRef<S>,
{
    let store = Store::from_ref(state);
    let actor = actor(headers);
    store
        .guard(async { Ok(super::replay(&store.pool, only, &actor).await?.len() as u64) })
        .await
}

/// Replay every FAILED event (back to PENDING).
#[utoipa::path(post, path = "/outbox/failed/replay", tag = "outbox", security(("staff" = [])),
    responses((status = 200, body = Moved), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn replay_all<S>(
    State(state): State<S>,
    _staff: Staff,
    headers: HeaderMap,
) -> ApiResult<Json<Moved>>
where
    Store: FromRef<S>,
{
    Ok(Json(Moved {
        count: replay(&state, None, &headers).await?,
    }))
}

/// Replay one FAILED event.
#[utoipa::path(post, path = "/outbox/failed/{id}/replay", tag = "outbox", security(("staff" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Moved), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem, description = "No FAILED event with this id")))]
pub async fn replay_one<S>(
    State(state): State<S>,
    _staff: Staff,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Moved>>
where
    Store: FromRef<S>,
{
    match replay(&state, Some(id), &headers).await? {
        0 => Err(Problem::not_found(&format!("failed event {id}")).into()),
        count => Ok(Json(Moved { count })),
    }
}

/// Discard one FAILED event, with a reason; it is kept as DISCARDED.
#[utoipa::path(post, path = "/outbox/failed/{id}/discard", tag = "outbox", security(("staff" = [])),
    params(("id" = Uuid, Path)), request_body = Discard,
    responses((status = 200, body = Moved), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn discard_one<S>(
    State(state): State<S>,
    _staff: Staff,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Json(body): Json<Discard>,
) -> ApiResult<Json<Moved>>
where
    Store: FromRef<S>,
{
    let mut errors = Vec::new();
    TextRule::text(true, MAX_DISCARD_REASON).check(&mut errors, "reason", &body.reason);
    ensure_valid(errors)?;
    let store = Store::from_ref(&state);
    let actor = actor(&headers);
    store
        .guard(async {
            if !super::discard(&store.pool, id, &actor, body.reason.trim()).await? {
                return Err(Problem::not_found(&format!("failed event {id}")).into());
            }
            Ok(Json(Moved { count: 1 }))
        })
        .await
}
