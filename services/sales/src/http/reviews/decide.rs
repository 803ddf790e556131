//! Staff decisions on an order's open reviews: approve (the order proceeds)
//! or reject (the order is cancelled through its compensations).

use axum::{extract::State, http::HeaderMap};
use contracts::{Problem, common::TextRule};
use platform::{
    ApiResult,
    auth::{Staff, staff_member},
    ensure_valid,
    extract::{Json, Path},
};
use uuid::Uuid;

use super::{Decision, ReviewedOrder, queue};
use crate::{
    http::AppState,
    orders::{
        cancellation::{self, OpenReviews},
        reviews,
    },
};

/// Longest note.
pub const MAX_NOTE: usize = 2000;

/// The note of a decision: required, 1–2000 characters, line breaks allowed (no
/// other control characters). Checked before anything is read or changed.
pub fn note(decision: &Decision) -> ApiResult<String> {
    let mut errors = Vec::new();
    TextRule::text(true, MAX_NOTE).check(&mut errors, "note", &decision.note);
    ensure_valid(errors)?;
    Ok(decision.note.trim().to_owned())
}

/// Approve an order's open reviews: the flag is cleared and the order proceeds
/// (a delivery whose retries were exhausted is retried again).
#[utoipa::path(post, path = "/review/orders/{id}/approve", tag = "review",
    params(("id" = Uuid, Path)),
    request_body = Decision, security(("staff" = [])),
    responses((status = 200, body = ReviewedOrder), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "No open review: resolved already"),
        (status = 422, body = Problem, description = "No note, or one that is blank, too long or holds control characters"), (status = 503, body = Problem)))]
pub async fn approve(
    State(state): State<AppState>,
    _staff: Staff,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Json(decision): Json<Decision>,
) -> ApiResult<Json<ReviewedOrder>> {
    let note = note(&decision)?;
    approve_order(&state, id, &staff_member(&headers), &note)
        .await
        .map(Json)
}

/// Approves order `id`'s open reviews as `actor` (an authenticated staff member)
/// with a checked `note`; the order's picture after the decision.
pub async fn approve_order(
    state: &AppState,
    id: Uuid,
    actor: &str,
    note: &str,
) -> ApiResult<ReviewedOrder> {
    state
        .db
        .guard(async {
            let closed = reviews::approve(&state.db.pool, &state.cache, id, actor, note).await?;
            tracing::info!(order_id = %id, actor, reviews = closed, "manual review approved");
            queue::detail(state, id).await
        })
        .await
}

/// Reject an order in review: it is cancelled (delivery cancelled, reservation
/// released, status CANCELLED, `ORDER_CANCELLED`) and its reviews REJECTED.
#[utoipa::path(post, path = "/review/orders/{id}/reject", tag = "review",
    params(("id" = Uuid, Path)),
    request_body = Decision, security(("staff" = [])),
    responses((status = 200, body = ReviewedOrder), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "No open review, or the order has shipped and cannot be cancelled"),
        (status = 422, body = Problem, description = "No note, or one that is blank, too long or holds control characters"),
        (status = 503, body = Problem, description = "Delivery or the database unavailable; nothing changed")))]
pub async fn reject(
    State(state): State<AppState>,
    _staff: Staff,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Json(decision): Json<Decision>,
) -> ApiResult<Json<ReviewedOrder>> {
    let note = note(&decision)?;
    reject_order(&state, id, &staff_member(&headers), &note)
        .await
        .map(Json)
}

/// Rejects order `id` as `actor` (an authenticated staff member) with a checked
/// `note`: it is cancelled; the order's picture after the decision.
pub async fn reject_order(
    state: &AppState,
    id: Uuid,
    actor: &str,
    note: &str,
) -> ApiResult<ReviewedOrder> {
    state
        .db
        .guard(async {
            cancellation::cancel_with(
                &state.canceller(),
                id,
                &format!("rejected in review: {note}"),
                actor,
                OpenReviews::Reject { note },
            )
            .await?;
            tracing::info!(order_id = %id, actor, "manual review rejected; order cancelled");
            queue::detail(state, id).await
        })
        .await
}
