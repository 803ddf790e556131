//! `orders`, `order_items` and `order_status_history`: every SQL statement on them.
//! Inserting an order with its items, history and event in the caller's transaction,
//! reading orders with their items, and [`OrderLock`], the lock a writer takes first.

use chrono::{DateTime, Utc};
use contracts::{
    Address, LineItem,
    orders::{DeliveryHold, Order, OrderStatus},
};
use sqlx::{PgConnection, PgPool, types::Json as Jsonb};
use uuid::Uuid;

use crate::outbox::{self, events};

/// The columns of an order as read (spelled out in each query: the query macros take
/// literals only).
struct OrderRow {
    id: Uuid,
    customer_id: String,
    status: OrderStatus,
    shipping_address: Jsonb<Address>,
    requires_manual_review: bool,
    fallback_used: bool,
    delivery_id: Option<Uuid>,
    delivery_hold: Option<DeliveryHold>,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl OrderRow {
    fn into_order(self, items: Vec<LineItem>) -> Order {
        Order {
            id: self.id,
            customer_id: self.customer_id,
            status: self.status,
            items,
            shipping_address: self.shipping_address.0,
            requires_manual_review: self.requires_manual_review,
            fallback_used: self.fallback_used,
            delivery_id: self.delivery_id,
            delivery_hold: self.delivery_hold,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// An order row locked (`SELECT … FOR UPDATE`) in the caller's transaction, as it was
/// when locked. Every writer of an order takes it first ([`lock`]) — the order before its
/// retry row and reviews, so two writers never wait on each other in opposite orders —
/// and changes the row through it ([`OrderLock::record_change`], [`OrderLock::set_status`],
/// [`OrderLock::clear_hold`]); the other tables' writers that must hold it take it as
/// `&mut OrderLock`, and their SQL runs on its connection ([`OrderLock::conn`]).
pub struct OrderLock<'c> {
    conn: &'c mut PgConnection,
    /// The row when it was locked.
    pub row: Locked,
}

/// The locked row's fields the writers decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    pub id: Uuid,
    pub status: OrderStatus,
    pub delivery_id: Option<Uuid>,
    pub delivery_hold: Option<DeliveryHold>,
    /// The newest delivery version applied.
    pub delivery_version: i32,
    pub requires_manual_review: bool,
}

/// Locks order `id` in the caller's transaction; `None` if it does not exist.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<OrderLock<'_>>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT status AS "status: OrderStatus", delivery_id,
                  delivery_hold AS "delivery_hold: DeliveryHold", delivery_version,
                  requires_manual_review
           FROM orders WHERE id = $1 FOR UPDATE"#,
        id
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| OrderLock {
        conn,
        row: Locked {
            id,
            status: r.status,
            delivery_id: r.delivery_id,
            delivery_hold: r.delivery_hold,
            delivery_version: r.delivery_version,
            requires_manual_review: r.requires_manual_review,
        },
    }))
}

