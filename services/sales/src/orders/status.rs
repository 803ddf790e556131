//! The order status state machine, in one place:
//!
//! ```text
//! PENDING_SHIPMENT ──▶ SHIPPED ──▶ DELIVERED
//!        │                └──────▶ DELIVERY_FAILED
//!        └──────────▶ CANCELLED
//! ```
//!
//! how delivery's statuses map onto it, and [`transition`], the one function
//! every writer of an order's status goes through: given the order's lock, it refuses
//! an invalid transition (returning it, never applying it), and for a valid one
//! updates the status, bumps the version and writes the history row and the
//! outbox event in the caller's transaction.

use contracts::{
    delivery::DeliveryStatus,
    orders::{Order, OrderStatus},
};
use uuid::Uuid;

use crate::{
    outbox::{self, events},
    store::OrderLock,
};

/// Whether an order in `from` may move to `to` in one step.
pub fn can_become(from: OrderStatus, to: OrderStatus) -> bool {
    use OrderStatus::*;
    matches!(
        (from, to),
        (PendingShipment, Shipped | Cancelled) | (Shipped, Delivered | DeliveryFailed)
    )
}

/// Whether no transition leaves `status`.
pub fn is_terminal(status: OrderStatus) -> bool {
    OrderStatus::ALL
        .into_iter()
        .all(|to| !can_become(status, to))
}

/// The order status a delivery status means.
pub fn from_delivery(status: DeliveryStatus) -> OrderStatus {
    match status {
        DeliveryStatus::Created => OrderStatus::PendingShipment,
        DeliveryStatus::PickedUp | DeliveryStatus::InTransit => OrderStatus::Shipped,
        DeliveryStatus::Delivered => OrderStatus::Delivered,
        DeliveryStatus::Cancelled => OrderStatus::Cancelled,
        DeliveryStatus::Failed => OrderStatus::DeliveryFailed,
    }
}

/// The steps from `from` to `to` along valid transitions (`to` last), e.g.
/// PENDING_SHIPMENT → DELIVERED is `[SHIPPED, DELIVERED]`. Empty when `from ==
/// to`; `None` when `to` cannot be reached.
pub fn path(from: OrderStatus, to: OrderStatus) -> Option<Vec<OrderStatus>> {
    if from == to {
        return Some(Vec::new());
    }
    // The graph is a tree of depth two: a direct step, or one status in between.
    if can_become(from, to) {
        return Some(vec![to]);
    }
    OrderStatus::ALL
        .into_iter()
        .find(|mid| can_become(from, *mid) && can_become(*mid, to))
        .map(|mid| vec![mid, to])
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("order {order_id} cannot go from {} to {}", from.as_str(), to.as_str())]
pub struct InvalidTransition {
    pub order_id: Uuid,
    pub from: OrderStatus,
    pub to: OrderStatus,
}

/// Why [`transition`] did not apply a change.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("order {0} not found")]
    NotFound(Uuid),
    #[error(transparent)]
    Invalid(#[from] InvalidTransition),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What [`transition`] did.
#[derive(Debug, Clone)]
pub enum Transitioned {
    /// The order moved from `from`; history and event are written.
    Applied {
        order: Box<Order>,
        from: OrderStatus,
    },
    /// The order already was in the asked status: nothing written.
    Unchanged(Box<Order>),
}

impl Transitioned {
    pub fn order(&self) -> &Order {
        match self {
            Self::Applied { order, .. } | Self::Unchanged(order) => order,
        }
    }

    pub fn into_order(self) -> Order {
        match self {
            Self::Applied { order, .. } | Self::Unchanged(order) => *order,
        }
    }

    pub fn applied(&self) -> bool {
        matches!(self, Self::Applied { .. })
    }
}

/// The event a move to `to` emits.
pub fn event_for(to: OrderStatus) -> &'static str {
    match to {
        OrderStatus::Cancelled => events::ORDER_CANCELLED,
        _ => events::ORDER_STATUS_CHANGED,
    }
}

