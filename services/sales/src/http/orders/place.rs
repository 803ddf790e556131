//! Placing an order, the write path: validate → (database breaker) → the order saga
//! ([`crate::placement`]: reserve or fall back → record → deliver → record the delivery,
//! two sales transactions) in a task of its own → 201 built from what the saga holds, or
//! the saga's typed reason for refusing. A repeated `Idempotency-Key` is found by the
//! record transaction (its order id is taken) and only then looked up, to replay the first
//! answer.

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
use saga::SagaEnd;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    http::AppState,
    orders::idempotency::{self, IdempotencyKey},
    placement::{OrderSaga, Rejection},
    store::orders as store,
};

/// Header set on an answer replayed for a repeated `Idempotency-Key`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Place an order. Send an `Idempotency-Key` to make retries safe.
#[utoipa::path(post, path = "/orders", tag = "orders", request_body = PlaceOrder,
    params(("Idempotency-Key" = Option<String>, Header, max_length = 200, pattern = "^[!-~]+$",
        description = "Makes retries safe: a repeat with the same body replays the first answer (1–200 visible ASCII characters)")),
    responses(
        (status = 201, body = Order, description = "Order accepted (flagged for review if product could not be asked)"),
        (status = 400, body = Problem, description = "Unreadable body or bad Idempotency-Key"),
        (status = 409, body = Problem, description = "Insufficient stock (`short_items`), or a request with this key is in progress"),
        (status = 422, body = Problem, description = "Invalid fields, unknown products, or a reused Idempotency-Key with another body"),
        (status = 429, body = Problem, description = "Over the client's rate limit; retry after `Retry-After`"),
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

async fn place(
    state: &AppState,
    request: PlaceOrder,
    key: Option<IdempotencyKey>,
) -> ApiResult<Response> {
    let hash = idempotency::request_hash(&request);
    let order_id = key
        .as_ref()
        .map_or_else(Uuid::now_v7, |k| k.order_id(&request.customer_id));
    let record_by = resilience::deadline::after(Utc::now(), state.config.server.request_timeout);
    let context = OrderSaga {
        order_id,
        idempotency: key.as_ref().map(|k| (k.as_str().to_owned(), hash.clone())),
        request: request.clone(),
        record_by,
        reserved: false,
        fallback: None,
        order: None,
        delivery: None,
        marks: Vec::new(),
    };
    // The saga runs in a task of its own: a client that goes away or a request that times
    // out never cuts a step mid-way; the saga goes on to its next checkpoint.
    let sagas = state.sagas.clone();
    let run = tokio::spawn(
        async move {
            sagas
                .orchestrator
                .start_with_id(sagas.definition.as_ref(), order_id, context)
                .await
        }
        .instrument(tracing::Span::current()),
    );
    let outcome = match run.await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(saga::Error::Database(e))) => return Err(e.into()),
        // Another request (same key) or instance runs this order's saga: it carries
        // on, and a retry with the same key answers its outcome.
        Ok(Err(
            saga::Error::Busy(_) | saga::Error::LeaseLost(_) | saga::Error::AlreadyExists(_),
        )) => return answer_for_key(state, &request, key.as_ref(), &hash, 40).await,
        Ok(Err(e)) => {
            tracing::error!(%order_id, error = %e, "the order saga could not run");
            return Err(Problem::internal().into());
        }
        Err(panicked) => {
            tracing::error!(%order_id, error = %panicked, "the order saga's task failed");
            return Err(Problem::internal().into());
        }
    };
    match outcome.end {
        SagaEnd::Completed | SagaEnd::Waiting { .. } => {
            if matches!(outcome.end, SagaEnd::Completed) {
                // Every transaction of a completed saga committed, with the marks it carried.
                outcome.context.marks.iter().for_each(|m| m.confirm());
            }
            let order = match outcome.context.order {
                Some(order) => order,
                // Not expected (the record step sets it), but the order is in the database.
                None => {
                    let mut conn = state.db.pool.acquire().await?;
                    store::load(&mut conn, order_id)
                        .await?
                        .ok_or(sqlx::Error::RowNotFound)?
                }
            };
            // Best effort and off this request's path: a dead Redis never slows it.
            state.cache.updated_in_background(&order);
            Ok(created(order, StatusCode::CREATED, false))
        }
        SagaEnd::Compensated {
            rejection, error, ..
        } => match rejection {
            Some(Rejection::InsufficientStock { short_items }) => Err(Problem::conflict(
                INSUFFICIENT_STOCK,
                "not enough stock for some items",
            )
            .with_extension("short_items", short_items)
            .into()),
            Some(Rejection::InvalidItems { errors }) => Err(Problem::validation(errors).into()),
            // The key was used before, or the same order is being recorded by a concurrent
            // request (same key): answer as it did. Product refuses a key reused for other
            // items (the order id is the key's) the same way.
            Some(Rejection::KeyTaken | Rejection::Duplicate) => {
                answer_for_key(state, &request, key.as_ref(), &hash, 1).await
            }
            Some(Rejection::Refused { kind, .. })
                if kind.ends_with("reservation-mismatch") && key.is_some() =>
            {
                answer_for_key(state, &request, key.as_ref(), &hash, 1).await
            }
            Some(Rejection::Refused { detail, .. }) => {
                Err(Problem::conflict("reservation-refused", detail).into())
            }
            Some(Rejection::TooLate | Rejection::Cancelled) | None => {
                tracing::warn!(%order_id, %error, "order not recorded");
                Err(
                    Problem::unavailable("the order could not be recorded; try again shortly", 5)
                        .into(),
                )
            }
        },
        SagaEnd::Failed {
            compensation_error, ..
        } => {
            tracing::error!(%order_id, saga_id = %outcome.id, %compensation_error,
                "the order was not recorded and undoing its reservation failed (it expires by itself)");
            Err(
                Problem::unavailable("the order could not be recorded; try again shortly", 5)
                    .into(),
            )
        }
    }
}

/// The first answer for a key, asked up to `attempts` times 25 ms apart (a request with
/// this key may be being placed right now, here or by another instance), or 409
/// in-progress.
async fn answer_for_key(
    state: &AppState,
    request: &PlaceOrder,
    key: Option<&IdempotencyKey>,
    hash: &str,
    attempts: u32,
) -> ApiResult<Response> {
    let Some(key) = key else {
        return Err(in_progress());
    };
    for attempt in 0..attempts {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        if let Some(answer) = replay(state, request, key, hash).await? {
            return Ok(answer);
        }
    }
    Err(in_progress())
}

fn in_progress() -> platform::ApiError {
    Problem::conflict(
        "in-progress",
        "a request with this Idempotency-Key is in progress",
    )
    .with_retry_after(1)
    .into()
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