impl OrderLock<'_> {
    pub fn id(&self) -> Uuid {
        self.row.id
    }

    /// The transaction holding the lock, for the SQL of the order's other tables.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn
    }

    /// Reads the order as it is now, with its items.
    pub async fn load(&mut self) -> Result<Option<Order>, sqlx::Error> {
        load(self.conn, self.row.id).await
    }

    /// Sets the status (bumping the version) and appends its history row. The state
    /// machine (`orders::status::transition`) is the one caller.
    pub async fn set_status(&mut self, to: OrderStatus, reason: &str) -> Result<(), sqlx::Error> {
        let from = self.row.status;
        sqlx::query!(
            "UPDATE orders SET status = $2, version = version + 1, updated_at = now() WHERE id = $1",
            self.row.id,
            to as _,
        )
        .execute(&mut *self.conn)
        .await?;
        record_status(&mut *self.conn, self.row.id, Some(from), to, reason).await?;
        self.row.status = to;
        Ok(())
    }

    /// Clears the delivery hold, and the review flag when `reviews_closed` (a cancellation,
    /// before its `ORDER_CANCELLED` is written).
    pub async fn clear_hold(&mut self, reviews_closed: bool) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "UPDATE orders SET delivery_hold = NULL,
                    requires_manual_review = requires_manual_review AND NOT $2
             WHERE id = $1",
            self.row.id,
            reviews_closed,
        )
        .execute(&mut *self.conn)
        .await?;
        self.row.delivery_hold = None;
        self.row.requires_manual_review &= !reviews_closed;
        Ok(())
    }

    /// Records that reconciliation looked at the order now; returns when it last changed.
    pub async fn mark_reconciled(
        &mut self,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, sqlx::Error> {
        sqlx::query_scalar!(
            "UPDATE orders SET last_reconciled_at = $2 WHERE id = $1 RETURNING updated_at",
            self.row.id,
            now,
        )
        .fetch_one(&mut *self.conn)
        .await
    }

    /// Records the newest delivery version applied (never lowered).
    pub async fn record_delivery_version(&mut self, version: i32) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "UPDATE orders SET delivery_version = GREATEST(delivery_version, $2) WHERE id = $1",
            self.row.id,
            version,
        )
        .execute(&mut *self.conn)
        .await?;
        self.row.delivery_version = self.row.delivery_version.max(version);
        Ok(())
    }

    /// Records a change of the order that keeps its status (a review flag set or
    /// cleared, availability confirmed…): sets `requires_manual_review` when given and the
    /// delivery hold as `hold` says, bumps the version, appends a history row (status
    /// unchanged, `reason`) and enqueues `event_type` with the full order. (A caller
    /// changing the hold moves the order's delivery retry row with it:
    /// [`super::delivery_retries::release_hold`].)
    pub async fn record_change(
        &mut self,
        requires_manual_review: Option<bool>,
        hold: Hold,
        reason: &str,
        event_type: &str,
    ) -> Result<Order, sqlx::Error> {
        let (set_hold, hold_value) = match hold {
            Hold::Keep => (false, None),
            Hold::Set(h) => (true, Some(h)),
            Hold::Clear => (true, None),
        };
        let order_id = self.row.id;
        let conn = &mut *self.conn;
        let status = sqlx::query_scalar!(
            r#"UPDATE orders SET requires_manual_review = COALESCE($2, requires_manual_review),
                    delivery_hold = CASE WHEN $3 THEN $4 ELSE delivery_hold END,
                    version = version + 1, updated_at = now()
               WHERE id = $1 RETURNING status AS "status: OrderStatus""#,
            order_id,
            requires_manual_review,
            set_hold,
            hold_value as _,
        )
        .fetch_one(&mut *conn)
        .await?;
        record_status(&mut *conn, order_id, Some(status), status, reason).await?;
        let order = load(&mut *conn, order_id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        outbox::enqueue(&mut *conn, order.id, order.version, event_type, &order).await?;
        if let Some(r) = requires_manual_review {
            self.row.requires_manual_review = r;
        }
        self.row.delivery_hold = order.delivery_hold;
        Ok(order)
    }
}

/// An order about to be written.
#[derive(Debug)]
pub struct NewOrder<'a> {
    pub id: Uuid,
    pub customer_id: &'a str,
    pub items: &'a [LineItem],
    pub shipping_address: &'a Address,
    pub requires_manual_review: bool,
    pub fallback_used: bool,
    /// Why its delivery must wait, if it must (a fallback order's).
    pub delivery_hold: Option<DeliveryHold>,
}

/// What becomes of an order's delivery hold in [`OrderLock::record_change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Left as it is.
    Keep,
    /// Set to this reason.
    Set(DeliveryHold),
    /// Cleared: the delivery may start.
    Clear,
}

/// Writes the order (PENDING_SHIPMENT), its items, the first history row and
/// the `ORDER_CREATED` event carrying the full order, in the caller's transaction.
pub async fn insert(conn: &mut PgConnection, new: &NewOrder<'_>) -> Result<Order, sqlx::Error> {
    let row = sqlx::query_as!(
        OrderRow,
        r#"INSERT INTO orders (id, customer_id, status, shipping_address, requires_manual_review, fallback_used,
                               delivery_hold)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           RETURNING id, customer_id, status AS "status: OrderStatus",
                     shipping_address AS "shipping_address: Jsonb<Address>", requires_manual_review,
                     fallback_used, delivery_id, delivery_hold AS "delivery_hold: DeliveryHold",
                     version, created_at, updated_at"#,
        new.id,
        new.customer_id.trim(),
        OrderStatus::PendingShipment as _,
        Jsonb(new.shipping_address) as _,
        new.requires_manual_review,
        new.fallback_used,
        new.delivery_hold as _,
    )
    .fetch_one(&mut *conn)
    .await?;
    let line_nos: Vec<i32> = (1..=new.items.len() as i32).collect();
    let products: Vec<String> = new.items.iter().map(|i| i.product_id.clone()).collect();
    let quantities: Vec<i32> = new.items.iter().map(|i| i.quantity).collect();
    sqlx::query!(
        "INSERT INTO order_items (order_id, line_no, product_id, quantity)
         SELECT $1, * FROM unnest($2::int[], $3::text[], $4::int[])",
        new.id,
        &line_nos,
        &products,
        &quantities,
    )
    .execute(&mut *conn)
    .await?;
    record_status(
        &mut *conn,
        new.id,
        None,
        OrderStatus::PendingShipment,
        "order placed",
    )
    .await?;
    let order = row.into_order(new.items.to_vec());
    outbox::enqueue(
        &mut *conn,
        order.id,
        order.version,
        events::ORDER_CREATED,
        &order,
    )
    .await?;
    Ok(order)
}

