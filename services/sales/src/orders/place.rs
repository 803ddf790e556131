//! Placing an order, the write path of DESIGN §3:
//! validate → (database breaker) → idempotency → reserve at product, or fall back
//! when product is unavailable → one transaction (order, items, history, events,
//! review if flagged, delivery retry row, key) → commit the reservation →
//! initiate delivery (or leave it to the retry worker) → 201.

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use contracts::{
    Problem,
    catalog::INSUFFICIENT_STOCK,
    orders::{Order, PlaceOrder},
};
use platform::{ApiResult, ensure_valid, extract::Json};
use serde_json::json;
use uuid::Uuid;

use super::{
    idempotency::{self, IdempotencyKey},
    store::{self, NewOrder},
};
use crate::{
    app::AppState,
    delivery_retry::{self, Due},
    outbox::{self, events},
    peers::{PeerError, product::ReserveOutcome},
    reviews::{self, ReviewReason},
};

/// Header set on an answer replayed for a repeated `Idempotency-Key`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Place an order. Send an `Idempotency-Key` to make retries safe.
#[utoipa::path(post, path = "/orders", tag = "orders", request_body = PlaceOrder,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes retries safe: a repeat with the same body replays the first answer")),
    responses(
        (status = 201, body = Order, description = "Order accepted (flagged for review if product could not be asked)"),
        (status = 400, body = Problem, description = "Unreadable body or bad Idempotency-Key"),
        (status = 409, body = Problem, description = "Insufficient stock (`short_items`)"),
        (status = 422, body = Problem, description = "Invalid fields, unknown products, or a reused Idempotency-Key with another body"),
        (status = 503, body = Problem, description = "The database is unavailable; retry after `Retry-After`")))]
pub async fn place_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<PlaceOrder>,
) -> ApiResult<Response> {
    ensure_valid(request.validate())?;
    let key = IdempotencyKey::from_headers(&headers)?;
    // One permit of the database breaker covers the request's database work; an
    // open breaker answers 503 here, before product or delivery is called.
    state.db.guard(place(&state, request, key)).await
}

/// How stock was checked.
enum Availability {
    Reserved,
    /// Product could not be asked: accepted unverified, for review.
    Fallback {
        reason: String,
    },
}

async fn place(
    state: &AppState,
    request: PlaceOrder,
    key: Option<IdempotencyKey>,
) -> ApiResult<Response> {
    let hash = idempotency::request_hash(&request);
    if let Some(key) = &key
        && let Some(replay) = replay(state, &request, key, &hash).await?
    {
        return Ok(replay);
    }
    let order_id = key
        .as_ref()
        .map_or_else(Uuid::now_v7, |k| k.order_id(&request.customer_id));

    let availability = reserve(state, order_id, &request).await?;

    let order = match write(
        state,
        order_id,
        &request,
        &availability,
        key.as_ref(),
        &hash,
    )
    .await
    {
        Ok(order) => order,
        Err(e) if key.is_some() && is_duplicate(&e) => {
            // A concurrent request with the same key won the race: answer as it did.
            let key = key.as_ref().ok_or(sqlx::Error::RowNotFound)?;
            return replay(state, &request, key, &hash).await?.ok_or_else(|| {
                Problem::conflict("retry", "a request with this key is in progress").into()
            });
        }
        Err(e) => {
            if matches!(availability, Availability::Reserved) {
                release_in_background(state, order_id);
            }
            return Err(e.into());
        }
    };
    tracing::info!(order_id = %order.id, customer_id = %order.customer_id, fallback_used = order.fallback_used,
        "Created order {} in database", order.id);

    if matches!(availability, Availability::Reserved)
        && let Err(e) = state.product.commit(order.id).await
    {
        tracing::warn!(order_id = %order.id, error = %e, "reservation commit failed; retrying in the background");
        commit_in_background(state, order.id);
    }
    let due = Due {
        order_id: order.id,
        attempts: 0,
        created_at: order.created_at,
    };
    let order = match delivery_retry::attempt(
        &state.db,
        &state.delivery,
        &state.config.delivery_retry,
        &order,
        due,
        Utc::now(),
    )
    .await
    {
        Ok(delivery_retry::Attempted::Initiated(updated)) => *updated,
        Ok(_) => order,
        Err(e) => {
            // The order and its retry row are committed: the worker will initiate the delivery.
            tracing::warn!(order_id = %order.id, error = %e, "recording the delivery attempt failed; the retry worker takes over");
            order
        }
    };
    Ok(created(order, StatusCode::CREATED, false))
}

fn is_duplicate(e: &sqlx::Error) -> bool {
    matches!(
        platform::db::violated_constraint(e),
        Some("orders_pkey" | "idempotency_keys_pkey")
    )
}

async fn replay(
    state: &AppState,
    request: &PlaceOrder,
    key: &IdempotencyKey,
    hash: &str,
) -> ApiResult<Option<Response>> {
    let mut conn = state.db.pool.acquire().await?;
    let Some(stored) = idempotency::find(&mut conn, &request.customer_id, key).await? else {
        return Ok(None);
    };
    if stored.request_hash != hash {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused with a different request",
        )
        .with_detail("this key was first used with another body; use a new key for a new order")
        .into());
    }
    let order = store::load(&mut conn, stored.order_id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    let status = StatusCode::from_u16(stored.response_status as u16).unwrap_or(StatusCode::CREATED);
    Ok(Some(created(order, status, true)))
}

