//! SQL of orders: inserting an order with its items, history and event in the
//! caller's transaction, reading orders with their items, recording deliveries.

use chrono::{DateTime, Utc};
use contracts::{
    Address, LineItem,
    orders::{DeliveryHold, Order, OrderStatus},
};
use sqlx::{PgConnection, types::Json as Jsonb};
use uuid::Uuid;

use crate::outbox::{self, events};

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    customer_id: String,
    status: String,
    shipping_address: Jsonb<Address>,
    requires_manual_review: bool,
    fallback_used: bool,
    delivery_id: Option<Uuid>,
    delivery_hold: Option<String>,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, customer_id, status, shipping_address, requires_manual_review, \
                       fallback_used, delivery_id, delivery_hold, version, created_at, updated_at";

impl OrderRow {
    fn into_order(self, items: Vec<LineItem>) -> Order {
        Order {
            id: self.id,
            customer_id: self.customer_id,
            // The column's CHECK constraint admits only known statuses.
            status: OrderStatus::parse(&self.status).unwrap_or(OrderStatus::PendingShipment),
            items,
            shipping_address: self.shipping_address.0,
            requires_manual_review: self.requires_manual_review,
            fallback_used: self.fallback_used,
            delivery_id: self.delivery_id,
            // The column's CHECK constraint admits only known holds.
            delivery_hold: self.delivery_hold.as_deref().and_then(DeliveryHold::parse),
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
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

/// Writes the order (PENDING_SHIPMENT), its items, the first history row and
/// the `ORDER_CREATED` event carrying the full order, in the caller's transaction.
pub async fn insert(conn: &mut PgConnection, new: &NewOrder<'_>) -> Result<Order, sqlx::Error> {
    let row: OrderRow = sqlx::query_as(&format!(
        "INSERT INTO orders (id, customer_id, status, shipping_address, requires_manual_review, fallback_used,
                             delivery_hold)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(new.id)
    .bind(new.customer_id.trim())
    .bind(OrderStatus::PendingShipment.as_str())
    .bind(Jsonb(new.shipping_address))
    .bind(new.requires_manual_review)
    .bind(new.fallback_used)
    .bind(new.delivery_hold.map(DeliveryHold::as_str))
    .fetch_one(&mut *conn)
    .await?;
    let line_nos: Vec<i32> = (1..=new.items.len() as i32).collect();
    let products: Vec<&str> = new.items.iter().map(|i| i.product_id.as_str()).collect();
    let quantities: Vec<i32> = new.items.iter().map(|i| i.quantity).collect();
    sqlx::query(
        "INSERT INTO order_items (order_id, line_no, product_id, quantity)
         SELECT $1, * FROM unnest($2::int[], $3::text[], $4::int[])",
    )
    .bind(new.id)
    .bind(&line_nos)
    .bind(&products)
    .bind(&quantities)
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

/// Records a change of an order that keeps its status (a review flag set or
/// cleared, availability confirmed…), in the caller's transaction: sets
/// `requires_manual_review` when given and the delivery hold as `hold` says, bumps the
/// version, appends a history row (status unchanged, `reason`) and enqueues
/// `event_type` with the full order. `None` if the order does not exist. (A caller
/// changing the hold moves the order's delivery retry row with it:
/// [`crate::delivery_retry::hold`], [`crate::delivery_retry::release_hold`].)
pub async fn record_change(
    conn: &mut PgConnection,
    order_id: Uuid,
    requires_manual_review: Option<bool>,
    hold: Hold,
    reason: &str,
    event_type: &str,
) -> Result<Option<Order>, sqlx::Error> {
    let (set_hold, hold_value) = match hold {
        Hold::Keep => (false, None),
        Hold::Set(h) => (true, Some(h.as_str())),
        Hold::Clear => (true, None),
    };
    let status: Option<String> = sqlx::query_scalar(
        "UPDATE orders SET requires_manual_review = COALESCE($2, requires_manual_review),
                delivery_hold = CASE WHEN $3 THEN $4 ELSE delivery_hold END,
                version = version + 1, updated_at = now()
         WHERE id = $1 RETURNING status",
    )
    .bind(order_id)
    .bind(requires_manual_review)
    .bind(set_hold)
    .bind(hold_value)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(status) = status.as_deref().and_then(OrderStatus::parse) else {
        return Ok(None);
    };
    record_status(&mut *conn, order_id, Some(status), status, reason).await?;
    let order = load(&mut *conn, order_id).await?;
    if let Some(order) = &order {
        outbox::enqueue(&mut *conn, order.id, order.version, event_type, order).await?;
    }
    Ok(order)
}

/// What becomes of an order's delivery hold in [`record_change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Left as it is.
    Keep,
    /// Set to this reason.
    Set(DeliveryHold),
    /// Cleared: the delivery may start.
    Clear,
}

/// Appends a row to the order's status history.
pub async fn record_status(
    conn: &mut PgConnection,
    order_id: Uuid,
    from: Option<OrderStatus>,
    to: OrderStatus,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO order_status_history (order_id, from_status, to_status, reason) VALUES ($1, $2, $3, $4)",
    )
    .bind(order_id)
    .bind(from.map(OrderStatus::as_str))
    .bind(to.as_str())
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

async fn with_items(
    conn: &mut PgConnection,
    rows: Vec<OrderRow>,
) -> Result<Vec<Order>, sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let items: Vec<(Uuid, String, i32)> = sqlx::query_as(
        "SELECT order_id, product_id, quantity FROM order_items
         WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    )
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let mine = items
                .iter()
                .filter(|(id, _, _)| *id == row.id)
                .map(|(_, product_id, quantity)| LineItem {
                    product_id: product_id.clone(),
                    quantity: *quantity,
                })
                .collect();
            row.into_order(mine)
        })
        .collect())
}

/// Reads one order with its items.
pub async fn load(conn: &mut PgConnection, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    let row: Option<OrderRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    match row {
        Some(row) => Ok(with_items(conn, vec![row]).await?.pop()),
        None => Ok(None),
    }
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
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM orders
         WHERE ($1::text IS NULL OR customer_id = $1)
           AND ($2::text IS NULL OR status = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
         ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(filter.customer_id)
    .bind(filter.status.map(OrderStatus::as_str))
    .bind(filter.before.map(|b| b.0))
    .bind(filter.before.map(|b| b.1))
    .bind(filter.limit)
    .fetch_all(&mut *conn)
    .await?;
    with_items(conn, rows).await
}

/// Stores the delivery id of an order and emits `DELIVERY_INITIATED`, once:
/// an order that already has it is returned unchanged. `known`: the order as the
/// caller holds it, whose items are then not read again.
pub async fn record_delivery(
    conn: &mut PgConnection,
    order_id: Uuid,
    delivery_id: Uuid,
    known: Option<&Order>,
) -> Result<Option<Order>, sqlx::Error> {
    let updated: Option<OrderRow> = sqlx::query_as(&format!(
        "UPDATE orders SET delivery_id = $2, version = version + 1, updated_at = now()
         WHERE id = $1 AND delivery_id IS NULL RETURNING {COLUMNS}"
    ))
    .bind(order_id)
    .bind(delivery_id)
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
