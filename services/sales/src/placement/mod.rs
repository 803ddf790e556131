//! Placing an order as a persisted saga (`crates/saga`), at the database's pace: two sales
//! transactions on the happy path, the saga's checkpoints riding in them.
//!
//! 1. `reserve_inventory` (remote): reserve at product, or fall back when product is
//!    unavailable (not a failure: the order is flagged and its delivery held). Insufficient
//!    stock, unknown products or a refusal reject the saga (typed [`Rejection`]; nothing to
//!    undo). Compensation: the reservation released (an order never recorded), or given back
//!    as a cancelled order's ([`compensations::release_stock`]).
//! 2. `record_order` (local, **sales transaction 1**): the Idempotency-Key claimed (a key
//!    already taken rejects with [`Rejection::KeyTaken`]: the handler replays the first
//!    answer), the order, items, history, `ORDER_CREATED`, the review and fallback event when
//!    flagged, the delivery retry row (PENDING, or HELD for a flagged order) — and the saga
//!    itself, written here for the first time (`lazy_start`): a crash before this leaves only
//!    a reservation, which expires. Past `record_by` (the customer was answered) it rejects
//!    with [`Rejection::TooLate`]. Compensation: the order cancelled
//!    ([`compensations::cancel_recorded`]). The reservation's commit is left to product's
//!    `ORDER_CREATED` consumer (and the reservation keeper, `workers::reservation_keeper`, keeps it alive while that
//!    event waits for the broker).
//! 3. `initiate_delivery` (remote; skipped for a flagged order): ask delivery (it dedups on
//!    the order). A failure is an outcome, not an error: the retry worker takes it on.
//!    Compensation: the delivery cancelled.
//! 4. `record_delivery` (local, **sales transaction 2**; skipped for a flagged order, whose
//!    saga then completes in transaction 1): the delivery id and `DELIVERY_INITIATED`, or the
//!    first failed attempt and `DELIVERY_INITIATION_FAILED`, and the saga COMPLETED. An order
//!    cancelled meanwhile rejects with [`Rejection::Cancelled`], and the compensations undo
//!    the delivery just made.
//!
//! The run belongs to its own task, not to the request (`http::orders::place` spawns it):
//! a client that disconnects or a request that times out never cuts a step mid-way.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use contracts::{
    FieldError,
    catalog::ShortItem,
    delivery::DeliveryRequest,
    orders::{DeliveryHold, Order, OrderStatus, PlaceOrder},
};
use saga::{BoxFuture, Orchestrator, RetryPolicy, SagaDefinition, Step, StepError, StepInput};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    config::Config,
    db::Db,
    orders::{
        compensations::{self, OpenReviews},
        delivery::{self as delivery_retry, Due},
        idempotency::{self, IdempotencyKey},
        reviews::ReviewReason,
    },
    outbox::{self, events},
    peers::{
        PeerError,
        delivery::{CancelOutcome, DeliveryClient},
        product::{ProductClient, ReserveOutcome},
    },
    store,
};

/// Saga type of order placement.
pub const SAGA_TYPE: &str = "order";

/// The order saga's step names.
pub use crate::orders::saga_steps as steps;

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
    /// The order as recorded, then with its delivery.
    #[serde(default)]
    pub order: Option<Order>,
    /// What the delivery call came to.
    #[serde(default)]
    pub delivery: Option<DeliveryAttempt>,
    /// Outbox marks the saga's transactions carried ([`outbox::owned::ride`]), confirmed
    /// when the saga completes (not persisted: a resumed saga's go back to the relay).
    #[serde(skip)]
    pub marks: Vec<Arc<outbox::owned::RidingMarks>>,
}

impl OrderSaga {
    /// Whether the order's delivery is started now (not held for a stock check).
    fn delivers(&self) -> bool {
        self.fallback.is_none()
    }
}

/// What the delivery call of the saga came to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DeliveryAttempt {
    Initiated {
        delivery_id: Uuid,
    },
    /// Not initiated: the retry worker takes it on (`not_sent`: delivery was not even asked).
    Failed {
        error: String,
        not_sent: bool,
    },
}

/// Why the saga refused an order (the rejection of its failing step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rejection", rename_all = "snake_case")]
pub enum Rejection {
    InsufficientStock {
        short_items: Vec<ShortItem>,
    },
    InvalidItems {
        errors: Vec<FieldError>,
    },
    /// Product refused for another reason (`kind`: its problem type).
    Refused {
        kind: String,
        detail: String,
    },
    /// The Idempotency-Key was recorded before (by an earlier or a concurrent request).
    KeyTaken,
    /// A concurrent request recorded the same order.
    Duplicate,
    /// Recovered after a crash too late to record the order.
    TooLate,
    /// The order was cancelled while its delivery was being made.
    Cancelled,
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
    /// What this instance's relay published and has not marked yet: the saga's
    /// transactions carry the marks (none when the broker is off).
    pub outbox_marks: Option<Arc<outbox::owned::InFlight>>,
}

