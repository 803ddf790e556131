//! Reading orders: one by id, or a page of them newest first (keyset pagination
//! on `(created_at, id)`, with an opaque cursor).

use axum::extract::State;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use contracts::{
    Problem,
    orders::{Order, OrderPage, OrderStatus},
};
use platform::{
    ApiResult,
    extract::{Json, Path, Query},
};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::http::AppState;
use crate::store::orders::{self as store, ListFilter};

/// Default page size.
pub const DEFAULT_LIMIT: i64 = 20;
/// Largest page size.
pub const MAX_LIMIT: i64 = 100;

/// Read an order: from the order cache when Redis is configured, else (or on a
/// miss) from the database ([`crate::cache::orders`]).
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 404, body = Problem),
        (status = 429, body = Problem, description = "Over the client's rate limit; retry after `Retry-After`"),
        (status = 503, body = Problem)))]
pub async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Order>> {
    // Only a cache miss touches the database (and its breaker).
    let load = state.db.guard(async {
        let mut conn = state.db.pool.acquire().await?;
        Ok(store::load(&mut conn, id).await?)
    });
    state
        .cache
        .read(id, load)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(&format!("order {id}")).into())
}

/// Filters and paging of the order list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this customer's orders (empty: every customer's).
    #[param(max_length = 200, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub customer_id: Option<String>,
    /// Only orders in this status.
    #[param(value_type = Option<OrderStatus>)]
    pub status: Option<String>,
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (empty: the first page).
    #[param(max_length = 200, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub cursor: Option<String>,
}

/// Encodes a position in the listing.
pub fn encode_cursor(created_at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}.{id}", created_at.timestamp_micros()))
}

/// Decodes a cursor made by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (micros, id) = raw.split_once('.')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

/// List orders, newest first, optionally by customer and status.
#[utoipa::path(get, path = "/orders", tag = "orders", params(ListQuery),
    responses((status = 200, body = OrderPage), (status = 400, body = Problem),
        (status = 429, body = Problem, description = "Over the client's rate limit; retry after `Retry-After`"),
        (status = 503, body = Problem)))]
pub async fn list_orders(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<OrderPage>> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::bad_query("limit", "must be between 1 and 100").into());
    }
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(OrderStatus::parse(s).ok_or_else(|| {
            Problem::bad_query(
                "status",
                "must be one of PENDING_SHIPMENT, SHIPPED, DELIVERED, CANCELLED, DELIVERY_FAILED",
            )
        })?),
    };
    let before = match query.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            decode_cursor(c)
                .ok_or_else(|| Problem::bad_query("cursor", "is not a cursor this API made"))?,
        ),
    };
    let filter = ListFilter {
        customer_id: query.customer_id.as_deref().map(str::trim),
        status,
        before,
        limit: limit + 1,
    };
    let mut orders = state
        .db
        .guard(async {
            let mut conn = state.db.pool.acquire().await?;
            Ok(store::list(&mut conn, &filter).await?)
        })
        .await?;
    let next_cursor = if orders.len() as i64 > limit {
        orders.truncate(limit as usize);
        orders.last().map(|o| encode_cursor(o.created_at, o.id))
    } else {
        None
    };
    Ok(Json(OrderPage {
        orders,
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("valid");
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(at, id)), Some((at, id)));
        assert_eq!(decode_cursor("not-a-cursor"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("12.nope")), None);
    }
}
