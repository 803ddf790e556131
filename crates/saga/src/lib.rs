//! Sagas as data, persisted in PostgreSQL.
//!
//! A [`SagaDefinition`] is a named, ordered list of [`Step`]s. Each step has an action, and
//! optionally a compensation that undoes it, a condition on the saga context (false: the step is
//! skipped), a parallel group (consecutive steps of one group run concurrently and the saga waits
//! for all of them), a [`RetryPolicy`] and a per-attempt timeout. An [`Orchestrator`] runs
//! instances of a definition and records them in `saga_instances` / `saga_steps` (migration
//! `migrations/sales/20261122000005_sagas.sql`):
//!
//! - every step succeeds (or is skipped) → `COMPLETED`;
//! - a step fails ([`StepError::Fatal`], a typed [`StepError::Rejected`], or
//!   [`StepError::Retryable`] / timeout after its last attempt) → `COMPENSATING`: the
//!   compensations of all completed steps run in reverse order, including the branches of the
//!   failing parallel group that succeeded → `COMPENSATED` (a rejection comes back as the value,
//!   for the caller to match);
//! - a compensation fails after its own retries → `FAILED`, reported as [`SagaEnd::Failed`]
//!   (see [`SagaOutcome::needs_manual_review`]); [`Orchestrator::resume`] retries it later;
//! - a step returns [`StepError::Park`] → `WAITING`, nothing compensated, until
//!   [`Orchestrator::resume`] runs that step again.
//!
//! # Local and remote steps, checkpoints
//! A **remote** step ([`Step::new`], [`Step::parallel`]) calls something outside the saga's
//! database. A **local** step ([`Step::local`]) does database work on a transaction the
//! orchestrator opens, and the orchestrator writes the step's completion — with the outcomes of
//! the remote steps before it — in that same transaction, which commits once (DBOS's and
//! underway's rule: a step's checkpoint rides in the step's own transaction). A run that ends
//! on remote steps writes one more checkpoint; a run whose remaining steps are all skipped
//! completes in its last local step's transaction. So `remote → local → remote → local` costs
//! two commits, and the lease costs no write of its own unless a run outlasts a third of it.
//! A new saga is written before its first step unless the definition is
//! [`SagaDefinition::lazy_start`]: then with its first local step, for sagas whose earlier
//! remote steps undo themselves if the process dies (a reservation that expires).
//!
//! # Context and outputs
//! A sequential step gets the context and returns the updated context. Parallel steps
//! ([`Step::parallel`]) cannot change the context (they would race): each returns a JSON
//! output, stored under its name in [`StepInput::outputs`] for later steps and compensations.
//!
//! # Crashes, recovery and leases
//! Running a saga takes a lease on its row (`locked_by`, `locked_until`), renewed every third of
//! its length; no other owner runs a saga whose lease is held, and every write checks the lease
//! is still ours. If the process dies, the lease expires and [`Orchestrator::recover`] (run it at
//! start-up and periodically) resumes the saga from its last checkpoint: forward from the first
//! step not recorded done, or on with the compensations not recorded done. A remote step whose
//! outcome was not yet checkpointed runs again, so **actions and compensations must be
//! idempotent** (e.g. keyed by the order id); a local step never runs twice, its work having
//! committed with its checkpoint.
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//!
//! use saga::{Orchestrator, RetryPolicy, SagaDefinition, SagaEnd, Step, StepError, StepInput};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Order {
//!     order_id: uuid::Uuid,
//!     reservation_id: Option<String>,
//! }
//!
//! # async fn example(pool: sqlx::PgPool, order: Order) -> saga::Result<()> {
//! let definition = SagaDefinition::new("order")
//!     .step(
//!         Step::new("reserve_inventory", |input: StepInput<Order>| async move {
//!             let mut order = input.context;
//!             order.reservation_id = Some(format!("res-{}", order.order_id));
//!             Ok(order)
//!         })
//!         .compensate_with(|input: StepInput<Order>| async move {
//!             // release input.context.reservation_id, idempotently
//!             Ok(())
//!         })
//!         .retry(RetryPolicy::new(3, Duration::from_millis(100), Duration::from_secs(2)))
//!         .timeout(Duration::from_secs(5)),
//!     )
//!     .step(Step::new("initiate_delivery", |input: StepInput<Order>| async move {
//!         Err::<Order, _>(StepError::park("delivery unavailable; the retry worker resumes"))
//!     }));
//!
//! let orchestrator = Orchestrator::new(pool, "sales-host-1", Duration::from_secs(30));
//! let outcome = orchestrator.start(&definition, order).await?;
//! match &outcome.end {
//!     SagaEnd::Completed => {}
//!     SagaEnd::Waiting { step, reason } => { /* resume(&definition, outcome.id) later */ }
//!     SagaEnd::Compensated { failed_step, error, .. } => { /* undone */ }
//!     SagaEnd::Failed { .. } => { /* open a manual review */ }
//! }
//! // At start-up and every minute:
//! orchestrator.recover(&[&definition], chrono::Utc::now()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`definition`]: [`SagaDefinition`], [`Step`] (remote or local), [`StepInput`],
//!   [`StepError`], [`RetryPolicy`], [`SagaRejection`].
//! - [`orchestrator`]: [`Orchestrator`] (`start`, `resume`, `compensate`, `recover`),
//!   [`SagaOutcome`] / [`SagaEnd`], [`RecoveryReport`].
//! - [`store`]: the tables: [`store::load`] ([`SagaView`] for `GET /sagas/{id}`),
//!   [`store::create`] (a saga written in the caller's transaction),
//!   [`store::mark_compensated`] (a saga its caller undid itself), checkpoints, statuses.
//! - [`error`]: [`Error`], [`Result`].

pub mod definition;
pub mod error;
pub mod orchestrator;
pub mod store;

pub use definition::{
    BoxFuture, DEFAULT_COMPENSATION_RETRY, DEFAULT_TIMEOUT, Locality, NoRejection, OutputError,
    Outputs, RetryPolicy, SagaContext, SagaDefinition, SagaRejection, Step, StepError, StepInput,
};
pub use error::{Error, Result};
pub use orchestrator::{Orchestrator, Recoverable, RecoveryReport, SagaEnd, SagaOutcome};
pub use store::{SagaStatus, SagaView, StepKind, StepStatus, StepView};
