//! The order's compensations, one implementation for the order saga
//! (`placement`), a customer's cancellation and a staff rejection
//! ([`crate::orders::cancellation`]):
//! - [`stop_delivery`]: cancel the order's delivery at delivery (too late once picked up);
//! - [`cancel_recorded`]: in the caller's transaction, the order locked: its open reviews
//!   closed, its delivery hold cleared, its status CANCELLED (history, `ORDER_CANCELLED`),
//!   its delivery retry stopped, and (for a cancellation) its saga marked compensated;
//! - [`release_stock`]: a cancelled order's units back at product, confirmed in
//!   `stock_released_at`; [`release_abandoned`]: the reservation of an order never recorded;
//! - [`cancel_made_delivery`]: a delivery made for an order cancelled meanwhile.

use contracts::{
    Problem,
    delivery::DeliveryStatus,
    orders::{Order, OrderStatus},
};
use platform::ApiError;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    orders::{
        reviews::{self, Resolution, ReviewStatus},
        saga_steps as steps,
        status::{self, TransitionError},
    },
    peers::{
        PeerError,
        delivery::{CancelOutcome, DeliveryClient},
        product::ProductClient,
    },
    store::{self, OrderLock},
};

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

/// Cancels the order's delivery at delivery. Without a recorded delivery id,
/// asks delivery whether one was made anyway (a crash between making it and
/// recording it), best effort.
pub async fn stop_delivery(
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
                status.map_or("past pickup", DeliveryStatus::as_str)
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

/// Cancels a delivery made for an order cancelled while it was being made.
pub async fn cancel_made_delivery(delivery: &DeliveryClient, order_id: Uuid, delivery_id: Uuid) {
    match delivery.cancel(delivery_id).await {
        Ok(outcome) => {
            tracing::warn!(%order_id, %delivery_id, ?outcome, "delivery of a cancelled order cancelled")
        }
        Err(e) => {
            tracing::error!(%order_id, %delivery_id, error = %e, "could not cancel the delivery of a cancelled order; it must be cancelled at delivery")
        }
    }
}

/// The order part of a cancellation, in the lock's transaction (its status pending
/// shipment): open reviews closed as `open_reviews`
/// says, delivery hold cleared, status CANCELLED with `reason` in the history and an
/// `ORDER_CANCELLED` event carrying the final order, the delivery retry stopped. With
/// `saga` set (a cancellation from outside the saga), the order's saga is marked
/// compensated in the same transaction, its compensations being what this and its
/// caller did; `delivery_stopped` says whether a delivery was cancelled.
pub async fn cancel_recorded(
    lock: &mut OrderLock<'_>,
    reason: &str,
    actor: &str,
    open_reviews: OpenReviews<'_>,
    saga: Option<SagaMark>,
) -> Result<Order, CancelError> {
    // Reviews and the hold first, so the ORDER_CANCELLED event carries the final order.
    let order_id = lock.id();
    let closed = close_reviews(lock.conn(), order_id, actor, open_reviews).await?;
    lock.clear_hold(closed).await?;
    let order = match status::transition(lock, OrderStatus::Cancelled, reason).await {
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
    store::delivery_retries::stop(lock).await?;
    if let Some(mark) = saga {
        let mut undone = Vec::new();
        if mark.delivery_stopped {
            undone.push(steps::INITIATE_DELIVERY);
        }
        undone.push(steps::RECORD_ORDER);
        if !order.fallback_used {
            undone.push(steps::RESERVE_INVENTORY);
        }
        // The saga's id is the order's (a saga still running sees the cancellation itself).
        if let Err(e) = saga::store::mark_compensated(lock.conn(), order_id, reason, &undone).await
        {
            match e {
                saga::Error::Database(e) => return Err(e.into()),
                other => {
                    tracing::warn!(%order_id, error = %other, "order saga not marked compensated")
                }
            }
        }
    }
    Ok(order)
}

/// How a cancellation from outside the saga marks it.
#[derive(Debug, Clone, Copy)]
pub struct SagaMark {
    /// A delivery was cancelled at delivery.
    pub delivery_stopped: bool,
}

/// Closes the order's open reviews; returns whether there were any.
async fn close_reviews(
    conn: &mut sqlx::PgConnection,
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

/// Gives a cancelled order's units back at product and records product's confirmation
/// (`stock_released_at`); returns whether it was confirmed. A failure is logged and left to
/// `ORDER_CANCELLED` and to reconciliation, which calls this again.
pub async fn release_stock(pool: &PgPool, product: &ProductClient, order_id: Uuid) -> bool {
    match product.release_cancelled(order_id).await {
        Ok(reservation) => {
            tracing::info!(%order_id, status = ?reservation.status, "cancelled order's stock released at product");
            let marked = store::orders::mark_stock_released(pool, order_id).await;
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

/// Releases the reservation of an order that was never recorded (its placement was given
/// up); a reservation committed meanwhile is left to `ORDER_CANCELLED`, one that does not
/// exist is fine. A failure leaves it to the reservation's TTL.
pub async fn release_abandoned(product: &ProductClient, order_id: Uuid) -> Result<(), PeerError> {
    match product.release(order_id).await {
        Ok(()) => Ok(()),
        Err(PeerError::Rejected { problem, .. }) if problem.status == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
