//! Cancelling an order before it ships (a customer's cancellation, a staff
//! rejection): the order's compensations ([`crate::compensations`], the ones the
//! order saga runs too), in reverse order. The delivery is cancelled at delivery (a
//! delivery already picked up makes the cancellation a 409; an order whose delivery
//! was held has none, so delivery is not asked); the order becomes CANCELLED through
//! the state machine with an `ORDER_CANCELLED` event, its delivery retry is stopped,
//! its open reviews are closed and its saga marked compensated, all in one
//! transaction; then its units are given back at product directly (an active
//! reservation released, a committed one restocked) and `stock_released_at` records
//! product's confirmation.
//!
//! No unit of stock depends on one message: if product cannot be asked now,
//! `ORDER_CANCELLED` does the same release when product consumes it, and
//! reconciliation releases the stock of cancelled orders still unconfirmed
//! ([`compensations::release_stock`], idempotent at product).
//!
//! The order row stays locked from the first read to the commit, delivery call
//! included, so a cancellation, a staff decision and reconciliation never
//! interleave on one order. Cancelling a cancelled order changes nothing and
//! answers the order again, so a retried request is safe.

use axum::{Router, extract::State, routing::post};
use contracts::{
    Problem,
    common::TextRule,
    orders::{Order, OrderStatus},
};
use platform::{
    ApiResult, ensure_valid,
    extract::{Json, OptionalJson, Path},
};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

pub use crate::compensations::{CancelError, OpenReviews};
use crate::{
    app::AppState,
    compensations::{self, SagaMark},
    orders::store,
    outbox::events,
    reviews,
};

pub fn router() -> Router<AppState> {
    Router::new().route("/orders/{id}/cancel", post(cancel))
}

/// Cancels `order_id` (see the module docs); `reason` goes to the status
/// history, `actor` names who asked (`customer`, a staff member, `system`).
pub async fn cancel_order(
    state: &AppState,
    order_id: Uuid,
    reason: &str,
    actor: &str,
) -> Result<Order, CancelError> {
    cancel_with(state, order_id, reason, actor, OpenReviews::Resolve).await
}

/// [`cancel_order`], saying what becomes of the order's open reviews.
pub async fn cancel_with(
    state: &AppState,
    order_id: Uuid,
    reason: &str,
    actor: &str,
    open_reviews: OpenReviews<'_>,
) -> Result<Order, CancelError> {
    // Dropping `tx` without commit (any early return) rolls back and unlocks.
    let mut tx = state.db.pool.begin().await?;
    let row: Option<(String, Option<Uuid>, Option<String>)> = sqlx::query_as(
        "SELECT status, delivery_id, delivery_hold FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (current, delivery_id, hold) = row.ok_or(CancelError::NotFound(order_id))?;
    let current = OrderStatus::parse(&current).ok_or(CancelError::NotFound(order_id))?;
    if matches!(open_reviews, OpenReviews::Reject { .. })
        && reviews::open_count_of(&mut tx, order_id).await? == 0
    {
        return Err(CancelError::NoOpenReview(order_id));
    }
    match current {
        OrderStatus::Cancelled => {
            // A repeat: the compensations ran when it was cancelled.
            let how = match open_reviews {
                OpenReviews::Resolve => reviews::Resolution {
                    status: reviews::ReviewStatus::Resolved,
                    by: actor,
                    resolution: "ORDER_CANCELLED",
                    note: None,
                },
                OpenReviews::Reject { note } => reviews::Resolution {
                    status: reviews::ReviewStatus::Rejected,
                    by: actor,
                    resolution: "ORDER_CANCELLED",
                    note: Some(note),
                },
            };
            let closed = reviews::resolve_open(&mut tx, order_id, None, &how).await?;
            let order = if closed.is_empty() {
                store::load(&mut tx, order_id).await?
            } else {
                store::record_change(
                    &mut tx,
                    order_id,
                    Some(false),
                    store::Hold::Keep,
                    &format!("open reviews closed: order cancelled (by {actor})"),
                    events::ORDER_REVIEW_REJECTED,
                )
                .await?
            };
            let order = order.ok_or(CancelError::NotFound(order_id))?;
            tx.commit().await?;
            state.db.cache.updated(&order).await;
            return Ok(order);
        }
        OrderStatus::PendingShipment => {}
        other => {
            return Err(CancelError::NotCancellable {
                order_id,
                status: other,
                detail: format!(
                    "the order is {}; only an order pending shipment can be cancelled",
                    other.as_str()
                ),
            });
        }
    }

    // A held delivery was never initiated: nothing to undo at delivery.
    let delivery_stopped = hold.is_none() || delivery_id.is_some();
    if delivery_stopped {
        compensations::stop_delivery(&state.delivery, order_id, delivery_id).await?;
    }
    let history = format!("{reason} (by {actor})");
    let order = compensations::cancel_recorded(
        &mut tx,
        order_id,
        &history,
        actor,
        open_reviews,
        Some(SagaMark { delivery_stopped }),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(%order_id, actor, reason, "order cancelled");
    // Before anything slower: a read right after the answer sees CANCELLED.
    state.db.cache.updated(&order).await;
    compensations::release_stock(&state.db.pool, &state.product, order_id).await;
    Ok(order)
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
        .guard(async { Ok(Json(cancel_order(&state, id, &reason, "customer").await?)) })
        .await
}
