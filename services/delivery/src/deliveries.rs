//! Deliveries (initiating and cancelling one needs a service or staff credential,
//! status updates a staff one): idempotent initiation by order, reads, cancellation before pickup,
//! courier status updates along the allowed transitions, and their history. Every status
//! change (creation included) writes its history row and its `DELIVERY_STATUS_CHANGED`
//! event in the same transaction.

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use contracts::{
    Problem,
    delivery::{
        DELIVERY_AGGREGATE, DELIVERY_STATUS_CHANGED, Delivery, DeliveryRequest, DeliveryStatus,
        DeliveryStatusUpdate,
    },
};
use platform::{
    ApiResult,
    auth::{Internal, Staff},
    ensure_valid,
    extract::{Json, Path, Query},
};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, types::Json as Jsonb};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/deliveries", post(create_delivery).get(list_deliveries))
        .route("/deliveries/{id}", get(get_delivery))
        .route("/deliveries/{id}/history", get(delivery_history))
        .route("/deliveries/{id}/cancel", post(cancel_delivery))
        .route("/deliveries/{id}/status", post(update_status))
}

struct DeliveryRow {
    id: Uuid,
    order_id: Uuid,
    status: DeliveryStatus,
    address: Jsonb<contracts::Address>,
    items: Jsonb<Vec<contracts::LineItem>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i32,
}

impl From<DeliveryRow> for Delivery {
    fn from(r: DeliveryRow) -> Self {
        Delivery {
            id: r.id,
            order_id: r.order_id,
            status: r.status,
            address: r.address.0,
            items: r.items.0,
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

async fn find(conn: &mut PgConnection, id: Uuid) -> Result<Option<Delivery>, sqlx::Error> {
    let row = sqlx::query_as!(
        DeliveryRow,
        r#"SELECT id, order_id, status AS "status: DeliveryStatus",
                  address AS "address: Jsonb<contracts::Address>",
                  items AS "items: Jsonb<Vec<contracts::LineItem>>", created_at, updated_at, version
           FROM deliveries WHERE id = $1"#,
        id,
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Delivery::from))
}

/// [`find`], locking the row for the caller's transaction.
async fn find_for_update(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Delivery>, sqlx::Error> {
    let row = sqlx::query_as!(
        DeliveryRow,
        r#"SELECT id, order_id, status AS "status: DeliveryStatus",
                  address AS "address: Jsonb<contracts::Address>",
                  items AS "items: Jsonb<Vec<contracts::LineItem>>", created_at, updated_at, version
           FROM deliveries WHERE id = $1 FOR UPDATE"#,
        id,
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Delivery::from))
}

fn not_found(id: Uuid) -> platform::ApiError {
    Problem::not_found(&format!("delivery {id}")).into()
}

/// Records a status change of `delivery` (already written, now in `delivery.status` at
/// `delivery.version`) in the caller's transaction: its history row and its
/// `DELIVERY_STATUS_CHANGED` event (the full delivery) in the outbox, so the event exists
/// exactly when the change was committed.
async fn record_change(
    conn: &mut PgConnection,
    delivery: &Delivery,
    from: Option<DeliveryStatus>,
    note: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO delivery_status_history (delivery_id, from_status, to_status, note)
         VALUES ($1, $2, $3, $4)",
        delivery.id,
        from as Option<DeliveryStatus>,
        delivery.status as DeliveryStatus,
        note,
    )
    .execute(&mut *conn)
    .await?;
    outbox::enqueue(
        conn,
        DELIVERY_AGGREGATE,
        delivery.id,
        delivery.version,
        DELIVERY_STATUS_CHANGED,
        delivery,
    )
    .await?;
    Ok(())
}

/// Commits a status change, marking SENT in the same transaction the events this instance
/// published since (so the outbox's marks cost no transaction of their own).
async fn commit_with_marks(
    state: &AppState,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<(), sqlx::Error> {
    let marks = match &state.outbox_marks {
        Some(flight) => outbox::owned::ride(flight, &mut tx).await?,
        None => None,
    };
    tx.commit().await?;
    if let Some(marks) = marks {
        marks.confirm();
    }
    Ok(())
}

/// Initiate the delivery of an order. Idempotent by `order_id`: a repeat returns
/// the delivery made the first time, never a second one.
#[utoipa::path(post, path = "/deliveries", tag = "deliveries", request_body = DeliveryRequest,
    security(("service" = []), ("staff" = [])),
    responses(
        (status = 201, body = Delivery, description = "Delivery created"),
        (status = 200, body = Delivery, description = "The order already had this delivery"),
        (status = 422, body = Problem)))]
