//! Delivery's API: deliveries and their courier statuses.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    Address, FieldError, LineItem,
    common::{TextRule, check_items},
};

/// Longest note of a status update.
pub const MAX_STATUS_NOTE: usize = 1000;

/// Ask for a delivery of an order. Idempotent by `order_id`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryRequest {
    pub order_id: Uuid,
    pub address: Address,
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<LineItem>,
}

impl DeliveryRequest {
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.address.check(&mut errors, "address");
        check_items(&mut errors, "items", &self.items);
        errors
    }
}

/// Courier status of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryStatus {
    Created,
    PickedUp,
    InTransit,
    Delivered,
    Failed,
    Cancelled,
}

crate::text_enum!(DeliveryStatus);

impl DeliveryStatus {
    pub const ALL: [Self; 6] = [
        Self::Created,
        Self::PickedUp,
        Self::InTransit,
        Self::Delivered,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::PickedUp => "PICKED_UP",
            Self::InTransit => "IN_TRANSIT",
            Self::Delivered => "DELIVERED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The courier's state machine: CREATED → PICKED_UP → IN_TRANSIT → DELIVERED,
    /// FAILED from the moving states, CANCELLED before pickup.
    pub fn can_become(self, next: Self) -> bool {
        use DeliveryStatus::*;
        matches!(
            (self, next),
            (Created, PickedUp)
                | (PickedUp, InTransit)
                | (InTransit, Delivered)
                | (PickedUp | InTransit, Failed)
                | (Created, Cancelled)
        )
    }
}

/// A delivery of one order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    pub id: Uuid,
    pub order_id: Uuid,
    pub status: DeliveryStatus,
    pub address: Address,
    pub items: Vec<LineItem>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Per-delivery sequence, 1 at creation and bumped on every status change; the
    /// `aggregate_version` of its `DELIVERY_STATUS_CHANGED` events.
    #[serde(default)]
    pub version: i32,
}

/// Event type of a delivery's status change (payload: the full [`Delivery`]).
pub const DELIVERY_STATUS_CHANGED: &str = "DELIVERY_STATUS_CHANGED";
/// Aggregate type of delivery events.
pub const DELIVERY_AGGREGATE: &str = "delivery";

/// Courier/ops update of a delivery's status.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryStatusUpdate {
    pub status: DeliveryStatus,
    /// What happened (up to 1000 characters; line breaks allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        max_length = 1000,
        pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]*$"
    )]
    pub note: Option<String>,
}

impl DeliveryStatusUpdate {
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(note) = &self.note {
            TextRule::text(false, MAX_STATUS_NOTE).check(&mut errors, "note", note);
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::DeliveryStatus::{self, *};

    #[test]
    fn only_the_courier_path_is_allowed() {
        let allowed: Vec<(DeliveryStatus, DeliveryStatus)> = DeliveryStatus::ALL
            .into_iter()
            .flat_map(|a| DeliveryStatus::ALL.into_iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Created, PickedUp),
                (Created, Cancelled),
                (PickedUp, InTransit),
                (PickedUp, Failed),
                (InTransit, Delivered),
                (InTransit, Failed),
            ]
        );
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for s in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        }
    }
}
