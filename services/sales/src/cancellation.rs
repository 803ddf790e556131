//! Cancelling an order before it ships: the compensations of placing it, in
//! reverse order. The delivery is cancelled at delivery (a delivery already
//! picked up makes the cancellation a 409; an order whose delivery was held has
//! none, so delivery is not asked); the order becomes CANCELLED through the state
//! machine with an `ORDER_CANCELLED` event, its delivery retry is stopped and its
//! open reviews are closed, all in one transaction; then its units are given back
//! at product directly (an active reservation released, a committed one
//! restocked) and `stock_released_at` records product's confirmation.
//!
//! No unit of stock depends on one message: if product cannot be asked now,
//! `ORDER_CANCELLED` does the same release when product consumes it, and
//! reconciliation releases the stock of cancelled orders still unconfirmed
//! ([`release_stock`], idempotent at product).
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
    ApiError, ApiResult, ensure_valid,
    extract::{Json, OptionalJson, Path},
};
use serde::Deserialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    app::AppState,
    orders::{
        status::{self, TransitionError},
        store,
    },
    outbox::events,
    peers::{
        PeerError,
        delivery::{CancelOutcome, DeliveryClient},
        product::ProductClient,
    },
    reviews::{self, Resolution, ReviewStatus},
};

pub fn router() -> Router<AppState> {
    Router::new().route("/orders/{id}/cancel", post(cancel))
}

/// Why an order was not cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// 404.
    #[error("order {0} not found")]
    NotFound(Uuid),
    /// 409: shipped already (here or at delivery), or in a final status.
    #[error("order {order_id} cannot be cancelled: {detail}")]
    NotCancellable {
        order_id: Uuid,
        status: OrderStatus,
        detail: String,
    },
    /// 409: a staff rejection found no open review (resolved meanwhile).
    #[error("order {0} has no open review")]
    NoOpenReview(Uuid),
    /// 503 with `Retry-After`: delivery could not be asked to stop the
    /// delivery; nothing changed.
    #[error("the delivery could not be cancelled: {error}")]
    DeliveryUnavailable {
        error: PeerError,
        retry_after_secs: u64,
    },
    /// 503 or 500.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<CancelError> for ApiError {
    fn from(e: CancelError) -> Self {
        match e {
            CancelError::NotFound(id) => Problem::not_found(&format!("order {id}")).into(),
            CancelError::NotCancellable { status, detail, .. } => {
                Problem::conflict("order-not-cancellable", detail)
                    .with_extension("order_status", status)
                    .into()
            }
            CancelError::NoOpenReview(id) => Problem::conflict(
                "review-already-resolved",
                format!("order {id} has no open review: it was resolved already"),
            )
            .into(),
            CancelError::DeliveryUnavailable {
                retry_after_secs, ..
            } => Problem::unavailable(
                "the delivery could not be cancelled right now; nothing was changed, try again",
                retry_after_secs,
            )
            .into(),
            CancelError::Database(e) => e.into(),
        }
    }
}

