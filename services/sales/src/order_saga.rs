//! Placing an order as a persisted saga (DESIGN §3 on `crates/saga`):
//!
//! 1. `reserve_inventory`: reserve at product, or fall back when product is
//!    unavailable (not a failure: the order is flagged for review). Insufficient
//!    stock or unknown products end the saga (nothing to undo). Compensation:
//!    release the reservation, unless an order was recorded for this id.
//! 2. `record_order`: the one transaction (order, items, history, events, review,
//!    delivery retry row, idempotency key), then the reservation commit (fast
//!    path; product's `ORDER_CREATED` consumer is the guarantee). A saga recovered
//!    after a crash past `record_by` compensates instead of recording an order
//!    nobody was told about. Compensation: cancel the order (`ORDER_CANCELLED`).
//! 3. `initiate_delivery`: ask delivery; if it fails the saga parks (WAITING) and
//!    the delivery retry worker resumes it once delivery answers; it is never a
//!    reason to compensate. Compensation: cancel the delivery.
//!
//! Every action and compensation is idempotent by order id, as the engine needs.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use contracts::{
    FieldError,
    catalog::ShortItem,
    orders::{DeliveryHold, OrderStatus, PlaceOrder},
};
use saga::{Orchestrator, RetryPolicy, SagaDefinition, Step, StepError, StepInput};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::{
    config::Config,
    db::Db,
    delivery_retry::{self, Attempted, Due},
    orders::{
        idempotency::{self, IdempotencyKey},
        status, store,
    },
    outbox::{self, events},
    peers::{
        PeerError,
        delivery::{CancelOutcome, DeliveryClient},
        product::{ProductClient, ReserveOutcome},
    },
    reviews::{self, ReviewReason},
};

/// Saga type of order placement.
pub const SAGA_TYPE: &str = "order";

/// What the order saga carries between its steps (persisted as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderSaga {
    pub order_id: Uuid,
    pub request: PlaceOrder,
    /// The request's Idempotency-Key and body fingerprint, stored with the order.
    pub idempotency: Option<(String, String)>,
    /// Past this instant the order is no longer recorded (the customer was answered).
    pub record_by: DateTime<Utc>,
    /// Stock is held at product.
    pub reserved: bool,
    /// Why product could not be asked, when the fallback was used.
    pub fallback: Option<String>,
    pub delivery_id: Option<Uuid>,
}

/// Why the saga refused an order: the `Fatal` error of its failing step, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "rejection", rename_all = "snake_case")]
pub enum Rejection {
    InsufficientStock {
        short_items: Vec<ShortItem>,
    },
    InvalidItems {
        errors: Vec<FieldError>,
    },
    Refused {
        detail: String,
    },
    /// A concurrent request with the same Idempotency-Key recorded the order.
    Duplicate,
    /// Recovered after a crash too late to record the order.
    TooLate,
}

impl Rejection {
    fn fatal(&self) -> StepError {
        StepError::fatal(serde_json::to_string(self).unwrap_or_default())
    }

    /// The rejection a compensated saga's error carries, if it is one.
    pub fn parse(error: &str) -> Option<Self> {
        serde_json::from_str(error).ok()
    }
}

/// What the steps need.
#[derive(Clone)]
pub struct Deps {
    pub db: Db,
    pub product: ProductClient,
    pub delivery: DeliveryClient,
    pub config: Arc<Config>,
    /// Notified when an order is recorded on the fallback (the re-check has work).
    pub recheck_wake: Arc<tokio::sync::Notify>,
}

/// The engine and the order saga's definition.
#[derive(Clone)]
pub struct OrderSagas {
    pub orchestrator: Orchestrator,
    pub definition: SagaDefinition<OrderSaga>,
}

impl OrderSagas {
    pub fn new(deps: Deps, owner_id: String, lease: Duration) -> Self {
        Self {
            orchestrator: Orchestrator::new(deps.db.pool.clone(), owner_id, lease),
            definition: definition(deps),
        }
    }

    /// The saga of an order, if it has one.
    pub async fn saga_of(&self, order_id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT id FROM saga_instances WHERE saga_type = 'order' AND context->>'order_id' = $1
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(order_id.to_string())
        .fetch_optional(self.orchestrator.pool())
        .await
    }

    /// Resumes the order's saga if it is waiting (after its delivery was initiated).
    pub async fn resume_waiting(&self, order_id: Uuid) {
        let Ok(Some(id)) = self.saga_of(order_id).await else {
            return;
        };
        match self.orchestrator.resume(&self.definition, id).await {
            Ok(outcome) => {
                tracing::debug!(%order_id, saga_id = %id, status = ?outcome.status(), "order saga resumed")
            }
            Err(e) => {
                tracing::debug!(%order_id, saga_id = %id, error = %e, "order saga not resumed")
            }
        }
    }