fn created(order: Order, status: StatusCode, replayed: bool) -> Response {
    let location = format!("/orders/{}", order.id);
    let mut response = (status, Json(order)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}

/// Holds stock at product; falls back when product is unavailable; says why
/// the order cannot be taken when product answered no.
async fn reserve(
    state: &AppState,
    order_id: Uuid,
    request: &PlaceOrder,
) -> ApiResult<Availability> {
    match state.product.reserve(order_id, &request.items).await {
        Ok(ReserveOutcome::Reserved(_)) => Ok(Availability::Reserved),
        Ok(ReserveOutcome::Insufficient(short)) => Err(Problem::conflict(
            INSUFFICIENT_STOCK,
            "not enough stock for some items",
        )
        .with_extension("short_items", short)
        .into()),
        // Unknown products: product names the fields of the items we sent, which
        // are the customer's items in the same order.
        Err(PeerError::Rejected { problem, .. }) if problem.status == 422 => {
            Err(Problem::validation(problem.errors).into())
        }
        Err(PeerError::Rejected { problem, .. }) => {
            tracing::warn!(%order_id, %problem, "product refused the reservation");
            Err(Problem::conflict(
                "reservation-refused",
                problem.detail.unwrap_or(problem.title),
            )
            .into())
        }
        Err(e @ PeerError::Unavailable { .. }) => {
            let product_ids: Vec<&str> = request
                .items
                .iter()
                .map(|i| i.product_id.as_str())
                .collect();
            tracing::warn!(%order_id, ?product_ids, error = %e, "Product service down, using fallback availability");
            Ok(Availability::Fallback {
                reason: e.to_string(),
            })
        }
    }
}

/// The one transaction of the write path. Dropping it without commit rolls back.
async fn write(
    state: &AppState,
    order_id: Uuid,
    request: &PlaceOrder,
    availability: &Availability,
    key: Option<&IdempotencyKey>,
    hash: &str,
) -> Result<Order, sqlx::Error> {
    let fallback = matches!(availability, Availability::Fallback { .. });
    let mut tx = state.db.pool.begin().await?;
    let order = store::insert(
        &mut tx,
        &NewOrder {
            id: order_id,
            customer_id: &request.customer_id,
            items: &request.items,
            shipping_address: &request.shipping_address,
            requires_manual_review: fallback,
            fallback_used: fallback,
        },
    )
    .await?;
    if let Availability::Fallback { reason } = availability {
        let product_ids: Vec<&str> = request
            .items
            .iter()
            .map(|i| i.product_id.as_str())
            .collect();
        let details = json!({"product_ids": product_ids, "cause": reason});
        reviews::open(
            &mut tx,
            order.id,
            ReviewReason::AvailabilityUnverified,
            &details,
        )
        .await?;
        let payload = json!({
            "order_id": order.id,
            "product_ids": product_ids,
            "requires_manual_review": true,
            "fallback_used": true,
            "cause": reason,
        });
        outbox::enqueue(
            &mut tx,
            order.id,
            order.version,
            events::AVAILABILITY_CHECK_FALLBACK_USED,
            &payload,
        )
        .await?;
    }
    let first_retry = Utc::now()
        + chrono::Duration::from_std(state.config.delivery_retry.first_delay)
            .unwrap_or(chrono::Duration::MAX);
    delivery_retry::schedule(&mut tx, order.id, first_retry).await?;
    if let Some(key) = key {
        idempotency::insert(&mut tx, &request.customer_id, key, hash, order_id, 201).await?;
    }
    tx.commit().await?;
    Ok(order)
}

/// The order could not be written: give the stock back now rather than at TTL.
fn release_in_background(state: &AppState, order_id: Uuid) {
    let product = state.product.clone();
    tokio::spawn(async move {
        if let Err(e) = product.release(order_id).await {
            tracing::warn!(%order_id, error = %e, "releasing the reservation failed; it expires at its TTL");
        }
    });
}

/// Commits the reservation with a few more retries. Until product consumes
/// `ORDER_CREATED`, this call is what turns the hold into a sale; if it never
/// succeeds the reservation expires at its TTL.
fn commit_in_background(state: &AppState, order_id: Uuid) {
    let product = state.product.clone();
    let policy = resilience::retry::RetryPolicy {
        max_attempts: 5,
        min_delay: std::time::Duration::from_millis(200),
        max_delay: std::time::Duration::from_secs(5),
    };
    tokio::spawn(async move {
        let result = resilience::retry::retry(
            &policy,
            |e: &PeerError| {
                matches!(
                    e,
                    PeerError::Unavailable {
                        breaker_open: false,
                        ..
                    }
                )
            },
            || product.commit(order_id),
        )
        .await;
        if let Err(e) = result {
            tracing::warn!(%order_id, error = %e, "reservation commit failed; it stays held until its TTL");
        }
    });
}