/// Appends a row to the order's status history.
pub async fn record_status(
    conn: &mut PgConnection,
    order_id: Uuid,
    from: Option<OrderStatus>,
    to: OrderStatus,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO order_status_history (order_id, from_status, to_status, reason) VALUES ($1, $2, $3, $4)",
        order_id,
        from as _,
        to as _,
        reason,
    )
    .execute(conn)
    .await?;
    Ok(())
}

async fn with_items(
    conn: &mut PgConnection,
    rows: Vec<OrderRow>,
) -> Result<Vec<Order>, sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let items = sqlx::query!(
        "SELECT order_id, product_id, quantity FROM order_items
         WHERE order_id = ANY($1) ORDER BY order_id, line_no",
        &ids,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let mine = items
                .iter()
                .filter(|i| i.order_id == row.id)
                .map(|i| LineItem {
                    product_id: i.product_id.clone(),
                    quantity: i.quantity,
                })
                .collect();
            row.into_order(mine)
        })
        .collect())
}

/// Reads one order with its items.
pub async fn load(conn: &mut PgConnection, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    let row = sqlx::query_as!(
        OrderRow,
        r#"SELECT id, customer_id, status AS "status: OrderStatus",
                  shipping_address AS "shipping_address: Jsonb<Address>", requires_manual_review,
                  fallback_used, delivery_id, delivery_hold AS "delivery_hold: DeliveryHold",
                  version, created_at, updated_at
           FROM orders WHERE id = $1"#,
        id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Ok(with_items(conn, vec![row]).await?.pop()),
        None => Ok(None),
    }
}

/// The status of order `id` (no lock).
pub async fn status_of(
    executor: impl sqlx::PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<OrderStatus>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT status AS "status: OrderStatus" FROM orders WHERE id = $1"#,
        id
    )
    .fetch_optional(executor)
    .await
}

/// Filters of an order listing.
#[derive(Debug, Default)]
pub struct ListFilter<'a> {
    pub customer_id: Option<&'a str>,
    pub status: Option<OrderStatus>,
    /// Only orders strictly before this (created_at, id) position.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// Orders newest first, matching `filter`.
pub async fn list(
    conn: &mut PgConnection,
    filter: &ListFilter<'_>,
) -> Result<Vec<Order>, sqlx::Error> {
    let rows = sqlx::query_as!(
        OrderRow,
        r#"SELECT id, customer_id, status AS "status: OrderStatus",
                  shipping_address AS "shipping_address: Jsonb<Address>", requires_manual_review,
                  fallback_used, delivery_id, delivery_hold AS "delivery_hold: DeliveryHold",
                  version, created_at, updated_at
           FROM orders
           WHERE ($1::text IS NULL OR customer_id = $1)
             AND ($2::text IS NULL OR status = $2)
             AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
           ORDER BY created_at DESC, id DESC LIMIT $5"#,
        filter.customer_id,
        filter.status as _,
        filter.before.map(|b| b.0),
        filter.before.map(|b| b.1),
        filter.limit,
    )
    .fetch_all(&mut *conn)
    .await?;
    with_items(conn, rows).await
}