impl Deps {
    /// Marks what the relay published, in the step's transaction.
    async fn carry_marks(
        &self,
        ctx: &mut OrderSaga,
        conn: &mut PgConnection,
    ) -> Result<(), StepError<Rejection>> {
        if let Some(flight) = &self.outbox_marks
            && let Some(marks) = outbox::owned::ride(flight, conn).await.map_err(db_error)?
        {
            ctx.marks.push(Arc::new(marks));
        }
        Ok(())
    }
}

/// The engine and the order saga's definition.
#[derive(Clone)]
pub struct OrderSagas {
    pub orchestrator: Orchestrator,
    pub definition: Arc<SagaDefinition<OrderSaga, Rejection>>,
}

impl OrderSagas {
    pub fn new(deps: Deps, owner_id: String, lease: Duration) -> Self {
        Self {
            orchestrator: Orchestrator::new(deps.db.pool.clone(), owner_id, lease),
            definition: Arc::new(definition(deps)),
        }
    }
}

fn db_error<R>(e: sqlx::Error) -> StepError<R> {
    StepError::retryable(format!("database: {e}"))
}

/// A local step's action: the step function, given the dependencies.
fn local<F>(
    deps: &Deps,
    f: F,
) -> impl for<'c> Fn(
    StepInput<OrderSaga>,
    &'c mut PgConnection,
) -> BoxFuture<'c, Result<OrderSaga, StepError<Rejection>>>
+ Send
+ Sync
+ 'static
where
    F: for<'c> Fn(
            Deps,
            OrderSaga,
            &'c mut PgConnection,
        ) -> BoxFuture<'c, Result<OrderSaga, StepError<Rejection>>>
        + Send
        + Sync
        + 'static,
{
    let deps = deps.clone();
    move |input, conn| f(deps.clone(), input.context, conn)
}

