//! Manual reviews: orders waiting for a person, with a reason code. This module
//! opens them; the staff queue that resolves them comes with the review issue.

use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// Why an order waits for a person (DESIGN §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReviewReason {
    /// Accepted while product could not be asked.
    AvailabilityUnverified,
    /// Delivery could not be initiated within the retry limits.
    DeliveryRetriesExhausted,
}

impl ReviewReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AvailabilityUnverified => "AVAILABILITY_UNVERIFIED",
            Self::DeliveryRetriesExhausted => "DELIVERY_RETRIES_EXHAUSTED",
        }
    }
}

/// Opens a review of `order_id` for `reason` in the caller's transaction, unless
/// one is already open for the same reason. Returns whether one was opened.
pub async fn open(
    conn: &mut PgConnection,
    order_id: Uuid,
    reason: ReviewReason,
    details: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let opened = sqlx::query(
        "INSERT INTO manual_reviews (id, order_id, reason, details) VALUES ($1, $2, $3, $4)
         ON CONFLICT (order_id, reason) WHERE status = 'OPEN' DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(order_id)
    .bind(reason.as_str())
    .bind(details)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(opened == 1)
}

/// Number of open reviews.
pub async fn open_count(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM manual_reviews WHERE status = 'OPEN'")
        .fetch_one(conn)
        .await
}