/// Stores the delivery id of an order and emits `DELIVERY_INITIATED`, once:
/// an order that already has it is returned unchanged. `known`: the order as the
/// caller holds it, whose items are then not read again. The one writer that needs no
/// [`OrderLock`]: its conditional `UPDATE` is the lock (sales transaction 2 pays no
/// extra round trip), and a cancellation that got there first is seen in what it returns.
pub async fn record_delivery(
    conn: &mut PgConnection,
    order_id: Uuid,
    delivery_id: Uuid,
    known: Option<&Order>,
) -> Result<Option<Order>, sqlx::Error> {
    let updated = sqlx::query_as!(
        OrderRow,
        r#"UPDATE orders SET delivery_id = $2, version = version + 1, updated_at = now()
           WHERE id = $1 AND delivery_id IS NULL
           RETURNING id, customer_id, status AS "status: OrderStatus",
                     shipping_address AS "shipping_address: Jsonb<Address>", requires_manual_review,
                     fallback_used, delivery_id, delivery_hold AS "delivery_hold: DeliveryHold",
                     version, created_at, updated_at"#,
        order_id,
        delivery_id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = updated else {
        return load(conn, order_id).await;
    };
    let order = match known.filter(|k| k.id == order_id) {
        Some(known) => Some(row.into_order(known.items.clone())),
        None => with_items(&mut *conn, vec![row]).await?.pop(),
    };
    if let Some(order) = &order {
        outbox::enqueue(
            &mut *conn,
            order.id,
            order.version,
            events::DELIVERY_INITIATED,
            order,
        )
        .await?;
    }
    Ok(order)
}

/// Records product's confirmation that a cancelled order's units are back
/// (`stock_released_at`, once). No [`OrderLock`]: it touches only that column, which no
/// other writer reads.
pub async fn mark_stock_released(pool: &PgPool, order_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE orders SET stock_released_at = now() WHERE id = $1 AND stock_released_at IS NULL",
        order_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// One row of an order's status history.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StatusChange {
    pub from_status: Option<OrderStatus>,
    pub to_status: OrderStatus,
    pub reason: Option<String>,
    pub changed_at: DateTime<Utc>,
}

/// The order's status history, oldest first.
pub async fn history(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Vec<StatusChange>, sqlx::Error> {
    Ok(sqlx::query!(
        r#"SELECT from_status AS "from_status: OrderStatus",
                  to_status AS "to_status: OrderStatus", reason, changed_at
           FROM order_status_history WHERE order_id = $1 ORDER BY id"#,
        order_id
    )
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(|r| StatusChange {
        from_status: r.from_status,
        to_status: r.to_status,
        reason: r.reason,
        changed_at: r.changed_at,
    })
    .collect())
}

/// Orders reconciliation compares with their delivery: those with a delivery, pending
/// shipment or shipped and unchanged since `unchanged_before`, or flagged for review;
/// least recently reconciled first. (The statuses are literals: they are the predicate of
/// the partial index `orders_reconciliation_candidates`, which a bound value would not use.)
pub async fn reconciliation_candidates(
    pool: &PgPool,
    unchanged_before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    Ok(sqlx::query!(
        r#"SELECT id, delivery_id AS "delivery_id!" FROM orders
           WHERE delivery_id IS NOT NULL
             AND (status IN ('PENDING_SHIPMENT', 'SHIPPED') OR requires_manual_review)
             AND ((status IN ('PENDING_SHIPMENT', 'SHIPPED') AND updated_at <= $1) OR requires_manual_review)
           ORDER BY last_reconciled_at NULLS FIRST, updated_at, id
           LIMIT $2"#,
        unchanged_before,
        limit,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.id, r.delivery_id))
    .collect())
}

/// Cancelled orders whose stock product has not confirmed back, oldest change first.
/// (The status is a literal: it is the predicate of a partial index.)
pub async fn unconfirmed_releases(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT id FROM orders WHERE status = 'CANCELLED' AND stock_released_at IS NULL
         ORDER BY updated_at, id LIMIT $1",
        limit
    )
    .fetch_all(pool)
    .await
}

/// Fallback orders (not cancelled) whose `AVAILABILITY_UNVERIFIED` review is open, with
/// the review, oldest review first.
pub async fn awaiting_recheck(pool: &PgPool, limit: i64) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    use super::reviews::{ReviewReason, ReviewStatus};
    Ok(sqlx::query!(
        r#"SELECT o.id AS order_id, r.id AS review_id FROM orders o JOIN manual_reviews r ON r.order_id = o.id
           WHERE r.status = $2 AND r.reason = $3
             AND o.fallback_used AND o.status <> $4
           ORDER BY r.created_at, r.id LIMIT $1"#,
        limit,
        ReviewStatus::Open as _,
        ReviewReason::AvailabilityUnverified as _,
        OrderStatus::Cancelled as _,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.order_id, r.review_id))
    .collect())
}

/// Orders (not on the fallback, not cancelled) whose `ORDER_CREATED` has waited for the
/// broker since before `created_before`, oldest first, at most 1000.
pub async fn waiting_for_broker(
    pool: &PgPool,
    created_before: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT e.aggregate_id FROM outbox_events e JOIN orders o ON o.id = e.aggregate_id
         WHERE e.event_type = $2 AND e.status IN ('PENDING', 'FAILED')
           AND e.created_at <= $1 AND NOT o.fallback_used AND o.status <> $3
         ORDER BY e.created_at LIMIT 1000",
        created_before,
        events::ORDER_CREATED,
        OrderStatus::Cancelled as _,
    )
    .fetch_all(pool)
    .await
}
