//! The availability re-check (DESIGN §4): orders accepted on the fallback while
//! product could not be asked wait in review (`AVAILABILITY_UNVERIFIED`). Once
//! product answers again (its breaker not open; a half-open breaker lets the
//! first call through as its trial), each such order's items are reserved at
//! product under the order's id (product's reservations are idempotent by
//! order) and the reservation committed:
//! - success → the review is resolved by `system` (`AVAILABILITY_CONFIRMED`),
//!   the order's flag cleared unless another review is open, its version
//!   bumped, with history and an `AVAILABILITY_CONFIRMED` event;
//! - not enough stock (or products gone from the catalog) → the review stays
//!   open as `OUT_OF_STOCK_AFTER_FALLBACK`, the short items in its details;
//! - product unavailable → nothing changes; the next round tries again.
//!
//! Several instances: an order is claimed with `FOR UPDATE SKIP LOCKED` on the
//! order row (locked before its reviews, like every writer) for the time of its
//! calls, so no two instances recheck one order at once.

use chrono::{DateTime, Utc};
use contracts::{catalog::ReservationStatus, orders::Order};
use serde_json::{Value, json};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    config::AvailabilityRecheckConfig,
    db::Db,
    orders::store,
    outbox::events,
    peers::{
        PeerError,
        product::{ProductClient, ReserveOutcome},
    },
    reviews::{self, Resolution, ReviewReason, ReviewStatus},
};

/// Counts of one round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecheckReport {
    /// Orders taken up this round.
    pub checked: usize,
    /// Reserved and committed: review resolved.
    pub confirmed: usize,
    /// Not enough stock: review kept as `OUT_OF_STOCK_AFTER_FALLBACK`.
    pub out_of_stock: usize,
    /// Orders that failed for another reason (logged; retried next round).
    pub errors: usize,
    /// Product (or its breaker, or the database breaker) refused: the round stopped.
    pub product_unavailable: bool,
}

/// What product said about one order.
enum Answer {
    Confirmed,
    /// Stock cannot be confirmed: the details for the review.
    Short(Value),
    Unavailable(PeerError),
    Failed(String),
}

/// The re-check worker.
#[derive(Clone)]
pub struct Worker {
    pub db: Db,
    pub product: ProductClient,
    pub config: AvailabilityRecheckConfig,
}