/// The definition, its steps capturing `deps`.
pub fn definition(deps: Deps) -> SagaDefinition<OrderSaga, Rejection> {
    let (d1, d2, d4, d5) = (deps.clone(), deps.clone(), deps.clone(), deps.clone());
    SagaDefinition::with_rejections(SAGA_TYPE)
        .step(
            Step::new(steps::RESERVE_INVENTORY, move |i: StepInput<OrderSaga>| {
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
            Step::local(
                steps::RECORD_ORDER,
                local(&deps, |deps, ctx, conn| Box::pin(record(deps, ctx, conn))),
            )
            .compensate_locally(|i: StepInput<OrderSaga>, conn: &mut PgConnection| {
                Box::pin(async move { cancel_order(i.context.order_id, conn).await })
            })
            .retry(RetryPolicy::once())
            .timeout(Duration::from_secs(15)),
        )
        .step(
            Step::new(steps::INITIATE_DELIVERY, move |i: StepInput<OrderSaga>| {
                let deps = d4.clone();
                async move { Ok(deliver(&deps, i.context).await) }
            })
            .when(OrderSaga::delivers)
            .compensate_with(move |i: StepInput<OrderSaga>| {
                let deps = d5.clone();
                async move { cancel_delivery(&deps, &i.context).await }
            })
            .retry(RetryPolicy::once())
            .timeout(Duration::from_secs(30)),
        )
        .step(
            Step::local(
                steps::RECORD_DELIVERY,
                local(&deps, |deps, ctx, conn| {
                    Box::pin(record_delivery(deps, ctx, conn))
                }),
            )
            .when(OrderSaga::delivers)
            .retry(RetryPolicy::new(
                3,
                Duration::from_millis(50),
                Duration::from_millis(500),
            ))
            .timeout(Duration::from_secs(15)),
        )
        .lazy_start()
}

async fn reserve(deps: &Deps, mut ctx: OrderSaga) -> Result<OrderSaga, StepError<Rejection>> {
    match deps.product.reserve(ctx.order_id, &ctx.request.items).await {
        Ok(ReserveOutcome::Reserved(_)) => ctx.reserved = true,
        Ok(ReserveOutcome::Insufficient(short_items)) => {
            return Err(StepError::Rejected(Rejection::InsufficientStock {
                short_items,
            }));
        }
        // Unknown products: product names the fields of the items we sent, which
        // are the customer's items in the same order.
        Err(PeerError::Rejected { problem, .. }) if problem.status == 422 => {
            return Err(StepError::Rejected(Rejection::InvalidItems {
                errors: problem.errors,
            }));
        }
        Err(PeerError::Rejected { problem, .. }) => {
            tracing::warn!(order_id = %ctx.order_id, %problem, "product refused the reservation");
            return Err(StepError::Rejected(Rejection::Refused {
                kind: problem.kind.clone(),
                detail: problem.detail.unwrap_or(problem.title),
            }));
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

async fn order_status(
    deps: &Deps,
    order_id: Uuid,
) -> Result<Option<OrderStatus>, StepError<Rejection>> {
    store::orders::status_of(&deps.db.pool, order_id)
        .await
        .map_err(db_error)
}

async fn release(deps: &Deps, ctx: &OrderSaga) -> Result<(), StepError<Rejection>> {
    if !ctx.reserved {
        return Ok(());
    }
    // The database may be why the order was not recorded: then release anyway (a
    // concurrent request that did record it has product take the units again on its
    // ORDER_CREATED).
    match order_status(deps, ctx.order_id).await.unwrap_or(None) {
        // Never recorded (given up): free the units now, not at the TTL.
        None => compensations::release_abandoned(&deps.product, ctx.order_id)
            .await
            .map_err(StepError::retryable),
        // This saga cancelled the order it had recorded: its units go back as for any
        // cancelled order (reconciliation retries if product is away now).
        Some(OrderStatus::Cancelled) => {
            compensations::release_stock(&deps.db.pool, &deps.product, ctx.order_id).await;
            Ok(())
        }
        // The same order id recorded by a concurrent request (same Idempotency-Key)
        // owns the reservation: leave it.
        Some(_) => Ok(()),
    }
}

/// Sales transaction 1 (the orchestrator's, which also writes the saga).
async fn record(
    deps: Deps,
    mut ctx: OrderSaga,
    conn: &mut PgConnection,
) -> Result<OrderSaga, StepError<Rejection>> {
    if !deps.config.fault_pause_before_record.is_zero() {
        tokio::time::sleep(deps.config.fault_pause_before_record).await;
    }
    if Utc::now() > ctx.record_by {
        return Err(StepError::Rejected(Rejection::TooLate));
    }
    let request = &ctx.request;
    let fallback = ctx.fallback.is_some();
    // The order id is derived from the Idempotency-Key: inserting the order claims the key.
    // A retry of a recorded order stops here (its transaction rolls back) and is answered
    // from the key; no lookup is paid by a first request.
    let order = store::orders::insert(
        &mut *conn,
        &store::orders::NewOrder {
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
    .await
    .map_err(|e| match platform::db::violated_constraint(&e) {
        Some("orders_pkey") if ctx.idempotency.is_some() => {
            StepError::Rejected(Rejection::KeyTaken)
        }
        Some("orders_pkey" | "idempotency_keys_pkey") => StepError::Rejected(Rejection::Duplicate),
        _ => db_error(e),
    })?;
    if let Some((key, hash)) = &ctx.idempotency {
        let key = IdempotencyKey::from_validated(key);
        idempotency::insert(
            &mut *conn,
            &request.customer_id,
            &key,
            hash,
            ctx.order_id,
            201,
        )
        .await
        .map_err(db_error)?;
    }
    if let Some(reason) = &ctx.fallback {
        let product_ids: Vec<&str> = request
            .items
            .iter()
            .map(|i| i.product_id.as_str())
            .collect();
        let details = json!({"product_ids": product_ids, "cause": reason});
        store::reviews::open(
            &mut *conn,
            order.id,
            ReviewReason::AvailabilityUnverified,
            &details,
        )
        .await
        .map_err(db_error)?;
        let payload = json!({
            "order_id": order.id,
            "product_ids": product_ids,
            "requires_manual_review": true,
            "fallback_used": true,
            "cause": reason,
        });
        outbox::enqueue(
            &mut *conn,
            order.id,
            order.version,
            events::AVAILABILITY_CHECK_FALLBACK_USED,
            &payload,
        )
        .await
        .map_err(db_error)?;
    }
    let first_retry =
        resilience::deadline::after(Utc::now(), deps.config.delivery_retry.first_delay);
    delivery_retry::schedule(&mut *conn, order.id, first_retry, fallback)
        .await
        .map_err(db_error)?;
    tracing::info!(order_id = %order.id, customer_id = %order.customer_id, fallback_used = fallback,
        "Created order {} in database", order.id);
    deps.carry_marks(&mut ctx, &mut *conn).await?;
    if fallback && deps.config.availability_recheck.wake {
        deps.recheck_wake.notify_one();
    }
    ctx.order = Some(order);
    Ok(ctx)
}

/// The compensation of `record_order`: the order cancelled (it was recorded, then the
/// saga failed).
async fn cancel_order(order_id: Uuid, conn: &mut PgConnection) -> Result<(), StepError<Rejection>> {
    let Some(mut lock) = store::lock(conn, order_id).await.map_err(db_error)? else {
        return Ok(());
    };
    match lock.row.status {
        OrderStatus::Cancelled => Ok(()),
        OrderStatus::PendingShipment => compensations::cancel_recorded(
            &mut lock,
            "order saga compensated",
            "system",
            OpenReviews::Resolve,
            None,
        )
        .await
        .map(|_| ())
        .map_err(|e| match e {
            compensations::CancelError::Database(e) => db_error(e),
            other => StepError::fatal(other),
        }),
        // Shipped meanwhile: only a person can settle that.
        other => Err(StepError::fatal(format!(
            "the order is {}: it cannot be cancelled",
            other.as_str()
        ))),
    }
}

/// The delivery call; never an error (a failure is for the retry worker).
async fn deliver(deps: &Deps, mut ctx: OrderSaga) -> OrderSaga {
    let request = DeliveryRequest {
        order_id: ctx.order_id,
        address: ctx.request.shipping_address.clone(),
        items: ctx
            .order
            .as_ref()
            .map_or_else(|| ctx.request.items.clone(), |o| o.items.clone()),
    };
    ctx.delivery = Some(match deps.delivery.initiate(&request).await {
        Ok(delivery) => DeliveryAttempt::Initiated {
            delivery_id: delivery.id,
        },
        Err(e) => DeliveryAttempt::Failed {
            not_sent: matches!(e, PeerError::Unavailable { not_sent: true, .. }),
            error: e.to_string(),
        },
    });
    ctx
}

/// Sales transaction 2 (the orchestrator's, which also completes the saga).
async fn record_delivery(
    deps: Deps,
    mut ctx: OrderSaga,
    conn: &mut PgConnection,
) -> Result<OrderSaga, StepError<Rejection>> {
    let now = Utc::now();
    let known = ctx.order.clone();
    match ctx.delivery.clone() {
        Some(DeliveryAttempt::Initiated { delivery_id }) => {
            let updated = delivery_retry::record_initiated(
                &mut *conn,
                ctx.order_id,
                delivery_id,
                known.as_ref(),
                now,
            )
            .await
            .map_err(db_error)?;
            if updated
                .as_ref()
                .is_some_and(|o| o.status == OrderStatus::Cancelled)
            {
                // Cancelled while the delivery was made: the compensations undo it.
                return Err(StepError::Rejected(Rejection::Cancelled));
            }
            tracing::info!(order_id = %ctx.order_id, %delivery_id, "delivery initiated");
            ctx.order = updated.or(known);
        }
        Some(DeliveryAttempt::Failed { error, not_sent }) => {
            if !not_sent {
                let version = known.as_ref().map_or(1, |o| o.version);
                let created_at = known.as_ref().map_or(now, |o| o.created_at);
                let due = Due {
                    order_id: ctx.order_id,
                    attempts: 0,
                    created_at,
                };
                // The order first, like every writer.
                if let Some(mut lock) = store::lock(&mut *conn, ctx.order_id)
                    .await
                    .map_err(db_error)?
                {
                    delivery_retry::record_failure(
                        &mut lock,
                        &deps.config.delivery_retry,
                        version,
                        due,
                        now,
                        &error,
                    )
                    .await
                    .map_err(db_error)?;
                }
            }
            // The row written with the order stays due: the retry worker initiates it.
            tracing::warn!(order_id = %ctx.order_id, error, not_sent, "delivery not initiated; left to the retry worker");
        }
        None => {}
    }
    deps.carry_marks(&mut ctx, &mut *conn).await?;
    Ok(ctx)
}

async fn cancel_delivery(deps: &Deps, ctx: &OrderSaga) -> Result<(), StepError<Rejection>> {
    let delivery_id = match &ctx.delivery {
        Some(DeliveryAttempt::Initiated { delivery_id }) => *delivery_id,
        _ => return Ok(()),
    };
    match deps.delivery.cancel(delivery_id).await {
        Ok(CancelOutcome::Cancelled(_) | CancelOutcome::Unknown) => Ok(()),
        Ok(CancelOutcome::TooLate { status }) => Err(StepError::fatal(format!(
            "the delivery is past pickup ({status:?})"
        ))),
        Err(e) => Err(StepError::retryable(e)),
    }
}
