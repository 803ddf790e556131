//! Reservations hold stock for an order (internal: only a service or staff
//! credential may call these endpoints, see `platform::auth::Internal`): all items or none, idempotent by order
//! id, expiring after a TTL unless committed. Stock arithmetic (`reserved`,
//! `stock_on_hand`) changes only here, always under row locks taken in one order:
//! the reservation row first, then its products by id. So concurrent reservations
//! for the last unit serialize, and no two writers deadlock.
//!
//! A cancelled order's units come back however they are held: releasing with the
//! cancellation as the reason ([`release_for_cancellation`], the direct call from
//! sales or `ORDER_CANCELLED`, whichever comes first; the other changes nothing)
//! frees an active reservation and restocks a committed one, and marks the
//! reservation so that it is never taken again — not by a late `ORDER_CREATED`,
//! not by a reservation request for the same order.

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use contracts::{
    LineItem, Problem,
    catalog::{INSUFFICIENT_STOCK, Reservation, ReservationRequest, ReservationStatus, ShortItem},
    common::merge_items,
};
use platform::{
    ApiResult,
    auth::Internal,
    ensure_valid,
    extract::{Json, Path},
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{app::AppState, catalog::unknown_products};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/reservations", post(create_reservation))
        .route(
            "/reservations/{order_id}",
            get(get_reservation).delete(release_reservation),
        )
        .route("/reservations/{order_id}/commit", post(commit_reservation))
        .route("/reservations/renewals", post(renew_reservations))
}

/// What a reservation attempt came to.
#[derive(Debug)]
pub enum ReserveOutcome {
    /// Stock is now held (201).
    Created(Reservation),
    /// The order already had this reservation (200).
    Existing(Reservation),
}

/// Reads a reservation with its items.
pub async fn find(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<Reservation>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT order_id, status AS "status: ReservationStatus", expires_at, created_at, updated_at
           FROM reservations WHERE order_id = $1"#,
        order_id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let items = sqlx::query_as!(
        LineItem,
        "SELECT product_id, quantity FROM reservation_items WHERE order_id = $1 ORDER BY product_id",
        order_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(Reservation {
        order_id: row.order_id,
        status: row.status,
        items,
        expires_at: row.expires_at,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }))
}

fn sorted(mut items: Vec<LineItem>) -> Vec<LineItem> {
    items.sort_by(|a, b| a.product_id.cmp(&b.product_id));
    items
}

/// Reserves all of `request`'s items or none, in one transaction.
/// Errors: 422 for unknown products, 409 `insufficient-stock` with the short
/// items, 409 `reservation-mismatch` when the order holds a different reservation.
pub async fn reserve(
    pool: &PgPool,
    request: &ReservationRequest,
    now: DateTime<Utc>,
    ttl: std::time::Duration,
) -> ApiResult<ReserveOutcome> {
    let items = sorted(merge_items(&request.items));
    let expires_at = resilience::deadline::after(now, ttl);
    // Dropping `tx` without commit (any early return) rolls everything back.
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query!(
        "INSERT INTO reservations (order_id, status, expires_at, created_at, updated_at)
         VALUES ($1, 'ACTIVE', $2, $3, $3) ON CONFLICT (order_id) DO NOTHING",
        request.order_id,
        expires_at,
        now,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        if order_cancelled(&mut tx, request.order_id).await? {
            return Err(order_cancelled_problem(request.order_id).into());
        }
        let existing = find(&mut tx, request.order_id).await?.ok_or_else(|| {
            Problem::conflict(
                "reservation-busy",
                "the reservation changed meanwhile; retry",
            )
        })?;
        if existing.items != items {
            return Err(Problem::conflict(
                "reservation-mismatch",
                format!(
                    "order {} already holds a reservation for other items",
                    request.order_id
                ),
            )
            .into());
        }
        if matches!(
            existing.status,
            ReservationStatus::Released | ReservationStatus::Expired
        ) {
            // The order is being placed again (a client's retry after sales gave the
            // first attempt up): hold the units again, or say they are gone.
            let reservation = reactivate(&mut tx, &existing, now, expires_at).await?;
            tx.commit().await?;
            tracing::info!(order_id = %request.order_id, "released or expired reservation taken again");
            return Ok(ReserveOutcome::Existing(reservation));
        }
        return Ok(ReserveOutcome::Existing(existing));
    }

    let requested: Vec<String> = request.items.iter().map(|i| i.product_id.clone()).collect();
    hold(&mut tx, &items, &requested, now).await?;
    let ids: Vec<String> = items.iter().map(|i| i.product_id.clone()).collect();
    let quantities: Vec<i32> = items.iter().map(|i| i.quantity).collect();
    sqlx::query!(
        "INSERT INTO reservation_items (order_id, product_id, quantity)
         SELECT $1, * FROM unnest($2::text[], $3::int[])",
        request.order_id,
        &ids,
        &quantities,
    )
    .execute(&mut *tx)
    .await?;
    let reservation = find(&mut tx, request.order_id)
        .await?
        .ok_or_else(|| sqlx::Error::RowNotFound)?;
    tx.commit().await?;
    tracing::info!(order_id = %request.order_id, items = items.len(), "stock reserved");
    Ok(ReserveOutcome::Created(reservation))
}

