//! The staff manual-review queue (staff credential): orders waiting for a
//! person with their reasons, an order's full picture, and the two decisions.
//! Approving resolves the order's open reviews and clears its flag (a delivery
//! whose retries were exhausted is retried again); rejecting cancels the order
//! through its compensations ([`crate::orders::cancellation`]). Who (the authenticated
//! staff member, [`crate::staff`]), when, the resolution and the note are stored
//! on each review; a second decision on the same reviews is a 409.
//!
//! Customers' endpoints show only `requires_manual_review`; nothing here is
//! reachable without the staff credential.
//!
//! # Layout
//! - [`queue`]: `GET /review/orders` (oldest first, keyset pagination) and
//!   `GET /review/orders/{id}`.
//! - [`decide`]: `POST /review/orders/{id}/approve` and `…/reject`.

pub mod decide;
pub mod queue;

use axum::{
    Router,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use contracts::orders::{Order, OrderStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::AppState;
pub use crate::store::{delivery_retries::DeliveryRetry, orders::StatusChange, reviews::Review};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/review/orders", get(queue::list_reviews))
        .route("/review/orders/{id}", get(queue::review_detail))
        .route("/review/orders/{id}/approve", post(decide::approve))
        .route("/review/orders/{id}/reject", post(decide::reject))
}

/// The order of a queue entry, without its items.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderSummary {
    pub id: Uuid,
    pub customer_id: String,
    pub status: OrderStatus,
    pub requires_manual_review: bool,
    pub fallback_used: bool,
    pub delivery_id: Option<Uuid>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// How many lines the order has (it carries no prices: its size is its total).
    pub item_lines: i64,
    /// How many units its lines add up to.
    pub item_units: i64,
}

/// One entry of the queue: a review and its order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueEntry {
    pub review: Review,
    pub order: OrderSummary,
}

/// One page of the queue, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReviewPage {
    pub items: Vec<QueueEntry>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Everything staff need to decide about an order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReviewedOrder {
    pub order: Order,
    /// Every review of the order, oldest first.
    pub reviews: Vec<Review>,
    /// Status history, oldest first (rows with an unchanged status record flag changes).
    pub history: Vec<StatusChange>,
    /// The delivery initiation retry row, if the order has one.
    pub delivery_retry: Option<DeliveryRetry>,
    /// The order's saga (steps, attempts, compensations), if it has one.
    /// (the `GET /sagas/{id}` document)
    #[schema(value_type = Option<Object>)]
    pub saga: Option<serde_json::Value>,
}

/// A staff decision.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct Decision {
    /// Why (required, 1–2000 characters, not blank; line breaks allowed).
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]*$"
    )]
    pub note: String,
}
