//! Placing an order, the write path of DESIGN §3:
//! validate → idempotency → reserve at product → one transaction (order, items,
//! history, `ORDER_CREATED`, key) → commit the reservation → initiate delivery → 201.

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use contracts::{
    Problem,
    catalog::INSUFFICIENT_STOCK,
    delivery::DeliveryRequest,
    orders::{Order, PlaceOrder},
};
use platform::{ApiResult, ensure_valid, extract::Json};
use uuid::Uuid;

use super::{
    idempotency::{self, IdempotencyKey},
    store::{self, NewOrder},
};
use crate::{
    app::AppState,
    peers::{PeerError, product::ReserveOutcome},
};

/// Header set on an answer replayed for a repeated `Idempotency-Key`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Place an order. Send an `Idempotency-Key` to make retries safe.
#[utoipa::path(post, path = "/orders", tag = "orders", request_body = PlaceOrder,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes retries safe: a repeat with the same body replays the first answer")),
    responses(
        (status = 201, body = Order, description = "Order accepted"),
        (status = 400, body = Problem, description = "Unreadable body or bad Idempotency-Key"),
        (status = 409, body = Problem, description = "Insufficient stock (`short_items`)"),
        (status = 422, body = Problem, description = "Invalid fields, unknown products, or a reused Idempotency-Key with another body"),
        (status = 503, body = Problem, description = "A dependency is unavailable; retry after `Retry-After`")))]
pub async fn place_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<PlaceOrder>,
) -> ApiResult<Response> {
    ensure_valid(request.validate())?;
    let key = IdempotencyKey::from_headers(&headers)?;
    let hash = idempotency::request_hash(&request);
    if let Some(key) = &key
        && let Some(replay) = replay(&state, &request, key, &hash).await?
    {
        return Ok(replay);
    }
    let order_id = key
        .as_ref()
        .map_or_else(Uuid::now_v7, |k| k.order_id(&request.customer_id));

    reserve(&state, order_id, &request).await?;

    let order = match write(&state, order_id, &request, key.as_ref(), &hash).await {
        Ok(order) => order,
        Err(WriteError::DuplicateKey) => {
            // A concurrent request with the same key won the race: answer as it did.
            let key = key.as_ref().ok_or(sqlx::Error::RowNotFound)?;
            return replay(&state, &request, key, &hash).await?.ok_or_else(|| {
                Problem::conflict("retry", "a request with this key is in progress").into()
            });
        }
        Err(WriteError::Database(e)) => {
            release_in_background(&state, order_id);
            return Err(e.into());
        }
    };
    tracing::info!(order_id = %order.id, customer_id = %order.customer_id, "Created order {} in database", order.id);

    if let Err(e) = state.product.commit(order.id).await {
        tracing::warn!(order_id = %order.id, error = %e, "reservation commit failed; it stays held until its TTL");
    }
    let order = initiate_delivery(&state, order).await;
    Ok(created(order, StatusCode::CREATED, false))
}

async fn replay(
    state: &AppState,
    request: &PlaceOrder,
    key: &IdempotencyKey,
    hash: &str,
) -> ApiResult<Option<Response>> {
    let mut conn = state.pool.acquire().await?;
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

/// Holds stock at product, or says why the order cannot be taken.
async fn reserve(state: &AppState, order_id: Uuid, request: &PlaceOrder) -> ApiResult<()> {
    match state.product.reserve(order_id, &request.items).await {
        Ok(ReserveOutcome::Reserved(_)) => Ok(()),
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
            tracing::warn!(%order_id, error = %e, "product service unavailable");
            Err(
                Problem::unavailable("the product service is unavailable; try again shortly", 5)
                    .into(),
            )
        }
    }
}

enum WriteError {
    DuplicateKey,
    Database(sqlx::Error),
}

/// The one transaction of the write path. Dropping it without commit rolls back.
async fn write(
    state: &AppState,
    order_id: Uuid,
    request: &PlaceOrder,
    key: Option<&IdempotencyKey>,
    hash: &str,
) -> Result<Order, WriteError> {
    let result = async {
        let mut tx = state.pool.begin().await?;
        let order = store::insert(
            &mut tx,
            &NewOrder {
                id: order_id,
                customer_id: &request.customer_id,
                items: &request.items,
                shipping_address: &request.shipping_address,
                requires_manual_review: false,
                fallback_used: false,
            },
        )
        .await?;
        if let Some(key) = key {
            idempotency::insert(&mut tx, &request.customer_id, key, hash, order_id, 201).await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(order)
    }
    .await;
    result.map_err(|e| match platform::db::violated_constraint(&e) {
        Some("orders_pkey" | "idempotency_keys_pkey") if key.is_some() => WriteError::DuplicateKey,
        _ => WriteError::Database(e),
    })
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

/// Asks delivery for a delivery and records it on the order. A failure leaves
/// the order as it is: it was accepted, and delivery is initiated again later.
async fn initiate_delivery(state: &AppState, order: Order) -> Order {
    let request = DeliveryRequest {
        order_id: order.id,
        address: order.shipping_address.clone(),
        items: order.items.clone(),
    };
    let delivery = match state.delivery.initiate(&request).await {
        Ok(delivery) => delivery,
        Err(e) => {
            tracing::warn!(order_id = %order.id, error = %e, "Delivery initiation failed, will retry via background job");
            return order;
        }
    };
    let recorded = async {
        let mut tx = state.pool.begin().await?;
        let updated = store::record_delivery(&mut tx, order.id, delivery.id).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(updated)
    }
    .await;
    match recorded {
        Ok(Some(updated)) => {
            tracing::info!(order_id = %order.id, delivery_id = %delivery.id, "delivery initiated");
            updated
        }
        Ok(None) => order,
        Err(e) => {
            tracing::warn!(order_id = %order.id, delivery_id = %delivery.id, error = %e,
                "delivery initiated but not recorded; a retry will find it (delivery dedups on order)");
            order
        }
    }
}
