//! Reading the queue: a page of reviews with their orders, oldest first
//! (keyset pagination on the review's `(created_at, id)`), and one order's
//! complete picture.

use axum::extract::State;
use contracts::Problem;
use platform::{
    ApiResult,
    auth::Staff,
    extract::{Json, Path, Query},
};
use serde::Deserialize;
use sqlx::PgConnection;
use utoipa::IntoParams;
use uuid::Uuid;

use super::{OrderSummary, QueueEntry, ReviewPage, ReviewedOrder};
use crate::{
    http::{
        AppState,
        orders::read::{DEFAULT_LIMIT, MAX_LIMIT, decode_cursor, encode_cursor},
    },
    orders::reviews::{ReviewReason, ReviewStatus},
    store,
};

/// Filters and paging of the queue.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueueQuery {
    /// `open` (default), `approved`, `rejected` or `resolved` (any case).
    #[param(max_length = 200, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub status: Option<String>,
    /// Only this reason, e.g. `AVAILABILITY_UNVERIFIED` (any case).
    #[param(max_length = 200, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub reason: Option<String>,
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (empty: the first page).
    #[param(max_length = 200, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub cursor: Option<String>,
}

impl From<store::reviews::EntryRow> for QueueEntry {
    fn from(row: store::reviews::EntryRow) -> Self {
        let order = OrderSummary {
            id: row.review.order_id,
            customer_id: row.customer_id,
            status: row.order_status,
            requires_manual_review: row.requires_manual_review,
            fallback_used: row.fallback_used,
            delivery_id: row.delivery_id,
            version: row.version,
            created_at: row.order_created_at,
            updated_at: row.order_updated_at,
            item_lines: row.item_lines,
            item_units: row.item_units,
        };
        Self {
            review: row.review,
            order,
        }
    }
}

/// The review queue, oldest first (staff).
#[utoipa::path(get, path = "/review/orders", tag = "review", params(QueueQuery),
    security(("staff" = [])),
    responses((status = 200, body = ReviewPage), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 503, body = Problem)))]
pub async fn list_reviews(
    State(state): State<AppState>,
    _staff: Staff,
    Query(query): Query<QueueQuery>,
) -> ApiResult<Json<ReviewPage>> {
    page(&state, &query).await.map(Json)
}

/// One page of the queue as `query` asks (400 for a bad filter or cursor).
pub async fn page(state: &AppState, query: &QueueQuery) -> ApiResult<ReviewPage> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::bad_query("limit", "must be between 1 and 100").into());
    }
    let status = match query.status.as_deref() {
        None => ReviewStatus::Open,
        Some(s) => ReviewStatus::parse(s.trim()).ok_or_else(|| {
            Problem::bad_query(
                "status",
                "must be one of open, approved, rejected, resolved",
            )
        })?,
    };
    let reason = match query.reason.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(r) => Some(
            ReviewReason::parse(&r.to_ascii_uppercase())
                .ok_or_else(|| Problem::bad_query("reason", "is not a review reason"))?,
        ),
    };
    let after = match query.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            decode_cursor(c)
                .ok_or_else(|| Problem::bad_query("cursor", "is not a cursor this API made"))?,
        ),
    };
    let mut rows = state
        .db
        .guard(async {
            Ok(store::reviews::queue(&state.db.pool, status, reason, after, limit + 1).await?)
        })
        .await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last()
            .map(|r| encode_cursor(r.review.created_at, r.review.id))
    } else {
        None
    };
    Ok(ReviewPage {
        items: rows.into_iter().map(QueueEntry::from).collect(),
        next_cursor,
    })
}

/// How many reviews of `status` there are per reason, most first.
pub async fn counts_by_reason(
    state: &AppState,
    status: ReviewStatus,
) -> ApiResult<Vec<(String, i64)>> {
    state
        .db
        .guard(async {
            Ok(store::reviews::counts_by_reason(&state.db.pool, status)
                .await?
                .into_iter()
                .map(|(reason, n)| (reason.as_str().to_owned(), n))
                .collect())
        })
        .await
}

/// An order with its reviews, status history and delivery retry row.
pub async fn load(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<ReviewedOrder>, sqlx::Error> {
    let Some(order) = store::orders::load(&mut *conn, order_id).await? else {
        return Ok(None);
    };
    let reviews = store::reviews::of_order(&mut *conn, order_id).await?;
    let history = store::orders::history(&mut *conn, order_id).await?;
    let delivery_retry = store::delivery_retries::of_order(&mut *conn, order_id).await?;
    Ok(Some(ReviewedOrder {
        order,
        reviews,
        history,
        delivery_retry,
        saga: None,
    }))
}

/// An order's reviews, status history and delivery retry (staff).
#[utoipa::path(get, path = "/review/orders/{id}", tag = "review", params(("id" = Uuid, Path)),
    security(("staff" = [])),
    responses((status = 200, body = ReviewedOrder), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 503, body = Problem)))]
pub async fn review_detail(
    State(state): State<AppState>,
    _staff: Staff,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ReviewedOrder>> {
    state
        .db
        .guard(async { detail(&state, id).await.map(Json) })
        .await
}

/// An order's reviews, status history, delivery retry and saga (the answer of the
/// review endpoints); 404 if there is no such order.
pub async fn detail(state: &AppState, id: Uuid) -> ApiResult<ReviewedOrder> {
    let mut conn = state.db.pool.acquire().await?;
    let mut detail = load(&mut conn, id)
        .await?
        .ok_or_else(|| Problem::not_found(&format!("order {id}")))?;
    drop(conn);
    if let Ok(Some(saga_id)) = store::sagas::saga_of(&state.db.pool, id).await {
        match saga::store::load(&state.db.pool, saga_id).await {
            Ok(view) => detail.saga = view.and_then(|v| serde_json::to_value(v).ok()),
            Err(saga::Error::Database(e)) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(order_id = %id, error = %e, "the order's saga is unreadable")
            }
        }
    }
    Ok(detail)
}