impl Worker {
    /// One round: up to `batch` orders, oldest review first.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<RecheckReport, sqlx::Error> {
        let mut report = RecheckReport::default();
        if self.db.is_open() || self.product.breaker().remaining_open().is_some() {
            report.product_unavailable = true;
            return Ok(report);
        }
        let mut seen: Vec<Uuid> = Vec::new();
        while (seen.len() as i64) < self.config.batch {
            // Holds the order's lock during the calls; dropping it rolls back.
            let mut tx = self.db.pool.begin().await?;
            let claimed: Option<(Uuid, Uuid)> = sqlx::query_as(
                "SELECT o.id, r.id FROM orders o JOIN manual_reviews r ON r.order_id = o.id
                 WHERE r.status = 'OPEN' AND r.reason = 'AVAILABILITY_UNVERIFIED'
                   AND o.fallback_used AND o.status <> 'CANCELLED' AND NOT (o.id = ANY($1))
                 ORDER BY r.created_at, r.id LIMIT 1
                 FOR UPDATE OF o SKIP LOCKED",
            )
            .bind(&seen)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((order_id, review_id)) = claimed else {
                break;
            };
            seen.push(order_id);
            report.checked += 1;
            let order = store::load(&mut tx, order_id)
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            match self.ask(&order).await {
                Answer::Confirmed => {
                    confirmed(&mut tx, order_id, review_id).await?;
                    tx.commit().await?;
                    self.db.cache.reload(&self.db.pool, order_id).await;
                    report.confirmed += 1;
                    tracing::info!(%order_id, "availability confirmed after fallback; review resolved");
                }
                Answer::Short(details) => {
                    short(&mut tx, review_id, details, now).await?;
                    tx.commit().await?;
                    report.out_of_stock += 1;
                    tracing::warn!(%order_id, "out of stock after fallback; the order stays in manual review");
                }
                Answer::Unavailable(e) => {
                    tracing::info!(%order_id, error = %e, "product unavailable; availability re-check waits for the next round");
                    report.product_unavailable = true;
                    break;
                }
                Answer::Failed(error) => {
                    tracing::warn!(%order_id, error, "availability re-check failed for order");
                    report.errors += 1;
                }
            }
        }
        Ok(report)
    }

    /// Reserves the order's items (again, if an earlier round did) and commits.
    async fn ask(&self, order: &Order) -> Answer {
        let reservation = match self.product.reserve(order.id, &order.items).await {
            Ok(ReserveOutcome::Reserved(r)) => r,
            Ok(ReserveOutcome::Insufficient(short)) => {
                return Answer::Short(json!({"short_items": short}));
            }
            Err(PeerError::Rejected { problem, .. }) if problem.status == 422 => {
                // Products gone from the catalog: they cannot be supplied either.
                return Answer::Short(json!({"unknown_products": problem.errors}));
            }
            Err(e @ PeerError::Unavailable { .. }) => return Answer::Unavailable(e),
            Err(e) => return Answer::Failed(e.to_string()),
        };
        match reservation.status {
            ReservationStatus::Committed => Answer::Confirmed,
            ReservationStatus::Active => match self.product.commit(order.id).await {
                Ok(_) => Answer::Confirmed,
                Err(e @ PeerError::Unavailable { .. }) => Answer::Unavailable(e),
                Err(PeerError::Rejected { problem, .. }) => Answer::Short(json!({
                    "reservation_status": problem.extensions.get("reservation_status"),
                    "cause": problem.detail.unwrap_or(problem.title),
                })),
            },
            // Taken by an earlier round, never committed, and since expired: its
            // units went back to stock; whether to ship is for staff now.
            other => Answer::Short(json!({
                "reservation_status": other,
                "cause": "the re-check's reservation lapsed before it was committed",
            })),
        }
    }

    /// Runs [`Worker::run_once`] every interval until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        let interval = self.config.interval;
        platform::worker::run_every(
            "availability-recheck",
            interval,
            platform::worker::Start::AfterInterval,
            token,
            || async {
                self.run_once(Utc::now()).await?;
                Ok::<_, sqlx::Error>(platform::worker::Next::Wait)
            },
        )
        .await;
    }
}

async fn confirmed(
    conn: &mut PgConnection,
    order_id: Uuid,
    review_id: Uuid,
) -> Result<(), sqlx::Error> {
    reviews::resolve_open(
        &mut *conn,
        order_id,
        Some(review_id),
        &Resolution {
            status: ReviewStatus::Resolved,
            by: "system",
            resolution: "AVAILABILITY_CONFIRMED",
            note: Some("stock reserved and committed at product after the fallback"),
        },
    )
    .await?;
    let still_open = reviews::open_count_of(&mut *conn, order_id).await?;
    store::record_change(
        conn,
        order_id,
        (still_open == 0).then_some(false),
        "availability confirmed at product; review resolved (by system)",
        events::AVAILABILITY_CONFIRMED,
    )
    .await?;
    Ok(())
}

async fn short(
    conn: &mut PgConnection,
    review_id: Uuid,
    details: Value,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut details = details;
    if let Some(map) = details.as_object_mut() {
        map.insert("rechecked_at".into(), json!(now));
    }
    sqlx::query(
        "UPDATE manual_reviews SET reason = $2, details = details || $3
         WHERE id = $1 AND status = 'OPEN'",
    )
    .bind(review_id)
    .bind(ReviewReason::OutOfStockAfterFallback.as_str())
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}