/// What happens to the order's open reviews when it is cancelled.
#[derive(Debug, Clone, Copy)]
pub enum OpenReviews<'a> {
    /// They are moot: RESOLVED, resolution `ORDER_CANCELLED`.
    Resolve,
    /// A staff rejection: REJECTED with the note; none open is a 409.
    Reject { note: &'a str },
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
            let order = if close_reviews(&mut tx, order_id, actor, open_reviews).await? {
                store::record_change(
                    &mut tx,
                    order_id,
                    Some(false),
                    store::Hold::Keep,
                    &format!("open reviews closed: order cancelled (by {actor})"),
                    events::ORDER_REVIEW_REJECTED,
                )
                .await?
            } else {
                store::load(&mut tx, order_id).await?
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
    if hold.is_none() || delivery_id.is_some() {
        stop_delivery(&state.delivery, order_id, delivery_id).await?;
    }

    // Reviews and the hold first, so the ORDER_CANCELLED event carries the final order.
    let closed = close_reviews(&mut tx, order_id, actor, open_reviews).await?;
    sqlx::query(
        "UPDATE orders SET delivery_hold = NULL,
                requires_manual_review = requires_manual_review AND NOT $2
         WHERE id = $1",
    )
    .bind(order_id)
    .bind(closed)
    .execute(&mut *tx)
    .await?;
    let history = format!("{reason} (by {actor})");
    let order = match status::transition(&mut tx, order_id, OrderStatus::Cancelled, &history).await
    {
        Ok(done) => done.into_order(),
        Err(TransitionError::NotFound(id)) => return Err(CancelError::NotFound(id)),
        Err(TransitionError::Invalid(invalid)) => {
            return Err(CancelError::NotCancellable {
                order_id,
                status: invalid.from,
                detail: invalid.to_string(),
            });
        }
        Err(TransitionError::Database(e)) => return Err(e.into()),
    };
    // The retry worker must not initiate a delivery for a cancelled order.
    sqlx::query(
        "UPDATE delivery_retries SET status = 'DONE', last_error = 'order cancelled', updated_at = now()
         WHERE order_id = $1 AND status IN ('PENDING', 'HELD')",
    )
    .bind(order_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(%order_id, actor, reason, "order cancelled");
    // Before anything slower: a read right after the answer sees CANCELLED.
    state.db.cache.updated(&order).await;

    release_stock(&state.db.pool, &state.product, order_id).await;
    // The order saga's compensations are what this did; record it as compensated.
    state.sagas.compensated_by_cancel(order_id, reason).await;
    Ok(order)
}

/// Closes the order's open reviews; returns whether there were any.
async fn close_reviews(
    conn: &mut PgConnection,
    order_id: Uuid,
    actor: &str,
    open_reviews: OpenReviews<'_>,
) -> Result<bool, CancelError> {
    let how = match open_reviews {
        OpenReviews::Resolve => Resolution {
            status: ReviewStatus::Resolved,
            by: actor,
            resolution: "ORDER_CANCELLED",
            note: None,
        },
        OpenReviews::Reject { note } => Resolution {
            status: ReviewStatus::Rejected,
            by: actor,
            resolution: "ORDER_CANCELLED",
            note: Some(note),
        },
    };
    let closed = reviews::resolve_open(&mut *conn, order_id, None, &how).await?;
    if closed.is_empty() && matches!(open_reviews, OpenReviews::Reject { .. }) {
        return Err(CancelError::NoOpenReview(order_id));
    }
    Ok(!closed.is_empty())
}

/// Cancels the order's delivery at delivery. Without a recorded delivery id,
/// asks delivery whether one was made anyway (a crash between making it and
/// recording it), best effort: the retry worker is stopped in any case.
async fn stop_delivery(
    delivery: &DeliveryClient,
    order_id: Uuid,
    delivery_id: Option<Uuid>,
) -> Result<(), CancelError> {
    let delivery_id = match delivery_id {
        Some(id) => id,
        None => match delivery.find_for_order(order_id).await {
            Ok(Some(found)) => found.id,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(%order_id, error = %e, "could not ask delivery for an unrecorded delivery; cancelling without");
                return Ok(());
            }
        },
    };
    match delivery.cancel(delivery_id).await {
        Ok(CancelOutcome::Cancelled(_) | CancelOutcome::Unknown) => Ok(()),
        Ok(CancelOutcome::TooLate { status }) => Err(CancelError::NotCancellable {
            order_id,
            status: OrderStatus::PendingShipment,
            detail: format!(
                "the delivery is {}: the order has shipped",
                status.map_or("past pickup", |s| s.as_str())
            ),
        }),
        Err(error) => {
            tracing::warn!(%order_id, %delivery_id, %error, "cancelling the delivery failed; the order is not cancelled");
            let retry_after = delivery.breaker().remaining_open().unwrap_or_default();
            Err(CancelError::DeliveryUnavailable {
                error,
                retry_after_secs: Problem::retry_after_secs(retry_after),
            })
        }
    }
}

/// Gives a cancelled order's units back at product and records product's confirmation
/// (`stock_released_at`); returns whether it was confirmed. A failure is logged and left to
/// `ORDER_CANCELLED` and to reconciliation, which calls this again.
pub async fn release_stock(pool: &sqlx::PgPool, product: &ProductClient, order_id: Uuid) -> bool {
    match product.release_cancelled(order_id).await {
        Ok(reservation) => {
            tracing::info!(%order_id, status = ?reservation.status, "cancelled order's stock released at product");
            let marked = sqlx::query(
                "UPDATE orders SET stock_released_at = now() WHERE id = $1 AND stock_released_at IS NULL",
            )
            .bind(order_id)
            .execute(pool)
            .await;
            if let Err(e) = marked {
                tracing::warn!(%order_id, error = %e, "could not record the stock release; reconciliation asks product again");
            }
            true
        }
        Err(e) => {
            tracing::warn!(%order_id, error = %e, "releasing the cancelled order's stock failed; ORDER_CANCELLED and reconciliation release it");
            false
        }
    }
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
