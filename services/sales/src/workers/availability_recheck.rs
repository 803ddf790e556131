//! The availability re-check: orders accepted on the fallback while product
//! could not be asked wait in review (`AVAILABILITY_UNVERIFIED`), their delivery
//! held. Once product answers again, each such order's items are reserved at
//! product under the order's id (product's reservations are idempotent by
//! order) and the reservation committed:
//! - success → the review is resolved by `system` (`AVAILABILITY_CONFIRMED`),
//!   the order's flag cleared unless another review is open, its delivery hold
//!   lifted (the delivery retry row due now), its version bumped, with history
//!   and an `AVAILABILITY_CONFIRMED` event;
//! - not enough stock → the review stays open as `OUT_OF_STOCK_AFTER_FALLBACK`,
//!   the short items in its details; a product that does not exist →
//!   `UNKNOWN_PRODUCT`; either way the delivery stays held for a person
//!   (`MANUAL_REVIEW`);
//! - product unavailable → nothing changes; the round stops and the next tries again.
//!
//! It keeps pace with a backlog: a round takes up to `batch` orders, oldest review
//! first, and asks product about `concurrency` of them at once; a full round is
//! followed by another at once. An order accepted on the fallback wakes the worker;
//! while product's breaker is open it sleeps only until the breaker lets a trial
//! through (never longer than its interval), and its first call is that trial: a
//! backlog clears within one breaker reset of product's recovery.
//!
//! No transaction is open while product is asked: the answer is applied afterwards
//! in a short transaction that locks the order, and an order cancelled meanwhile
//! gets the units it was just given back at once ([`crate::orders::compensations::release_stock`]).
//! Several instances: a round holds a session advisory lock (not a transaction), so
//! one instance re-checks at a time; a round that dies releases it with its connection.

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use contracts::{
    catalog::ReservationStatus,
    orders::{DeliveryHold, Order, OrderStatus},
};
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    cache::OrderCache,
    config::AvailabilityRecheckConfig,
    db::Db,
    orders::reviews::{self, Resolution, ReviewReason, ReviewStatus},
    outbox::events,
    peers::{
        PeerError,
        product::{ProductClient, ReserveOutcome},
    },
    store::{self, Hold, OrderLock},
};

/// The wait after a round product could not answer while its breaker is not open (it
/// failed without opening it, or its open period is over and the next call is the trial).
pub const RETRY_SOON: std::time::Duration = std::time::Duration::from_millis(500);

/// Key of the session advisory lock held by a running round.
pub const LOCK_KEY: i64 = 0x5a1e_a7a1;

/// Counts of one round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecheckReport {
    /// Orders taken up this round.
    pub checked: usize,
    /// Reserved and committed: review resolved, delivery hold lifted.
    pub confirmed: usize,
    /// Not enough stock: review kept as `OUT_OF_STOCK_AFTER_FALLBACK`.
    pub out_of_stock: usize,
    /// A product does not exist: review kept as `UNKNOWN_PRODUCT`.
    pub unknown_product: usize,
    /// Orders that failed for another reason (logged; retried next round).
    pub errors: usize,
    /// Product (or its breaker, or the database breaker) refused: the round stopped.
    pub product_unavailable: bool,
    /// Another instance was re-checking: nothing done.
    pub skipped: bool,
}

/// What product said about one order.
enum Answer {
    Confirmed,
    /// Stock cannot be confirmed: the review's new reason and its details.
    Short(ReviewReason, Value),
    /// The order was cancelled meanwhile (product refuses to reserve for it).
    Cancelled,
    Unavailable(PeerError),
    Failed(String),
}

/// What applying an answer did.
enum Applied {
    Confirmed,
    Kept(ReviewReason),
    /// The order moved on meanwhile (cancelled, or the review resolved by staff).
    MovedOn,
}

/// The re-check worker.
#[derive(Clone)]
pub struct Worker {
    pub db: Db,
    pub cache: OrderCache,
    pub product: ProductClient,
    pub config: AvailabilityRecheckConfig,
    /// Notified when an order is accepted on the fallback: the worker looks at once
    /// (and, product's breaker being open, sleeps until it lets a trial through).
    pub wake: std::sync::Arc<tokio::sync::Notify>,
}