    /// Marks the order's saga compensated after the order was cancelled (the
    /// compensations are idempotent: what the cancellation did already is a no-op).
    pub async fn compensated_by_cancel(&self, order_id: Uuid, reason: &str) {
        let Ok(Some(id)) = self.saga_of(order_id).await else {
            return;
        };
        if let Err(e) = self
            .orchestrator
            .compensate(&self.definition, id, reason)
            .await
        {
            tracing::warn!(%order_id, saga_id = %id, error = %e, "order saga not marked compensated");
        }
    }
}

fn db_error(e: sqlx::Error) -> StepError {
    StepError::retryable(format!("database: {e}"))
}

/// The definition, its steps capturing `deps`.
pub fn definition(deps: Deps) -> SagaDefinition<OrderSaga> {
    let (d1, d2, d3, d4, d5, d6) = (
        deps.clone(),
        deps.clone(),
        deps.clone(),
        deps.clone(),
        deps.clone(),
        deps,
    );
    SagaDefinition::new(SAGA_TYPE)
        .step(
            Step::new("reserve_inventory", move |i: StepInput<OrderSaga>| {
                let deps = d1.clone();
                async move { reserve(&deps, i.context).await }
            })
            .compensate_with(move |i: StepInput<OrderSaga>| {
                let deps = d2.clone();
                async move { release(&deps, &i.context).await }
            })
            .retry(RetryPolicy::once())
            .timeout(Duration::from_secs(15)),
        )
        .step(
            Step::new("record_order", move |i: StepInput<OrderSaga>| {
                let deps = d3.clone();
                async move { record(&deps, i.context).await }
            })
            .compensate_with(move |i: StepInput<OrderSaga>| {
                let deps = d4.clone();
                async move { cancel_order(&deps, &i.context).await }
            })
            .retry(RetryPolicy::once())
            .timeout(Duration::from_secs(15)),
        )
        .step(
            Step::new("initiate_delivery", move |i: StepInput<OrderSaga>| {
                let deps = d5.clone();
                async move { deliver(&deps, i.context).await }
            })
            .compensate_with(move |i: StepInput<OrderSaga>| {
                let deps = d6.clone();
                async move { cancel_delivery(&deps, &i.context).await }
            })
            .retry(RetryPolicy::once())
            .timeout(Duration::from_secs(30)),
        )
}

async fn reserve(deps: &Deps, mut ctx: OrderSaga) -> Result<OrderSaga, StepError> {
    match deps.product.reserve(ctx.order_id, &ctx.request.items).await {
        Ok(ReserveOutcome::Reserved(_)) => ctx.reserved = true,
        Ok(ReserveOutcome::Insufficient(short_items)) => {
            return Err(Rejection::InsufficientStock { short_items }.fatal());
        }
        // Unknown products: product names the fields of the items we sent, which
        // are the customer's items in the same order.
        Err(PeerError::Rejected { problem, .. }) if problem.status == 422 => {
            return Err(Rejection::InvalidItems {
                errors: problem.errors,
            }
            .fatal());
        }
        Err(PeerError::Rejected { problem, .. }) => {
            tracing::warn!(order_id = %ctx.order_id, %problem, "product refused the reservation");
            return Err(Rejection::Refused {
                detail: problem.detail.unwrap_or(problem.title),
            }
            .fatal());
        }
        Err(e @ PeerError::Unavailable { .. }) => {
            let product_ids: Vec<&str> = ctx
                .request
                .items
                .iter()
                .map(|i| i.product_id.as_str())
                .collect();
            tracing::warn!(order_id = %ctx.order_id, ?product_ids, error = %e, "Product service down, using fallback availability");
            ctx.fallback = Some(e.to_string());
        }
    }
    Ok(ctx)
}

async fn order_exists(deps: &Deps, order_id: Uuid) -> Result<bool, StepError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orders WHERE id = $1)")
        .bind(order_id)
        .fetch_one(&deps.db.pool)
        .await
        .map_err(db_error)
}

async fn release(deps: &Deps, ctx: &OrderSaga) -> Result<(), StepError> {
    if !ctx.reserved {
        return Ok(());
    }
    match order_status(deps, ctx.order_id).await? {
        None => {}
        // This saga cancelled the order it had recorded: its units go back as for any
        // cancelled order (reconciliation retries if product is away now).
        Some(OrderStatus::Cancelled) => {
            crate::cancellation::release_stock(&deps.db.pool, &deps.product, ctx.order_id).await;
            return Ok(());
        }
        // The same order id recorded by a concurrent request (same Idempotency-Key)
        // owns the reservation now: leave it.
        Some(_) => return Ok(()),
    }
    match deps.product.release(ctx.order_id).await {
        Ok(()) => Ok(()),
        // Committed meanwhile: ORDER_CANCELLED gives the units back.
        Err(PeerError::Rejected { problem, .. }) if problem.status == 409 => Ok(()),
        Err(e) => Err(StepError::retryable(e)),
    }
}