/// Moves the locked order to `to` in the lock's transaction: asking for the current
/// status changes nothing; an invalid move is returned as [`TransitionError::Invalid`]
/// and nothing is written; a valid one updates the status, bumps `version`, appends the
/// history row (`reason`) and enqueues `ORDER_CANCELLED` (for CANCELLED, which product
/// consumes to release the reservation) or `ORDER_STATUS_CHANGED`, both carrying the
/// full order.
pub async fn transition(
    lock: &mut OrderLock<'_>,
    to: OrderStatus,
    reason: &str,
) -> Result<Transitioned, TransitionError> {
    let order_id = lock.id();
    let from = lock.row.status;
    if from == to {
        let order = lock
            .load()
            .await?
            .ok_or(TransitionError::NotFound(order_id))?;
        return Ok(Transitioned::Unchanged(Box::new(order)));
    }
    if !can_become(from, to) {
        return Err(InvalidTransition { order_id, from, to }.into());
    }
    lock.set_status(to, reason).await?;
    let order = lock
        .load()
        .await?
        .ok_or(TransitionError::NotFound(order_id))?;
    outbox::enqueue(lock.conn(), order.id, order.version, event_for(to), &order).await?;
    tracing::info!(%order_id, from = from.as_str(), to = to.as_str(), reason, "order status changed");
    Ok(Transitioned::Applied {
        order: Box::new(order),
        from,
    })
}

#[cfg(test)]
mod tests {
    use OrderStatus::*;

    use super::*;

    #[test]
    fn the_transition_table() {
        let allowed: Vec<(OrderStatus, OrderStatus)> = OrderStatus::ALL
            .into_iter()
            .flat_map(|a| OrderStatus::ALL.into_iter().map(move |b| (a, b)))
            .filter(|(a, b)| can_become(*a, *b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (PendingShipment, Shipped),
                (PendingShipment, Cancelled),
                (Shipped, Delivered),
                (Shipped, DeliveryFailed),
            ]
        );
        let terminal: Vec<OrderStatus> = OrderStatus::ALL
            .into_iter()
            .filter(|s| is_terminal(*s))
            .collect();
        assert_eq!(terminal, vec![Delivered, Cancelled, DeliveryFailed]);
    }

    #[test]
    fn delivery_statuses_map_onto_order_statuses() {
        let mapped: Vec<(&str, &str)> = DeliveryStatus::ALL
            .into_iter()
            .map(|d| (d.as_str(), from_delivery(d).as_str()))
            .collect();
        assert_eq!(
            mapped,
            vec![
                ("CREATED", "PENDING_SHIPMENT"),
                ("PICKED_UP", "SHIPPED"),
                ("IN_TRANSIT", "SHIPPED"),
                ("DELIVERED", "DELIVERED"),
                ("FAILED", "DELIVERY_FAILED"),
                ("CANCELLED", "CANCELLED"),
            ]
        );
    }

    #[test]
    fn paths_follow_valid_steps_only() {
        assert_eq!(
            path(PendingShipment, Delivered),
            Some(vec![Shipped, Delivered])
        );
        assert_eq!(
            path(PendingShipment, DeliveryFailed),
            Some(vec![Shipped, DeliveryFailed])
        );
        assert_eq!(path(PendingShipment, Cancelled), Some(vec![Cancelled]));
        assert_eq!(path(Shipped, Shipped), Some(vec![]));
        assert_eq!(path(Shipped, PendingShipment), None);
        assert_eq!(path(Shipped, Cancelled), None);
        assert_eq!(path(Delivered, DeliveryFailed), None);
        assert_eq!(path(Cancelled, Shipped), None);
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                if let Some(steps) = path(from, to) {
                    let mut at = from;
                    for step in steps {
                        assert!(can_become(at, step), "{from:?} → {to:?}");
                        at = step;
                    }
                    assert_eq!(at, to);
                }
            }
        }
    }

    #[test]
    fn only_cancellation_emits_order_cancelled() {
        assert_eq!(event_for(Cancelled), "ORDER_CANCELLED");
        for to in [Shipped, Delivered, DeliveryFailed] {
            assert_eq!(event_for(to), "ORDER_STATUS_CHANGED");
        }
    }
}
