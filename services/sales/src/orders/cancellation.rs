//! Cancelling an order before it ships (a customer's cancellation, a staff
//! rejection): the order's compensations ([`crate::orders::compensations`], the ones the
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

use contracts::orders::{Order, OrderStatus};
use uuid::Uuid;

pub use crate::orders::compensations::{CancelError, OpenReviews};
use crate::{
    cache::OrderCache,
    db::Db,
    orders::{
        compensations::{self, SagaMark},
        reviews,
    },
    outbox::events,
    peers::{delivery::DeliveryClient, product::ProductClient},
    store::{self, Hold},
};

/// What a cancellation needs: the database, the order cache, and the two peers whose
/// work it undoes.
#[derive(Clone)]
pub struct Canceller {
    pub db: Db,
    pub cache: OrderCache,
    pub delivery: DeliveryClient,
    pub product: ProductClient,
}

/// Cancels `order_id` (see the module docs); `reason` goes to the status
/// history, `actor` names who asked (`customer`, a staff member, `system`).
pub async fn cancel_order(
    state: &Canceller,
    order_id: Uuid,
    reason: &str,
    actor: &str,
) -> Result<Order, CancelError> {
    cancel_with(state, order_id, reason, actor, OpenReviews::Resolve).await
}

/// [`cancel_order`], saying what becomes of the order's open reviews.
pub async fn cancel_with(
    state: &Canceller,
    order_id: Uuid,
    reason: &str,
    actor: &str,
    open_reviews: OpenReviews<'_>,
) -> Result<Order, CancelError> {
    // Dropping `tx` without commit (any early return) rolls back and unlocks.
    let mut tx = state.db.pool.begin().await?;
    let mut lock = store::lock(&mut tx, order_id)
        .await?
        .ok_or(CancelError::NotFound(order_id))?;
    let (current, delivery_id, hold) = (
        lock.row.status,
        lock.row.delivery_id,
        lock.row.delivery_hold,
    );
    if matches!(open_reviews, OpenReviews::Reject { .. })
        && store::reviews::open_count_of(lock.conn(), order_id).await? == 0
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
            let closed = reviews::resolve_open(lock.conn(), order_id, None, &how).await?;
            let order = if closed.is_empty() {
                lock.load().await?
            } else {
                Some(
                    lock.record_change(
                        Some(false),
                        Hold::Keep,
                        &format!("open reviews closed: order cancelled (by {actor})"),
                        events::ORDER_REVIEW_REJECTED,
                    )
                    .await?,
                )
            };
            let order = order.ok_or(CancelError::NotFound(order_id))?;
            tx.commit().await?;
            state.cache.updated(&order).await;
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
        &mut lock,
        &history,
        actor,
        open_reviews,
        Some(SagaMark { delivery_stopped }),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(%order_id, actor, reason, "order cancelled");
    // Before anything slower: a read right after the answer sees CANCELLED.
    state.cache.updated(&order).await;
    compensations::release_stock(&state.db.pool, &state.product, order_id).await;
    Ok(order)
}
