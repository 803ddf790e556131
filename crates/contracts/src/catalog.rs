//! Product's API: catalog, availability checks and reservations.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    FieldError, LineItem,
    common::{check_items, check_text},
};

/// A product of the catalog with its stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Product {
    /// SKU.
    pub id: String,
    pub name: String,
    pub price_cents: i64,
    /// Units in the warehouse not yet shipped to an order (reserved units included).
    pub stock_on_hand: i32,
    /// Units held by active reservations.
    pub reserved: i32,
    /// `stock_on_hand - reserved`: what a new reservation can take.
    pub available: i32,
}

/// Staff request to add a product.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewProduct {
    /// SKU.
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub id: String,
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    pub name: String,
    #[schema(minimum = 0)]
    pub price_cents: i64,
    #[schema(minimum = 0)]
    pub stock_on_hand: i32,
}

impl NewProduct {
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_text(&mut errors, "id", &self.id);
        check_text(&mut errors, "name", &self.name);
        if self.price_cents < 0 {
            errors.push(FieldError::new("price_cents", "must not be negative"));
        }
        if self.stock_on_hand < 0 {
            errors.push(FieldError::new("stock_on_hand", "must not be negative"));
        }
        errors
    }
}

/// Staff request to set a product's stock on hand (e.g. after a stock count).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StockUpdate {
    #[schema(minimum = 0)]
    pub stock_on_hand: i32,
}

impl StockUpdate {
    pub fn validate(&self) -> Vec<FieldError> {
        if self.stock_on_hand < 0 {
            vec![FieldError::new("stock_on_hand", "must not be negative")]
        } else {
            Vec::new()
        }
    }
}

/// Read-only availability question for a set of items.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AvailabilityRequest {
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<LineItem>,
}

impl AvailabilityRequest {
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_items(&mut errors, "items", &self.items);
        errors
    }
}

/// Availability of one requested item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ItemAvailability {
    pub product_id: String,
    pub requested: i32,
    /// Units available now (0 for an unknown product).
    pub available: i32,
    pub sufficient: bool,
}

/// Answer to an availability check.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AvailabilityResponse {
    /// True when every item is sufficient.
    pub available: bool,
    pub items: Vec<ItemAvailability>,
}

/// Hold stock for an order: all items or none. Idempotent by `order_id`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReservationRequest {
    pub order_id: Uuid,
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<LineItem>,
}

impl ReservationRequest {
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_items(&mut errors, "items", &self.items);
        errors
    }
}

/// Life cycle of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationStatus {
    /// Stock is held until `expires_at`.
    Active,
    /// The order was confirmed; the units left stock for good.
    Committed,
    /// Released on request (order cancelled or rejected).
    Released,
    /// Not committed before its TTL ran out; the units went back to stock.
    Expired,
}

crate::text_enum!(ReservationStatus);

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Committed => "COMMITTED",
            Self::Released => "RELEASED",
            Self::Expired => "EXPIRED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ACTIVE" => Self::Active,
            "COMMITTED" => Self::Committed,
            "RELEASED" => Self::Released,
            "EXPIRED" => Self::Expired,
            _ => return None,
        })
    }
}

/// Stock held for one order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Reservation {
    pub order_id: Uuid,
    pub status: ReservationStatus,
    pub items: Vec<LineItem>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Most reservations one renewal request may name.
pub const MAX_RENEWALS: usize = 100;

/// Keep these orders' reservations alive (`POST /reservations/renewals`): sales asks while an
/// order's `ORDER_CREATED`, which commits the reservation, waits for the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RenewalRequest {
    /// 1 to 100 order ids.
    #[schema(min_items = 1, max_items = 100)]
    pub order_ids: Vec<Uuid>,
}

impl RenewalRequest {
    pub fn validate(&self) -> Vec<FieldError> {
        if self.order_ids.is_empty() || self.order_ids.len() > MAX_RENEWALS {
            vec![FieldError::new(
                "order_ids",
                format!("must name 1 to {MAX_RENEWALS} orders"),
            )]
        } else {
            Vec::new()
        }
    }
}

/// What a renewal did to one order's reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RenewalOutcome {
    /// Still held; its deadline pushed a TTL ahead.
    Renewed,
    /// Committed already: nothing to keep alive.
    Committed,
    /// It had lapsed (expired or released) and was taken again: stock allowed.
    Retaken,
    /// It had lapsed and the stock is gone: the order cannot be supplied as reserved.
    Gone,
    /// The order was cancelled: its stock is not held again.
    Cancelled,
    /// No reservation for this order (e.g. accepted on the fallback).
    Unknown,
}

/// One order's renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Renewal {
    pub order_id: Uuid,
    pub outcome: RenewalOutcome,
}

/// An item a reservation could not get enough of (extension `short_items` of a 409).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShortItem {
    pub product_id: String,
    pub requested: i32,
    pub available: i32,
}

/// Problem type slug of the 409 answered when stock is insufficient.
pub const INSUFFICIENT_STOCK: &str = "insufficient-stock";
