//! Dead letters over HTTP: operator endpoints (staff credential): the `outbox` crate's
//! [`::outbox::dead_letters::http`] endpoints (list FAILED events, replay one or all, discard
//! one with a reason; every action audited), over sales' database behind its breaker.

pub use ::outbox::dead_letters::{
    FailedEvent,
    http::{
        __path_discard_one, __path_list_failed, __path_replay_all, __path_replay_one, Discard,
        MAX_DISCARD_REASON, Moved, Store, discard_one, list_failed, replay_all, replay_one,
    },
};
use axum::{Router, extract::FromRef};

use crate::http::AppState;

/// The endpoints' database work runs behind the database breaker, like every request's.
impl FromRef<AppState> for Store {
    fn from_ref(state: &AppState) -> Self {
        Store {
            pool: state.db.pool.clone(),
            breaker: Some(state.db.breaker.clone()),
        }
    }
}

pub fn router() -> Router<AppState> {
    ::outbox::dead_letters::http::router()
}
