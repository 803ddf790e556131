//! Following delivery's statuses: one implementation for the two ways sales learns one,
//! the `DELIVERY_STATUS_CHANGED` events delivery publishes (the path: within a second of
//! the change) and reconciliation (the safety net: it asks delivery).
//!
//! [`apply`] maps the delivery's status onto the order's
//! ([`crate::orders::status::from_delivery`]) in the caller's transaction, the order row
//! locked:
//! - the same status → nothing to do;
//! - reachable along valid transitions → applied step by step (e.g. PENDING_SHIPMENT →
//!   SHIPPED → DELIVERED), each with its history row and `ORDER_STATUS_CHANGED` event; a
//!   failed delivery also opens a `DELIVERY_FAILED` review;
//! - not reachable → never applied: an `INVALID_STATUS_TRANSITION` review with `from`/`to`
//!   in its details.
//!
//! It also records the delivery's version on the order (`orders.delivery_version`, never
//! lowered), so an event older than what was applied is ignored.
//!
//! `workers::delivery_events` is the SQS handler of delivery's events: each one is applied in one
//! transaction with its inbox row (`delivery_events_inbox`, keyed by event id), so a
//! redelivered event changes nothing, and an event whose delivery version is not newer than
//! the order's is acknowledged and ignored. Delivery's `CREATED` events never reach it: the
//! queue's subscription filters them out (sales records the delivery id itself when it
//! initiates the delivery, so they would cost a transaction each and change nothing).

use contracts::{delivery::Delivery, orders::OrderStatus};
use serde_json::json;

use crate::{
    orders::{
        reviews::{self, ReviewReason},
        status::{self, TransitionError},
    },
    store::OrderLock,
};

/// Who learnt the delivery's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Delivery's `DELIVERY_STATUS_CHANGED` event.
    Event,
    /// Reconciliation asked delivery.
    Reconciliation,
}

/// What applying a delivery's status to its order came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The order already shows what the delivery implies.
    Consistent,
    /// The order's status was corrected; `flagged` when a `DELIVERY_FAILED` review opened.
    Fixed { flagged: bool },
    /// No valid path: an `INVALID_STATUS_TRANSITION` review (`opened` unless already open).
    Flagged { opened: bool },
}

/// Applies `delivery`'s status to the locked order (see the module docs).
pub async fn apply(
    lock: &mut OrderLock<'_>,
    delivery: &Delivery,
    source: Source,
) -> Result<Settled, TransitionError> {
    let order_id = lock.id();
    let current = lock.row.status;
    lock.record_delivery_version(delivery.version).await?;
    let target = status::from_delivery(delivery.status);
    if current == target {
        return Ok(Settled::Consistent);
    }
    let Some(steps) = status::path(current, target) else {
        tracing::warn!(%order_id, current = current.as_str(), expected = target.as_str(),
            delivery_status = delivery.status.as_str(), ?source,
            "Order status inconsistency detected; flagged for manual review");
        let details = json!({
            "from": current, "to": target,
            "delivery_id": delivery.id, "delivery_status": delivery.status,
        });
        let opened =
            reviews::open_flagged(lock, ReviewReason::InvalidStatusTransition, &details).await?;
        return Ok(Settled::Flagged { opened });
    };
    let reason = match source {
        Source::Reconciliation => format!(
            "reconciled with delivery {} ({})",
            delivery.id,
            delivery.status.as_str()
        ),
        Source::Event => format!("delivery {} is {}", delivery.id, delivery.status.as_str()),
    };
    for step in steps {
        status::transition(lock, step, &reason).await?;
    }
    match source {
        Source::Reconciliation => {
            tracing::info!(%order_id, from = current.as_str(), to = target.as_str(),
            delivery_status = delivery.status.as_str(), "Order status reconciled")
        }
        Source::Event => tracing::info!(%order_id, from = current.as_str(), to = target.as_str(),
            delivery_status = delivery.status.as_str(), "Order status follows its delivery"),
    }
    let flagged = if target == OrderStatus::DeliveryFailed {
        let details = json!({"delivery_id": delivery.id, "delivery_status": delivery.status});
        reviews::open_flagged(lock, ReviewReason::DeliveryFailed, &details).await?
    } else {
        false
    };
    Ok(Settled::Fixed { flagged })
}