async fn record(deps: &Deps, ctx: OrderSaga) -> Result<OrderSaga, StepError> {
    if order_exists(deps, ctx.order_id).await? {
        // Recorded by an earlier attempt of this saga (or by a concurrent
        // request with the same key, which answers the same order).
        return Ok(ctx);
    }
    if Utc::now() > ctx.record_by {
        return Err(Rejection::TooLate.fatal());
    }
    match write(deps, &ctx).await {
        Ok(()) => {}
        Err(e)
            if matches!(
                platform::db::violated_constraint(&e),
                Some("orders_pkey" | "idempotency_keys_pkey")
            ) =>
        {
            return Err(Rejection::Duplicate.fatal());
        }
        Err(e) => return Err(StepError::fatal(format!("database: {e}"))),
    }
    tracing::info!(order_id = %ctx.order_id, customer_id = %ctx.request.customer_id, fallback_used = ctx.fallback.is_some(),
        "Created order {} in database", ctx.order_id);
    if ctx.fallback.is_some() && deps.config.availability_recheck.wake {
        deps.recheck_wake.notify_one();
    }
    if ctx.reserved
        && let Err(e) = deps.product.commit(ctx.order_id).await
    {
        tracing::warn!(order_id = %ctx.order_id, error = %e, "reservation commit failed; product commits it when it consumes ORDER_CREATED");
    }
    Ok(ctx)
}

/// The one transaction of the write path. Dropping it without commit rolls back.
async fn write(deps: &Deps, ctx: &OrderSaga) -> Result<(), sqlx::Error> {
    let request = &ctx.request;
    let fallback = ctx.fallback.is_some();
    let mut tx = deps.db.pool.begin().await?;
    let order = store::insert(
        &mut tx,
        &store::NewOrder {
            id: ctx.order_id,
            customer_id: &request.customer_id,
            items: &request.items,
            shipping_address: &request.shipping_address,
            requires_manual_review: fallback,
            fallback_used: fallback,
            // Stock unconfirmed: the delivery waits for the re-check or staff.
            delivery_hold: fallback.then_some(DeliveryHold::AvailabilityUnverified),
        },
    )
    .await?;
    if let Some(reason) = &ctx.fallback {
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
        + chrono::Duration::from_std(deps.config.delivery_retry.first_delay)
            .unwrap_or(chrono::Duration::MAX);
    delivery_retry::schedule(&mut tx, order.id, first_retry, fallback).await?;
    if let Some((key, hash)) = &ctx.idempotency {
        let key = IdempotencyKey::from_validated(key);
        idempotency::insert(&mut tx, &request.customer_id, &key, hash, ctx.order_id, 201).await?;
    }
    tx.commit().await
}

async fn cancel_order(deps: &Deps, ctx: &OrderSaga) -> Result<(), StepError> {
    let mut tx = deps.db.pool.begin().await.map_err(db_error)?;
    let cancelled = match status::transition(
        &mut tx,
        ctx.order_id,
        OrderStatus::Cancelled,
        "order saga compensated",
    )
    .await
    {
        Ok(done) => done.into_order(),
        // Shipped meanwhile: only a person can settle that.
        Err(e) => return Err(StepError::fatal(e)),
    };
    sqlx::query("UPDATE delivery_retries SET status = 'DONE', updated_at = now() WHERE order_id = $1 AND status IN ('PENDING', 'HELD')")
        .bind(ctx.order_id)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    deps.db.cache.updated(&cancelled).await;
    Ok(())
}

async fn deliver(deps: &Deps, mut ctx: OrderSaga) -> Result<OrderSaga, StepError> {
    let park =
        |why: String| StepError::park(format!("{why}; the delivery retry worker resumes the saga"));
    let mut conn = deps
        .db
        .pool
        .acquire()
        .await
        .map_err(|e| park(format!("database: {e}")))?;
    let order = store::load(&mut conn, ctx.order_id)
        .await
        .map_err(|e| park(format!("database: {e}")))?
        .ok_or_else(|| StepError::fatal("the order is missing"))?;
    if order.delivery_id.is_some() || order.status != OrderStatus::PendingShipment {
        ctx.delivery_id = order.delivery_id;
        return Ok(ctx);
    }
    if let Some(hold) = order.delivery_hold {
        return Err(park(format!("delivery held ({})", hold.as_str())));
    }
    let retry: Option<(i32, DateTime<Utc>)> =
        sqlx::query_as("SELECT attempts, created_at FROM delivery_retries WHERE order_id = $1")
            .bind(ctx.order_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| park(format!("database: {e}")))?;
    drop(conn);
    let (attempts, created_at) = retry.unwrap_or((0, order.created_at));
    let due = Due {
        order_id: order.id,
        attempts,
        created_at,
    };
    match delivery_retry::attempt(
        &deps.db,
        &deps.delivery,
        &deps.config.delivery_retry,
        &order,
        due,
        Utc::now(),
    )
    .await
    {
        Ok(Attempted::Initiated(updated)) => {
            ctx.delivery_id = updated.delivery_id;
            Ok(ctx)
        }
        Ok(_) => Err(park("delivery not initiated yet".into())),
        Err(e) => Err(park(format!("recording the delivery attempt failed: {e}"))),
    }
}

async fn cancel_delivery(deps: &Deps, ctx: &OrderSaga) -> Result<(), StepError> {
    match cancel_at_delivery(deps, ctx).await {
        // Marking the saga of a cancelled order compensated: the cancellation
        // stopped the delivery itself (it refuses to cancel otherwise), so
        // delivery being down by now leaves nothing undone; failing here would
        // leave the saga FAILED, waiting for staff, for nothing.
        Err(StepError::Retryable(error)) if order_cancelled(deps, ctx.order_id).await? => {
            tracing::warn!(order_id = %ctx.order_id, %error,
                "delivery unreachable while marking a cancelled order's saga compensated; nothing left to undo");
            Ok(())
        }
        other => other,
    }
}

async fn order_cancelled(deps: &Deps, order_id: Uuid) -> Result<bool, StepError> {
    Ok(order_status(deps, order_id).await? == Some(OrderStatus::Cancelled))
}

async fn order_status(deps: &Deps, order_id: Uuid) -> Result<Option<OrderStatus>, StepError> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_optional(&deps.db.pool)
        .await
        .map_err(db_error)?;
    Ok(status.as_deref().and_then(OrderStatus::parse))
}