pub async fn create_delivery(
    State(state): State<AppState>,
    _caller: Internal,
    Json(request): Json<DeliveryRequest>,
) -> ApiResult<(StatusCode, Json<Delivery>)> {
    ensure_valid(request.validate())?;
    // Dropping `tx` without commit rolls back.
    let mut tx = state.pool.begin().await?;
    let inserted = sqlx::query_as!(
        DeliveryRow,
        r#"INSERT INTO deliveries (id, order_id, status, address, items)
           VALUES ($1, $2, 'CREATED', $3, $4)
           ON CONFLICT (order_id) DO NOTHING
           RETURNING id, order_id, status AS "status: DeliveryStatus",
                     address AS "address: Jsonb<contracts::Address>",
                     items AS "items: Jsonb<Vec<contracts::LineItem>>", created_at, updated_at, version"#,
        Uuid::now_v7(),
        request.order_id,
        Jsonb(&request.address) as _,
        Jsonb(&request.items) as _,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = inserted {
        let delivery = Delivery::from(row);
        record_change(&mut tx, &delivery, None, None).await?;
        commit_with_marks(&state, tx).await?;
        tracing::info!(order_id = %delivery.order_id, delivery_id = %delivery.id, "delivery created");
        return Ok((StatusCode::CREATED, Json(delivery)));
    }
    let existing = sqlx::query_as!(
        DeliveryRow,
        r#"SELECT id, order_id, status AS "status: DeliveryStatus",
                  address AS "address: Jsonb<contracts::Address>",
                  items AS "items: Jsonb<Vec<contracts::LineItem>>", created_at, updated_at, version
           FROM deliveries WHERE order_id = $1"#,
        request.order_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok((StatusCode::OK, Json(existing.into())))
}

/// Filters of the delivery list.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only the delivery of this order.
    pub order_id: Option<Uuid>,
    /// At most this many, newest first (1–100, default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// List deliveries, newest first; `order_id` finds an order's delivery.
#[utoipa::path(get, path = "/deliveries", tag = "deliveries", params(ListQuery),
    responses((status = 200, body = Vec<Delivery>), (status = 400, body = Problem)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Vec<Delivery>>> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(Problem::bad_query("limit", "must be between 1 and 100").into());
    }
    let rows = sqlx::query_as!(
        DeliveryRow,
        r#"SELECT id, order_id, status AS "status: DeliveryStatus",
                  address AS "address: Jsonb<contracts::Address>",
                  items AS "items: Jsonb<Vec<contracts::LineItem>>", created_at, updated_at, version
           FROM deliveries WHERE ($1::uuid IS NULL OR order_id = $1)
           ORDER BY created_at DESC, id DESC LIMIT $2"#,
        query.order_id,
        limit,
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows.into_iter().map(Delivery::from).collect()))
}

/// Read a delivery.
#[utoipa::path(get, path = "/deliveries/{id}", tag = "deliveries",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Delivery), (status = 404, body = Problem)))]
pub async fn get_delivery(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Delivery>> {
    let mut conn = state.pool.acquire().await?;
    find(&mut conn, id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(id))
}

/// One change of a delivery's status.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusChange {
    pub from_status: Option<DeliveryStatus>,
    pub to_status: DeliveryStatus,
    pub note: Option<String>,
    pub changed_at: DateTime<Utc>,
}

/// A delivery's status history, oldest first.
#[utoipa::path(get, path = "/deliveries/{id}/history", tag = "deliveries",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<StatusChange>), (status = 404, body = Problem)))]
pub async fn delivery_history(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<StatusChange>>> {
    let mut conn = state.pool.acquire().await?;
    if find(&mut conn, id).await?.is_none() {
        return Err(not_found(id));
    }
    let changes = sqlx::query_as!(
        StatusChange,
        r#"SELECT from_status AS "from_status: DeliveryStatus", to_status AS "to_status: DeliveryStatus",
                  note, changed_at
           FROM delivery_status_history WHERE delivery_id = $1 ORDER BY id"#,
        id,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(Json(changes))
}

/// Moves a delivery to `next` if the courier's state machine allows it. Being in
/// `next` already is a harmless repeat; any other state is a 409.
async fn transition(
    state: &AppState,
    id: Uuid,
    next: DeliveryStatus,
    note: Option<&str>,
) -> ApiResult<Delivery> {
    let mut tx = state.pool.begin().await?;
    let current = find_for_update(&mut tx, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    if current.status == next {
        return Ok(current);
    }
    if !current.status.can_become(next) {
        return Err(Problem::conflict(
            "invalid-transition",
            format!(
                "a {} delivery cannot become {}",
                current.status.as_str(),
                next.as_str()
            ),
        )
        .with_extension("current_status", current.status)
        .into());
    }
    let row = sqlx::query_as!(
        DeliveryRow,
        r#"UPDATE deliveries SET status = $2, version = version + 1, updated_at = now()
           WHERE id = $1
           RETURNING id, order_id, status AS "status: DeliveryStatus",
                     address AS "address: Jsonb<contracts::Address>",
                     items AS "items: Jsonb<Vec<contracts::LineItem>>", created_at, updated_at, version"#,
        id,
        next.as_str(),
    )
    .fetch_one(&mut *tx)
    .await?;
    let delivery = Delivery::from(row);
    record_change(&mut tx, &delivery, Some(current.status), note).await?;
    commit_with_marks(state, tx).await?;
    tracing::info!(delivery_id = %id, from = current.status.as_str(), to = next.as_str(), "delivery status changed");
    Ok(delivery)
}

/// Cancel a delivery before pickup. Idempotent.
#[utoipa::path(post, path = "/deliveries/{id}/cancel", tag = "deliveries",
    params(("id" = Uuid, Path)), security(("service" = []), ("staff" = [])),
    responses((status = 200, body = Delivery), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "Already picked up or finished")))]
pub async fn cancel_delivery(
    State(state): State<AppState>,
    _caller: Internal,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Delivery>> {
    transition(
        &state,
        id,
        DeliveryStatus::Cancelled,
        Some("cancelled on request"),
    )
    .await
    .map(Json)
}

/// Courier/ops status update (staff). Only the courier's transitions are allowed.
#[utoipa::path(post, path = "/deliveries/{id}/status", tag = "deliveries",
    params(("id" = Uuid, Path)), request_body = DeliveryStatusUpdate,
    security(("staff" = [])),
    responses((status = 200, body = Delivery), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "Not a valid transition"),
        (status = 422, body = Problem)))]
pub async fn update_status(
    State(state): State<AppState>,
    _staff: Staff,
    Path(id): Path<Uuid>,
    Json(update): Json<DeliveryStatusUpdate>,
) -> ApiResult<Json<Delivery>> {
    ensure_valid(update.validate())?;
    transition(&state, id, update.status, update.note.as_deref())
        .await
        .map(Json)
}