/// Holds `items` (merged, sorted by product) in the caller's transaction: locks
/// their products by id, then adds them to `reserved`; 422 naming the unknown
/// products (as positions in `requested`, the request's own order), 409
/// `insufficient-stock` with the short items; changes nothing on an error.
async fn hold(
    tx: &mut PgConnection,
    items: &[LineItem],
    requested: &[String],
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let ids: Vec<String> = items.iter().map(|i| i.product_id.clone()).collect();
    let stock: Vec<(String, i32)> = sqlx::query!(
        r#"SELECT id, stock_on_hand - reserved AS "available!" FROM products WHERE id = ANY($1::text[])
         ORDER BY id FOR UPDATE"#,
        &ids,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|row| (row.id, row.available))
    .collect();
    let known: Vec<String> = stock.iter().map(|(id, _)| id.clone()).collect();
    ensure_valid(unknown_products(requested, &known))?;
    let short: Vec<ShortItem> = items
        .iter()
        .filter_map(|item| {
            let available = stock.iter().find(|(id, _)| *id == item.product_id)?.1;
            (available < item.quantity).then(|| ShortItem {
                product_id: item.product_id.clone(),
                requested: item.quantity,
                available,
            })
        })
        .collect();
    if !short.is_empty() {
        return Err(
            Problem::conflict(INSUFFICIENT_STOCK, "not enough stock for some items")
                .with_extension("short_items", &short)
                .into(),
        );
    }
    let quantities: Vec<i32> = items.iter().map(|i| i.quantity).collect();
    sqlx::query!(
        "UPDATE products p SET reserved = p.reserved + x.quantity, updated_at = $3
         FROM unnest($1::text[], $2::int[]) AS x(id, quantity) WHERE p.id = x.id",
        &ids,
        &quantities,
        now,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Makes a RELEASED or EXPIRED reservation ACTIVE again with a new deadline, if
/// every item is still available; else 409 `insufficient-stock`, changing nothing.
/// Locks in the usual order: the reservation row, then products by id.
pub(crate) async fn reactivate(
    tx: &mut PgConnection,
    existing: &Reservation,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> ApiResult<Reservation> {
    let status = sqlx::query_scalar!(
        r#"SELECT status AS "status: ReservationStatus" FROM reservations WHERE order_id = $1 FOR UPDATE"#,
        existing.order_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    if !matches!(
        status,
        ReservationStatus::Released | ReservationStatus::Expired
    ) {
        return Err(Problem::conflict(
            "reservation-busy",
            "the reservation changed meanwhile; retry",
        )
        .into());
    }
    let ids: Vec<String> = existing
        .items
        .iter()
        .map(|i| i.product_id.clone())
        .collect();
    hold(tx, &existing.items, &ids, now).await?;
    sqlx::query!(
        "UPDATE reservations SET status = 'ACTIVE', expires_at = $2, updated_at = $3
         WHERE order_id = $1",
        existing.order_id,
        expires_at,
        now,
    )
    .execute(&mut *tx)
    .await?;
    Ok(find(&mut *tx, existing.order_id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?)
}

/// Whether the order of this reservation was cancelled (its reservation is never taken again).
pub async fn order_cancelled(conn: &mut PgConnection, order_id: Uuid) -> Result<bool, sqlx::Error> {
    let cancelled = sqlx::query_scalar!(
        r#"SELECT order_cancelled_at IS NOT NULL AS "cancelled!" FROM reservations WHERE order_id = $1"#,
        order_id,
    )
    .fetch_optional(conn)
    .await?;
    Ok(cancelled.unwrap_or(false))
}

fn order_cancelled_problem(order_id: Uuid) -> Problem {
    Problem::conflict(
        "order-cancelled",
        format!("order {order_id} was cancelled: its stock is not reserved again"),
    )
}

/// What releasing a cancelled order's reservation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRelease {
    /// An active reservation's units are available again.
    Released,
    /// A committed reservation's units are back in stock.
    Restocked,
    /// Nothing was held (released, expired, cancelled before, or never reserved).
    NothingHeld,
}

/// Gives a cancelled order's units back, in the caller's transaction: an ACTIVE reservation
/// is released, a COMMITTED one restocked (the units never left the warehouse: the order
/// was cancelled before shipment), and the reservation marked as the cancelled order's so
/// it is never taken again. An order without a reservation gets an empty marked one, so a
/// late reservation request for it is refused too. Idempotent: a second call finds
/// nothing held.
pub async fn release_for_cancellation(
    tx: &mut PgConnection,
    order_id: Uuid,
    now: DateTime<Utc>,
) -> ApiResult<CancelRelease> {
    sqlx::query!(
        "INSERT INTO reservations (order_id, status, expires_at, created_at, updated_at)
         VALUES ($1, 'RELEASED', $2, $2, $2) ON CONFLICT (order_id) DO NOTHING",
        order_id,
        now,
    )
    .execute(&mut *tx)
    .await?;
    let status = sqlx::query_scalar!(
        r#"SELECT status AS "status: ReservationStatus" FROM reservations WHERE order_id = $1 FOR UPDATE"#,
        order_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    let done = match status {
        ReservationStatus::Active => {
            settle_in(&mut *tx, order_id, Settle::Release, now).await?;
            CancelRelease::Released
        }
        ReservationStatus::Committed => {
            lock_products_of(&mut *tx, order_id).await?;
            sqlx::query!(
                "UPDATE products p SET stock_on_hand = p.stock_on_hand + ri.quantity, updated_at = $2
                 FROM reservation_items ri WHERE ri.order_id = $1 AND p.id = ri.product_id",
                order_id,
                now,
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query!(
                "UPDATE reservations SET status = 'RELEASED', updated_at = $2 WHERE order_id = $1",
                order_id,
                now,
            )
            .execute(&mut *tx)
            .await?;
            CancelRelease::Restocked
        }
        ReservationStatus::Released | ReservationStatus::Expired => CancelRelease::NothingHeld,
    };
    sqlx::query!(
        "UPDATE reservations SET order_cancelled_at = COALESCE(order_cancelled_at, $2) WHERE order_id = $1",
        order_id,
        now,
    )
    .execute(&mut *tx)
    .await?;
    if done != CancelRelease::NothingHeld {
        tracing::info!(%order_id, outcome = ?done, "cancelled order's stock given back");
    }
    Ok(done)
}

/// Keeps the reservations of `order_ids` alive, in one transaction (rows locked in id order,
/// then products, like every writer): an active one's deadline is pushed to `now + ttl`; a
/// lapsed one (expired, or released by an abandoned attempt) is taken again if stock allows.
pub async fn renew(
    pool: &PgPool,
    order_ids: &[Uuid],
    now: DateTime<Utc>,
    ttl: std::time::Duration,
) -> ApiResult<Vec<contracts::catalog::Renewal>> {
    use contracts::catalog::{Renewal, RenewalOutcome};
    let expires_at = resilience::deadline::after(now, ttl);
    let mut ids = order_ids.to_vec();
    ids.sort();
    ids.dedup();
    // Dropping `tx` without commit (any early return) rolls back.
    let mut tx = pool.begin().await?;
    let rows = sqlx::query!(
        r#"SELECT order_id, status AS "status: ReservationStatus",
                  order_cancelled_at IS NOT NULL AS "cancelled!" FROM reservations
           WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE"#,
        &ids,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut renewals = Vec::with_capacity(ids.len());
    for id in &ids {
        let Some(row) = rows.iter().find(|row| row.order_id == *id) else {
            renewals.push(Renewal {
                order_id: *id,
                outcome: RenewalOutcome::Unknown,
            });
            continue;
        };
        let outcome = match (row.status, row.cancelled) {
            (_, true) => RenewalOutcome::Cancelled,
            (ReservationStatus::Active, _) => {
                sqlx::query!(
                    "UPDATE reservations SET expires_at = GREATEST(expires_at, $2), updated_at = $3
                     WHERE order_id = $1",
                    id,
                    expires_at,
                    now,
                )
                .execute(&mut *tx)
                .await?;
                RenewalOutcome::Renewed
            }
            (ReservationStatus::Committed, _) => RenewalOutcome::Committed,
            (ReservationStatus::Expired | ReservationStatus::Released, _) => {
                let existing = find(&mut tx, *id).await?.ok_or(sqlx::Error::RowNotFound)?;
                match reactivate(&mut tx, &existing, now, expires_at).await {
                    Ok(_) => RenewalOutcome::Retaken,
                    Err(platform::ApiError::Problem(p)) if p.kind.ends_with(INSUFFICIENT_STOCK) => {
                        RenewalOutcome::Gone
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        renewals.push(Renewal {
            order_id: *id,
            outcome,
        });
    }
    tx.commit().await?;
    Ok(renewals)
}

/// How an ACTIVE reservation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// The order is confirmed: units leave stock for good.
    Commit,
    /// The order will not ship: units return to what is available.
    Release,
    /// The TTL ran out: units return to what is available.
    Expire,
}

impl Settle {
    fn target(self) -> ReservationStatus {
        match self {
            Self::Commit => ReservationStatus::Committed,
            Self::Release => ReservationStatus::Released,
            Self::Expire => ReservationStatus::Expired,
        }
    }
}

/// Moves an ACTIVE reservation to its end state and adjusts stock, in one
/// transaction. A reservation already in that end state is returned unchanged
/// (repeats are harmless); any other end state is a 409. `None` if it does not exist.
pub async fn settle(
    pool: &PgPool,
    order_id: Uuid,
    how: Settle,
    now: DateTime<Utc>,
) -> ApiResult<Option<Reservation>> {
    // Dropping `tx` without commit (any early return) rolls back.
    let mut tx = pool.begin().await?;
    let reservation = settle_in(&mut tx, order_id, how, now).await?;
    tx.commit().await?;
    Ok(reservation)
}

/// [`settle`] inside the caller's transaction.
pub async fn settle_in(
    tx: &mut PgConnection,
    order_id: Uuid,
    how: Settle,
    now: DateTime<Utc>,
) -> ApiResult<Option<Reservation>> {
    let status = sqlx::query_scalar!(
        r#"SELECT status AS "status: ReservationStatus" FROM reservations WHERE order_id = $1 FOR UPDATE"#,
        order_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(status) = status else {
        return Ok(None);
    };
    let target = how.target();
    if status == target {
        return Ok(find(&mut *tx, order_id).await?);
    }
    if status != ReservationStatus::Active {
        return Err(Problem::conflict(
            "reservation-settled",
            format!("reservation of order {order_id} is {}", status.as_str()),
        )
        .with_extension("reservation_status", status)
        .into());
    }
    if how == Settle::Expire {
        // Only expire what really is past its deadline at `now`.
        let due = sqlx::query_scalar!(
            r#"SELECT expires_at <= $2 AS "due!" FROM reservations WHERE order_id = $1"#,
            order_id,
            now,
        )
        .fetch_one(&mut *tx)
        .await?;
        if !due {
            return Ok(find(&mut *tx, order_id).await?);
        }
    }
    lock_products_of(&mut *tx, order_id).await?;
    let shipped: i32 = if how == Settle::Commit { 1 } else { 0 };
    sqlx::query!(
        "UPDATE products p SET reserved = p.reserved - ri.quantity,
                stock_on_hand = p.stock_on_hand - ri.quantity * $2, updated_at = $3
         FROM reservation_items ri WHERE ri.order_id = $1 AND p.id = ri.product_id",
        order_id,
        shipped,
        now,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE reservations SET status = $2, updated_at = $3 WHERE order_id = $1",
        order_id,
        target.as_str(),
        now,
    )
    .execute(&mut *tx)
    .await?;
    let reservation = find(&mut *tx, order_id).await?;
    tracing::info!(%order_id, status = target.as_str(), "reservation settled");
    Ok(reservation)
}

/// Locks the products of an order's reservation, by id (the lock order of every writer).
async fn lock_products_of(tx: &mut PgConnection, order_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT p.id FROM products p JOIN reservation_items ri ON ri.product_id = p.id
         WHERE ri.order_id = $1 ORDER BY p.id FOR UPDATE OF p",
        order_id,
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(())
}

/// Hold stock for an order: all items or none. Idempotent by `order_id`.
#[utoipa::path(post, path = "/reservations", tag = "reservations",
    request_body = ReservationRequest, security(("service" = []), ("staff" = [])),
    responses(
        (status = 201, body = Reservation, description = "Stock held"),
        (status = 200, body = Reservation, description = "The order already held this reservation"),
        (status = 409, body = Problem, description = "Insufficient stock (`short_items`), or another reservation for this order"),
        (status = 422, body = Problem, description = "Invalid items or unknown products")))]
pub async fn create_reservation(
    State(state): State<AppState>,
    _caller: Internal,
    Json(request): Json<ReservationRequest>,
) -> ApiResult<(StatusCode, Json<Reservation>)> {
    ensure_valid(request.validate())?;
    match reserve(&state.pool, &request, Utc::now(), state.reservation_ttl).await? {
        ReserveOutcome::Created(r) => Ok((StatusCode::CREATED, Json(r))),
        ReserveOutcome::Existing(r) => Ok((StatusCode::OK, Json(r))),
    }
}

/// Keep orders' reservations alive while their `ORDER_CREATED` waits: an active one's
/// deadline moves a TTL ahead; a lapsed one is taken again if stock allows (`GONE` if not).
#[utoipa::path(post, path = "/reservations/renewals", tag = "reservations",
    request_body = contracts::catalog::RenewalRequest, security(("service" = []), ("staff" = [])),
    responses((status = 200, body = Vec<contracts::catalog::Renewal>, description = "One outcome per order, by id"),
        (status = 422, body = Problem)))]
pub async fn renew_reservations(
    State(state): State<AppState>,
    _caller: Internal,
    Json(request): Json<contracts::catalog::RenewalRequest>,
) -> ApiResult<Json<Vec<contracts::catalog::Renewal>>> {
    ensure_valid(request.validate())?;
    Ok(Json(
        renew(
            &state.pool,
            &request.order_ids,
            Utc::now(),
            state.reservation_ttl,
        )
        .await?,
    ))
}

/// Read an order's reservation.
#[utoipa::path(get, path = "/reservations/{order_id}", tag = "reservations",
    params(("order_id" = Uuid, Path)), security(("service" = []), ("staff" = [])),
    responses((status = 200, body = Reservation), (status = 404, body = Problem)))]
pub async fn get_reservation(
    State(state): State<AppState>,
    _caller: Internal,
    Path(order_id): Path<Uuid>,
) -> ApiResult<Json<Reservation>> {
    let mut conn = state.pool.acquire().await?;
    find(&mut conn, order_id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(&format!("reservation of order {order_id}")).into())
}

/// Commit an order's reservation: its units leave stock for good. Idempotent.
#[utoipa::path(post, path = "/reservations/{order_id}/commit", tag = "reservations",
    params(("order_id" = Uuid, Path)), security(("service" = []), ("staff" = [])),
    responses((status = 200, body = Reservation), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "Released or expired")))]
pub async fn commit_reservation(
    State(state): State<AppState>,
    _caller: Internal,
    Path(order_id): Path<Uuid>,
) -> ApiResult<Json<Reservation>> {
    settle(&state.pool, order_id, Settle::Commit, Utc::now())
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(&format!("reservation of order {order_id}")).into())
}

/// Why a reservation is released (`DELETE /reservations/{order_id}?reason=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseReason {
    /// The order was never recorded (its placement was given up): an active reservation is
    /// released; a committed one is a 409.
    #[default]
    Abandoned,
    /// The order was cancelled: committed units are restocked too, and the order's
    /// stock is never reserved again. Answers 200 even when nothing was reserved.
    OrderCancelled,
}