async fn cancel_at_delivery(deps: &Deps, ctx: &OrderSaga) -> Result<(), StepError> {
    let delivery_id = match ctx.delivery_id {
        Some(id) => Some(id),
        None => deps
            .delivery
            .find_for_order(ctx.order_id)
            .await
            .map_err(StepError::retryable)?
            .map(|d| d.id),
    };
    let Some(delivery_id) = delivery_id else {
        return Ok(());
    };
    match deps.delivery.cancel(delivery_id).await {
        Ok(CancelOutcome::Cancelled(_) | CancelOutcome::Unknown) => Ok(()),
        Ok(CancelOutcome::TooLate { status }) => Err(StepError::fatal(format!(
            "the delivery is past pickup ({status:?})"
        ))),
        Err(e) => Err(StepError::retryable(e)),
    }
}

/// Resumes sagas left running by a crashed instance: once at start-up, then every `interval`.
pub async fn run_recovery(
    sagas: OrderSagas,
    interval: Duration,
    token: tokio_util::sync::CancellationToken,
) {
    use platform::worker::{Next, Start, run_every};
    run_every(
        "saga-recovery",
        interval,
        Start::Immediately,
        token,
        || async {
            let report = sagas
                .orchestrator
                .recover(&[&sagas.definition], Utc::now())
                .await?;
            if report.found > 0 {
                tracing::info!(?report, "order sagas recovered");
            }
            Ok::<_, saga::Error>(Next::Wait)
        },
    )
    .await;
}

/// A saga with its steps (staff).
#[utoipa::path(get, path = "/sagas/{id}", tag = "sagas", security(("staff" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = saga::store::SagaView), (status = 401, body = contracts::Problem),
        (status = 403, body = contracts::Problem), (status = 404, body = contracts::Problem)))]
pub async fn get_saga(
    axum::extract::State(state): axum::extract::State<crate::app::AppState>,
    _staff: platform::auth::Staff,
    platform::extract::Path(id): platform::extract::Path<Uuid>,
) -> platform::ApiResult<platform::extract::Json<saga::store::SagaView>> {
    state
        .db
        .guard(async {
            match saga::store::load(&state.db.pool, id).await {
                Ok(Some(view)) => Ok(platform::extract::Json(view)),
                Ok(None) => Err(contracts::Problem::not_found(&format!("saga {id}")).into()),
                Err(saga::Error::Database(e)) => Err(e.into()),
                Err(e) => {
                    tracing::error!(saga_id = %id, error = %e, "saga unreadable");
                    Err(contracts::Problem::internal().into())
                }
            }
        })
        .await
}
