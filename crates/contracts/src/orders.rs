//! Sales' API: placing and reading orders.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    Address, FieldError, LineItem,
    common::{check_items, check_text},
};

/// A customer's order request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlaceOrder {
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub customer_id: String,
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<LineItem>,
    pub shipping_address: Address,
}

impl PlaceOrder {
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_text(&mut errors, "customer_id", &self.customer_id);
        check_items(&mut errors, "items", &self.items);
        self.shipping_address.check(&mut errors, "shipping_address");
        errors
    }
}

/// Status of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    PendingShipment,
    Shipped,
    Delivered,
    Cancelled,
    DeliveryFailed,
}

crate::text_enum!(OrderStatus);

impl OrderStatus {
    pub const ALL: [Self; 5] = [
        Self::PendingShipment,
        Self::Shipped,
        Self::Delivered,
        Self::Cancelled,
        Self::DeliveryFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingShipment => "PENDING_SHIPMENT",
            Self::Shipped => "SHIPPED",
            Self::Delivered => "DELIVERED",
            Self::Cancelled => "CANCELLED",
            Self::DeliveryFailed => "DELIVERY_FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// An order as sales keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub customer_id: String,
    pub status: OrderStatus,
    pub items: Vec<LineItem>,
    pub shipping_address: Address,
    /// Set when the order was accepted without a confirmed stock check.
    pub requires_manual_review: bool,
    /// Set when product could not be asked and the availability fallback was used.
    pub fallback_used: bool,
    /// The delivery at the delivery service, once initiated.
    pub delivery_id: Option<Uuid>,
    /// Why the order's delivery has not started and will not until something happens
    /// (absent when nothing holds it back).
    #[serde(default)]
    pub delivery_hold: Option<DeliveryHold>,
    /// Per-order sequence, bumped on every change.
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What an order's delivery waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeliveryHold {
    /// Stock could not be confirmed when the order was placed (product was unavailable): the
    /// delivery starts once product confirms it, or staff approve the order.
    AvailabilityUnverified,
    /// Stock could not be confirmed afterwards either (out of stock, unknown product): a
    /// person decides whether the order ships.
    ManualReview,
}

crate::text_enum!(DeliveryHold);

impl DeliveryHold {
    pub const ALL: [Self; 2] = [Self::AvailabilityUnverified, Self::ManualReview];

    /// The value stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AvailabilityUnverified => "AVAILABILITY_UNVERIFIED",
            Self::ManualReview => "MANUAL_REVIEW",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.as_str() == s)
    }
}

/// One page of orders, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}