/// The query of a release.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct ReleaseQuery {
    /// `abandoned` (default) or `order-cancelled`.
    #[serde(default)]
    pub reason: ReleaseReason,
}

/// Release an order's reservation: its units become available again. Idempotent. With
/// `reason=order-cancelled`, a committed reservation is restocked as well, and the order's
/// stock is never reserved again.
#[utoipa::path(delete, path = "/reservations/{order_id}", tag = "reservations",
    params(("order_id" = Uuid, Path), ReleaseQuery), security(("service" = []), ("staff" = [])),
    responses((status = 200, body = Reservation), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "Already committed (not for a cancelled order)")))]
pub async fn release_reservation(
    State(state): State<AppState>,
    _caller: Internal,
    Path(order_id): Path<Uuid>,
    platform::extract::Query(query): platform::extract::Query<ReleaseQuery>,
) -> ApiResult<Json<Reservation>> {
    if query.reason == ReleaseReason::OrderCancelled {
        let mut tx = state.pool.begin().await?;
        release_for_cancellation(&mut tx, order_id, Utc::now()).await?;
        let reservation = find(&mut tx, order_id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        tx.commit().await?;
        return Ok(Json(reservation));
    }
    let result = settle(&state.pool, order_id, Settle::Release, Utc::now()).await;
    match result {
        // Expired is as good as released for a caller that wants the stock back.
        Err(platform::ApiError::Problem(p))
            if p.extensions.get("reservation_status") == Some(&serde_json::json!("EXPIRED")) =>
        {
            let mut conn = state.pool.acquire().await?;
            Ok(Json(
                find(&mut conn, order_id)
                    .await?
                    .ok_or(sqlx::Error::RowNotFound)?,
            ))
        }
        other => other?
            .map(Json)
            .ok_or_else(|| Problem::not_found(&format!("reservation of order {order_id}")).into()),
    }
}