impl Worker {
    /// One round: up to `batch` orders, oldest review first, `concurrency` at a time.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<RecheckReport, sqlx::Error> {
        let mut report = RecheckReport::default();
        if self.db.is_open() || self.product.breaker().remaining_open().is_some() {
            report.product_unavailable = true;
            return Ok(report);
        }
        // A session lock on a connection of its own: held across product's calls without
        // holding a transaction open.
        let mut lock = self.db.pool.acquire().await?;
        // Another round (another instance's, or this one's woken worker) may be finishing:
        // wait a moment for it rather than skip a round that may have work.
        let mut locked = false;
        for _ in 0..50 {
            locked = store::locks::try_for_session(&mut lock, LOCK_KEY).await?;
            if locked {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if !locked {
            report.skipped = true;
            return Ok(report);
        }
        let result = self.round(now, &mut report).await;
        let unlocked = store::locks::unlock(&mut lock, LOCK_KEY).await;
        if !matches!(unlocked, Ok(true)) {
            // Never hand a connection holding the lock back to the pool.
            lock.detach();
        }
        result.map(|()| report)
    }

    async fn round(
        &self,
        now: DateTime<Utc>,
        report: &mut RecheckReport,
    ) -> Result<(), sqlx::Error> {
        let claimed = store::orders::awaiting_recheck(&self.db.pool, self.config.batch).await?;
        let stop = AtomicBool::new(false);
        let mut claimed = claimed.into_iter();
        // The first order alone: it may be the half-open breaker's one trial, which the
        // others would only be refused beside.
        let mut outcomes = Vec::with_capacity(claimed.len());
        if let Some((order_id, review_id)) = claimed.next() {
            outcomes.push(self.check_one(order_id, review_id, now, &stop).await);
        }
        let rest: Vec<Result<Option<Applied>, sqlx::Error>> = stream::iter(claimed)
            .map(|(order_id, review_id)| self.check_one(order_id, review_id, now, &stop))
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;
        outcomes.extend(rest);
        report.product_unavailable = stop.load(Ordering::SeqCst);
        for outcome in outcomes {
            match outcome {
                Ok(None) => {}
                Ok(Some(applied)) => {
                    report.checked += 1;
                    match applied {
                        Applied::Confirmed => report.confirmed += 1,
                        Applied::Kept(ReviewReason::UnknownProduct) => report.unknown_product += 1,
                        Applied::Kept(_) => report.out_of_stock += 1,
                        Applied::MovedOn => {}
                    }
                }
                Err(e) => {
                    report.checked += 1;
                    report.errors += 1;
                    tracing::warn!(error = %e, "availability re-check failed for an order");
                }
            }
        }
        Ok(())
    }

    /// Asks product about one order and applies the answer; `None` when it was not asked
    /// (product became unavailable during the round).
    async fn check_one(
        &self,
        order_id: Uuid,
        review_id: Uuid,
        now: DateTime<Utc>,
        stop: &AtomicBool,
    ) -> Result<Option<Applied>, sqlx::Error> {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let mut conn = self.db.pool.acquire().await?;
        let order = store::orders::load(&mut conn, order_id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        drop(conn);
        let answer = match self.ask(&order).await {
            Answer::Unavailable(e) => {
                if !stop.swap(true, Ordering::SeqCst) {
                    tracing::info!(%order_id, error = %e, "product unavailable; availability re-check waits for the next round");
                }
                return Ok(None);
            }
            Answer::Failed(error) => {
                return Err(sqlx::Error::Protocol(format!("order {order_id}: {error}")));
            }
            other => other,
        };
        let applied = self.apply(order_id, review_id, answer, now).await?;
        if matches!(applied, Applied::MovedOn) {
            // Cancelled while product was being asked: give back what was just taken.
            let status = store::orders::status_of(&self.db.pool, order_id).await?;
            if status == Some(OrderStatus::Cancelled) {
                crate::orders::compensations::release_stock(&self.db.pool, &self.product, order_id)
                    .await;
            }
        } else {
            self.cache.reload(&self.db.pool, order_id).await;
        }
        Ok(Some(applied))
    }

    /// Applies product's answer in one transaction, the order locked first.
    async fn apply(
        &self,
        order_id: Uuid,
        review_id: Uuid,
        answer: Answer,
        now: DateTime<Utc>,
    ) -> Result<Applied, sqlx::Error> {
        // Dropping `tx` without commit (any early return) rolls back.
        let mut tx = self.db.pool.begin().await?;
        let Some(mut lock) = store::lock(&mut tx, order_id).await? else {
            return Ok(Applied::MovedOn);
        };
        let still_open =
            store::reviews::is_open(lock.conn(), review_id, ReviewReason::AvailabilityUnverified)
                .await?;
        if lock.row.status != OrderStatus::PendingShipment || !still_open {
            return Ok(Applied::MovedOn);
        }
        let applied = match answer {
            Answer::Confirmed => {
                confirmed(&mut lock, review_id, now).await?;
                tracing::info!(%order_id, "availability confirmed after fallback; review resolved, delivery released");
                Applied::Confirmed
            }
            Answer::Short(reason, details) => {
                short(&mut lock, review_id, reason, details, now).await?;
                tracing::warn!(%order_id, reason = reason.as_str(), "stock not confirmed after fallback; the order stays in manual review");
                Applied::Kept(reason)
            }
            Answer::Cancelled => Applied::MovedOn,
            Answer::Unavailable(_) | Answer::Failed(_) => return Ok(Applied::MovedOn),
        };
        tx.commit().await?;
        Ok(applied)
    }

    /// Reserves the order's items (again, if an earlier round did) and commits.
    async fn ask(&self, order: &Order) -> Answer {
        let reservation = match self.product.reserve(order.id, &order.items).await {
            Ok(ReserveOutcome::Reserved(r)) => r,
            Ok(ReserveOutcome::Insufficient(short)) => {
                return Answer::Short(
                    ReviewReason::OutOfStockAfterFallback,
                    json!({"short_items": short}),
                );
            }
            Err(PeerError::Rejected { problem, .. }) if problem.status == 422 => {
                // Products that do not exist: staff must hear that, not "out of stock".
                let unknown: Vec<&str> = problem
                    .errors
                    .iter()
                    .filter_map(|e| item_index(&e.field))
                    .filter_map(|i| order.items.get(i))
                    .map(|i| i.product_id.as_str())
                    .collect();
                return Answer::Short(
                    ReviewReason::UnknownProduct,
                    json!({"unknown_products": unknown, "errors": problem.errors}),
                );
            }
            Err(PeerError::Rejected { problem, .. })
                if problem.status == 409 && problem.kind.ends_with("order-cancelled") =>
            {
                return Answer::Cancelled;
            }
            Err(e @ PeerError::Unavailable { .. }) => return Answer::Unavailable(e),
            Err(e) => return Answer::Failed(e.to_string()),
        };
        match reservation.status {
            ReservationStatus::Committed => Answer::Confirmed,
            ReservationStatus::Active => match self.product.commit(order.id).await {
                Ok(_) => Answer::Confirmed,
                Err(e @ PeerError::Unavailable { .. }) => Answer::Unavailable(e),
                Err(PeerError::Rejected { problem, .. }) => Answer::Short(
                    ReviewReason::OutOfStockAfterFallback,
                    json!({
                        "reservation_status": problem.extensions.get("reservation_status"),
                        "cause": problem.detail.unwrap_or(problem.title),
                    }),
                ),
            },
            // Taken by an earlier round, never committed, and since expired: its
            // units went back to stock; whether to ship is for staff now.
            other => Answer::Short(
                ReviewReason::OutOfStockAfterFallback,
                json!({
                    "reservation_status": other,
                    "cause": "the re-check's reservation lapsed before it was committed",
                }),
            ),
        }
    }

    /// Runs [`Worker::run_once`] until `token` is cancelled: again at once after a full
    /// round, else after the interval — or sooner while product is unavailable: when its
    /// breaker lets a trial through, or after [`RETRY_SOON`] when it failed without
    /// opening, so the backlog clears within one breaker reset of product's return.
    pub async fn run(self, token: CancellationToken) {
        let interval = self.config.interval;
        platform::worker::run_every_or_woken(
            "availability-recheck",
            interval,
            platform::worker::Start::AfterInterval,
            token,
            &self.wake,
            || async {
                let report = self.run_once(Utc::now()).await?;
                let full = report.checked as i64 >= self.config.batch;
                Ok::<_, sqlx::Error>(match self.product.breaker().remaining_open() {
                    Some(open) => platform::worker::Next::After(open.min(interval)),
                    None if report.product_unavailable => {
                        platform::worker::Next::After(RETRY_SOON.min(interval))
                    }
                    None if full => platform::worker::Next::Again,
                    None => platform::worker::Next::Wait,
                })
            },
        )
        .await;
    }
}

/// `items[3].product_id` → 3.
fn item_index(field: &str) -> Option<usize> {
    field
        .strip_prefix("items[")?
        .split(']')
        .next()?
        .parse()
        .ok()
}

async fn confirmed(
    lock: &mut OrderLock<'_>,
    review_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let order_id = lock.id();
    reviews::resolve_open(
        lock.conn(),
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
    let still_open = store::reviews::open_count_of(lock.conn(), order_id).await?;
    let (flag, hold) = if still_open == 0 {
        (Some(false), Hold::Clear)
    } else {
        (None, Hold::Set(DeliveryHold::ManualReview))
    };
    lock.record_change(
        flag,
        hold,
        "availability confirmed at product; review resolved (by system)",
        events::AVAILABILITY_CONFIRMED,
    )
    .await?;
    if hold == Hold::Clear {
        store::delivery_retries::release_hold(lock.conn(), order_id, now).await?;
    }
    Ok(())
}

async fn short(
    lock: &mut OrderLock<'_>,
    review_id: Uuid,
    reason: ReviewReason,
    details: Value,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut details = details;
    if let Some(map) = details.as_object_mut() {
        map.insert("rechecked_at".into(), json!(now));
    }
    store::reviews::reclassify(lock.conn(), review_id, reason, &details).await?;
    lock.record_change(
        Some(true),
        Hold::Set(DeliveryHold::ManualReview),
        &format!(
            "stock not confirmed after the fallback ({}): a person decides",
            reason.as_str()
        ),
        events::ORDER_FLAGGED_FOR_REVIEW,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::item_index;

    #[test]
    fn item_indexes_are_read_from_field_paths() {
        assert_eq!(item_index("items[3].product_id"), Some(3));
        assert_eq!(item_index("items[0]"), Some(0));
        assert_eq!(item_index("customer_id"), None);
        assert_eq!(item_index("items[x].product_id"), None);
    }
}
