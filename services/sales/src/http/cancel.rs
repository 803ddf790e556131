//! `POST /orders/{id}/cancel`: a customer's cancellation ([`crate::orders::cancellation`]).

use axum::{Router, extract::State, routing::post};
use contracts::{Problem, common::TextRule, orders::Order};
use platform::{
    ApiResult, ensure_valid,
    extract::{Json, OptionalJson, Path},
};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use crate::orders::cancellation::cancel_order;

pub fn router() -> Router<AppState> {
    Router::new().route("/orders/{id}/cancel", post(cancel))
}

/// Longest reason of a customer's cancellation.
pub const MAX_REASON: usize = 500;

/// Why the customer cancels (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CancelRequest {
    /// Up to 500 characters; line breaks allowed.
    #[serde(default)]
    #[schema(
        max_length = 500,
        pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]*$"
    )]
    pub reason: Option<String>,
}

/// Cancel an order before it ships: the delivery is cancelled, the reservation
/// released, the order CANCELLED. Repeating it is harmless.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", params(("id" = Uuid, Path)),
    request_body(content = Option<CancelRequest>,
        description = "Optional: why. No body, `null` and `{}` are the same: no reason"),
    responses(
        (status = 200, body = Order, description = "Cancelled (now or before)"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "Shipped already, or in a final status (`order_status`)"),
        (status = 422, body = Problem),
        (status = 429, body = Problem, description = "Over the client's rate limit; retry after `Retry-After`"),
        (status = 503, body = Problem, description = "Delivery or the database unavailable; nothing changed")))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    OptionalJson(request): OptionalJson<CancelRequest>,
) -> ApiResult<Json<Order>> {
    let request = request.unwrap_or_default();
    // The whole request is checked before the delivery is cancelled.
    let mut errors = Vec::new();
    if let Some(reason) = &request.reason {
        TextRule::text(false, MAX_REASON).check(&mut errors, "reason", reason);
    }
    ensure_valid(errors)?;
    let reason = request
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    let reason = reason.map_or_else(
        || "cancelled by the customer".to_owned(),
        |r| format!("cancelled by the customer: {r}"),
    );
    state
        .db
        .guard(async {
            Ok(Json(
                cancel_order(&state.canceller(), id, &reason, "customer").await?,
            ))
        })
        .await
}
