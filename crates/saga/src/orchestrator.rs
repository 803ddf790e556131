//! Running sagas: [`Orchestrator`] starts, resumes, cancels and recovers them, persisting every
//! state change before it moves on.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use tracing::{Instrument, info, info_span, warn};
use uuid::Uuid;

use crate::{
    definition::{
        BoxFuture, Effect, Outputs, SagaContext, SagaDefinition, Step, StepError, StepInput,
    },
    error::{Error, Result},
    store::{self, ClaimMode, Held, InstanceRow, SagaStatus, StepKind, StepStatus},
};

/// How many stale sagas one [`Orchestrator::recover`] call takes on.
pub const RECOVERY_BATCH: i64 = 100;

/// How a saga run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaEnd {
    /// Every step succeeded or was skipped.
    Completed,
    /// Every completed step was compensated: `failed_step` failed with `error`, or (no
    /// `failed_step`) the saga was cancelled with `error` as the reason.
    Compensated {
        failed_step: Option<String>,
        error: String,
    },
    /// `step` parked the saga; [`Orchestrator::resume`] runs it again.
    Waiting { step: String, reason: String },
    /// The compensation of `compensation_step` failed for good: **needs manual review**. The
    /// compensations of steps before it have not run; [`Orchestrator::resume`] retries from it.
    Failed {
        failed_step: Option<String>,
        error: String,
        compensation_step: String,
        compensation_error: String,
    },
}

impl SagaEnd {
    /// The status the saga has in the database.
    pub fn status(&self) -> SagaStatus {
        match self {
            Self::Completed => SagaStatus::Completed,
            Self::Compensated { .. } => SagaStatus::Compensated,
            Self::Waiting { .. } => SagaStatus::Waiting,
            Self::Failed { .. } => SagaStatus::Failed,
        }
    }
}

/// A saga at the end of a run.
#[derive(Debug, Clone)]
pub struct SagaOutcome<C> {
    pub id: Uuid,
    /// The context as the last completed sequential step left it.
    pub context: C,
    /// Outputs of the parallel steps that completed.
    pub outputs: Outputs,
    pub end: SagaEnd,
}

impl<C> SagaOutcome<C> {
    pub fn status(&self) -> SagaStatus {
        self.end.status()
    }

    /// Whether a compensation failed and a person must look at the saga.
    pub fn needs_manual_review(&self) -> bool {
        matches!(self.end, SagaEnd::Failed { .. })
    }
}

/// What one [`Orchestrator::recover`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Unfinished sagas found with an expired lease (or none).
    pub found: usize,
    /// Sagas this call claimed and ran, with the status each ended in.
    pub recovered: Vec<(Uuid, SagaStatus)>,
    /// Sagas someone else claimed first (or that changed status meanwhile).
    pub skipped: usize,
    /// Sagas of a type no definition was given for; left alone.
    pub unknown_type: Vec<Uuid>,
    /// Sagas whose run stopped on an error; the next sweep tries again once the lease expires.
    pub errors: Vec<(Uuid, String)>,
}

/// A saga definition of any context type, for [`Orchestrator::recover`]. Implemented by every
/// [`SagaDefinition`].
pub trait Recoverable: Send + Sync {
    fn saga_type(&self) -> &'static str;

    /// Claims saga `id` for recovery and runs it; `None` if someone else has it.
    #[doc(hidden)]
    fn recover_one<'a>(
        &'a self,
        orchestrator: &'a Orchestrator,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Pin<Box<dyn Future<Output = Result<Option<SagaStatus>>> + Send + 'a>>;
}

impl<C: SagaContext> Recoverable for SagaDefinition<C> {
    fn saga_type(&self) -> &'static str {
        SagaDefinition::saga_type(self)
    }

    fn recover_one<'a>(
        &'a self,
        orchestrator: &'a Orchestrator,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Option<SagaStatus>>> {
        Box::pin(orchestrator.recover_one(self, id, now))
    }
}

/// Runs sagas and keeps their state in PostgreSQL. Cheap to clone (one shared inner state).
///
/// Each orchestrator has an owner id, unique per process (e.g. `sales-<hostname>-<pid>` or a
/// uuid): it is written to `locked_by` while the orchestrator runs a saga, and another owner
/// cannot claim the saga until the lease expires. The lease is renewed every third of its length
/// while a saga runs, so a lease only expires when its owner died or stalled.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    owner: String,
    lease: Duration,
    /// Sagas this orchestrator is running now: a lease held by `owner` lets `owner` in again,
    /// which must not let two tasks of this process run one saga.
    running: Mutex<HashSet<Uuid>>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("owner", &self.inner.owner)
            .field("lease", &self.inner.lease)
            .finish_non_exhaustive()
    }
}

/// Marks a saga as run by this orchestrator until dropped (also when the run is dropped).
struct Running<'a> {
    set: &'a Mutex<HashSet<Uuid>>,
    id: Uuid,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

impl Orchestrator {
    /// An orchestrator writing as `owner_id`, holding leases of length `lease`.
    pub fn new(pool: PgPool, owner_id: impl Into<String>, lease: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                owner: owner_id.into(),
                lease,
                running: Mutex::new(HashSet::new()),
            }),
        }
    }

    pub fn owner_id(&self) -> &str {
        &self.inner.owner
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Starts a new saga of `definition` with a fresh id and runs it to an end.
    pub async fn start<C: SagaContext>(
        &self,
        definition: &SagaDefinition<C>,
        context: C,
    ) -> Result<SagaOutcome<C>> {
        self.start_with_id(definition, Uuid::now_v7(), context)
            .await
    }

    /// Starts a new saga with the given id (e.g. derived from an order id) and runs it to an
    /// end. [`Error::AlreadyExists`] if the id is taken.
    pub async fn start_with_id<C: SagaContext>(
        &self,
        definition: &SagaDefinition<C>,
        id: Uuid,
        context: C,
    ) -> Result<SagaOutcome<C>> {
        let _running = self.enter(id).ok_or(Error::Busy(id))?;
        let context_json = serde_json::to_value(&context)?;
        let inserted = store::insert_running(
            &self.inner.pool,
            id,
            definition.saga_type(),
            &context_json,
            &self.inner.owner,
            self.lease_ms(),
        )
        .await?;
        if !inserted {
            return Err(Error::AlreadyExists(id));
        }
        info!(saga_id = %id, saga_type = definition.saga_type(), "saga started");
        let row = InstanceRow {
            saga_type: definition.saga_type().to_owned(),
            status: SagaStatus::Running.as_str().to_owned(),
            context: context_json,
            outputs: Value::Object(Outputs::new()),
            failed_step: None,
            error: None,
        };
        self.drive(definition, id, row).await
    }

    /// Runs saga `id` on from where it is:
    /// - `RUNNING` / `COMPENSATING` (a saga written with [`store::create`], or whose owner's
    ///   lease expired): continues from the first step not done / the compensations not done;
    /// - `WAITING`: runs the parked step again and carries on;
    /// - `FAILED`: retries the compensation that failed, then the rest;
    /// - `COMPLETED` / `COMPENSATED`: returns the outcome as stored.
    ///
    /// [`Error::Busy`] if another owner holds the lease.
    pub async fn resume<C: SagaContext>(
        &self,
        definition: &SagaDefinition<C>,
        id: Uuid,
    ) -> Result<SagaOutcome<C>> {
        let _running = self.enter(id).ok_or(Error::Busy(id))?;
        match self.claim(definition, id, &ClaimMode::Resume).await? {
            Some(row) => {
                info!(saga_id = %id, saga_type = definition.saga_type(), status = row.status, "saga resumed");
                self.drive(definition, id, row).await
            }
            None => {
                self.unclaimed(
                    definition,
                    id,
                    &[SagaStatus::Completed, SagaStatus::Compensated],
                )
                .await
            }
        }
    }

    /// Cancels saga `id`: compensates every step that completed, in reverse order, and ends
    /// `COMPENSATED` (or `FAILED` if a compensation fails). Takes a saga that is `COMPLETED`,
    /// `WAITING`, `FAILED`, or unfinished with a free lease; an already `COMPENSATED` saga is
    /// returned as stored. `reason` is recorded as the saga's error.
    pub async fn compensate<C: SagaContext>(
        &self,
        definition: &SagaDefinition<C>,
        id: Uuid,
        reason: &str,
    ) -> Result<SagaOutcome<C>> {
        let _running = self.enter(id).ok_or(Error::Busy(id))?;
        match self
            .claim(definition, id, &ClaimMode::Compensate(reason))
            .await?
        {
            Some(row) => {
                info!(saga_id = %id, saga_type = definition.saga_type(), reason, "saga cancelled, compensating");
                self.drive(definition, id, row).await
            }
            None => {
                self.unclaimed(definition, id, &[SagaStatus::Compensated])
                    .await
            }
        }
    }

    /// The recovery sweep: takes up to [`RECOVERY_BATCH`] `RUNNING` / `COMPENSATING` sagas whose
    /// lease expired before `now` (their owner crashed) or that never had one, and runs each to
    /// an end, one after the other. A saga someone else claims first is skipped; an error on one
    /// saga does not stop the others. Pass `Utc::now()`; a later `now` treats leases as expired
    /// early (tests).
    pub async fn recover(
        &self,
        definitions: &[&dyn Recoverable],
        now: DateTime<Utc>,
    ) -> Result<RecoveryReport> {
        let stale = store::stale(&self.inner.pool, now, RECOVERY_BATCH).await?;
        let mut report = RecoveryReport {
            found: stale.len(),
            ..RecoveryReport::default()
        };
        for (id, saga_type) in stale {
            let Some(definition) = definitions.iter().find(|d| d.saga_type() == saga_type) else {
                warn!(saga_id = %id, saga_type, "no definition for a stale saga; left alone");
                report.unknown_type.push(id);
                continue;
            };
            match definition.recover_one(self, id, now).await {
                Ok(Some(status)) => report.recovered.push((id, status)),
                Ok(None) => report.skipped += 1,
                Err(e) => {
                    warn!(saga_id = %id, saga_type, error = %e, "saga recovery stopped");
                    report.errors.push((id, e.to_string()));
                }
            }
        }
        Ok(report)
    }

    async fn recover_one<C: SagaContext>(
        &self,
        definition: &SagaDefinition<C>,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<SagaStatus>> {
        let Some(_running) = self.enter(id) else {
            return Ok(None);
        };
        let Some(row) = self.claim(definition, id, &ClaimMode::Recover(now)).await? else {
            return Ok(None);
        };
        info!(saga_id = %id, saga_type = definition.saga_type(), status = row.status, "recovering saga");
        let outcome = self.drive(definition, id, row).await?;
        Ok(Some(outcome.status()))
    }

    fn enter(&self, id: Uuid) -> Option<Running<'_>> {
        let set = &self.inner.running;
        let inserted = set.lock().insert(id);
        // Built only once the lock is released: dropping a `Running` takes the lock.
        inserted.then(|| Running { set, id })
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.inner.lease.as_millis()).unwrap_or(i64::MAX)
    }

    fn held(&self, id: Uuid) -> Held<'_> {
        Held::new(&self.inner.pool, id, &self.inner.owner, self.lease_ms())
    }

    async fn claim<C: SagaContext>(
        &self,
        definition: &SagaDefinition<C>,
        id: Uuid,
        mode: &ClaimMode<'_>,
    ) -> Result<Option<InstanceRow>> {
        store::claim(
            &self.inner.pool,
            id,
            definition.saga_type(),
            &self.inner.owner,
            self.lease_ms(),
            mode,
        )
        .await
    }

    /// Why a claim took nothing: the stored outcome if the saga is in one of `settled`,
    /// otherwise the matching error.
    async fn unclaimed<C: SagaContext>(
        &self,
        definition: &SagaDefinition<C>,
        id: Uuid,
        settled: &[SagaStatus],
    ) -> Result<SagaOutcome<C>> {
        let row = store::instance(&self.inner.pool, id)
            .await?
            .ok_or(Error::NotFound(id))?;
        if row.saga_type != definition.saga_type() {
            return Err(Error::WrongType {
                id,
                expected: definition.saga_type(),
                found: row.saga_type,
            });
        }
        let status: SagaStatus = row.status.parse()?;
        if !settled.contains(&status) {
            return Err(Error::Busy(id));
        }
        let end = match status {
            SagaStatus::Completed => SagaEnd::Completed,
            _ => SagaEnd::Compensated {
                failed_step: row.failed_step,
                error: row.error.unwrap_or_default(),
            },
        };
        Ok(SagaOutcome {
            id,
            context: serde_json::from_value(row.context)?,
            outputs: into_outputs(row.outputs),
            end,
        })
    }

    /// Runs a claimed saga to an end while renewing its lease. If the lease is lost, the run is
    /// dropped wherever it is (the new owner carries on).
    async fn drive<C: SagaContext>(
        &self,
        definition: &SagaDefinition<C>,
        id: Uuid,
        row: InstanceRow,
    ) -> Result<SagaOutcome<C>> {
        let span = info_span!("saga", saga_id = %id, saga_type = definition.saga_type());
        // One `Held` for the run and its lease keeper: the keeper must know when the run has
        // begun releasing the lease itself.
        let held = self.held(id);
        async {
            tokio::select! {
                biased;
                outcome = self.run(definition, &held, row) => outcome,
                lost = self.keep_lease(&held) => Err(lost),
            }
        }
        .instrument(span)
        .await
    }

    /// Renews the lease every third of its length; returns only when it was lost.
    async fn keep_lease(&self, held: &Held<'_>) -> Error {
        let period = (self.inner.lease / 3).max(Duration::from_millis(10));
        let id = held.id;
        loop {
            tokio::time::sleep(period).await;
            match held.renew().await {
                Ok(true) => {}
                // The run's final write released the lease (possibly while this renewal was in
                // flight, its answer arriving before the run's): not a loss. Should that write
                // find the lease taken, it fails with `LeaseLost` itself.
                Ok(false) if held.releasing() => std::future::pending::<()>().await,
                Ok(false) => {
                    warn!(saga_id = %id, "saga lease lost to another owner; stopping this run");
                    return Error::LeaseLost(id);
                }
                Err(e) => warn!(saga_id = %id, error = %e, "could not renew the saga lease"),
            }
        }
    }

    async fn run<C: SagaContext>(
        &self,
        definition: &SagaDefinition<C>,
        held: &Held<'_>,
        row: InstanceRow,
    ) -> Result<SagaOutcome<C>> {
        let id = held.id;
        let status: SagaStatus = row.status.parse()?;
        let mut state = RunState {
            id,
            saga_type: definition.saga_type(),
            context: serde_json::from_value(row.context)?,
            outputs: into_outputs(row.outputs),
            progress: Progress::load(&self.inner.pool, id).await?,
            failed_step: row.failed_step,
            error: row.error.unwrap_or_default(),
        };
        if state.progress.interrupted {
            let n = held.interrupt_running().await?;
            info!(saga_id = %id, saga_type = state.saga_type, attempts = n, "attempts of a previous owner marked interrupted");
        }

        if status == SagaStatus::Running {
            match self.forward(definition, held, &mut state).await? {
                Forward::Completed => {
                    held.complete().await?;
                    info!(saga_id = %id, saga_type = state.saga_type, "saga completed");
                    return Ok(state.outcome(SagaEnd::Completed));
                }
                Forward::Parked { step, reason } => {
                    held.park(&step, &reason).await?;
                    info!(saga_id = %id, saga_type = state.saga_type, step, reason, "saga waiting");
                    return Ok(state.outcome(SagaEnd::Waiting { step, reason }));
                }
                Forward::Failed { step, error } => {
                    held.begin_compensation(&step, &error).await?;
                    warn!(saga_id = %id, saga_type = state.saga_type, step, error, "saga step failed; compensating");
                    state.failed_step = Some(step);
                    state.error = error;
                }
            }
        }

        match self.compensate_all(definition, held, &mut state).await? {
            None => {
                held.compensated().await?;
                info!(saga_id = %id, saga_type = state.saga_type, "saga compensated");
                let end = SagaEnd::Compensated {
                    failed_step: state.failed_step.clone(),
                    error: state.error.clone(),
                };
                Ok(state.outcome(end))
            }
            Some((step, compensation_error)) => {
                held.failed(step, &compensation_error).await?;
                tracing::error!(
                    saga_id = %id, saga_type = state.saga_type, step, error = compensation_error,
                    "saga compensation failed; the saga needs manual review"
                );
                let end = SagaEnd::Failed {
                    failed_step: state.failed_step.clone(),
                    error: state.error.clone(),
                    compensation_step: step.to_owned(),
                    compensation_error,
                };
                Ok(state.outcome(end))
            }
        }
    }

    /// Runs the actions not yet done, unit by unit (a sequential step, or a parallel group).
    async fn forward<C: SagaContext>(
        &self,
        definition: &SagaDefinition<C>,
        held: &Held<'_>,
        state: &mut RunState<C>,
    ) -> Result<Forward> {
        for unit in definition.units() {
            let pending: Vec<&Step<C>> = unit
                .iter()
                .filter(|s| !state.progress.action_done(s.name))
                .collect();
            if pending.is_empty() {
                continue;
            }
            let results = join_all(pending.iter().map(|step| {
                let first_attempt = state.progress.next_attempt(step.name, StepKind::Action);
                self.run_action(held, state, step, first_attempt)
            }))
            .await;

            let (mut failed, mut parked, mut error) = (None, None, None);
            for (step, result) in pending.iter().zip(results) {
                match result {
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                    Ok(ActionEnd::Succeeded(effect)) => {
                        match effect {
                            Effect::Context(context) => state.context = context,
                            Effect::Output(output) => {
                                state.outputs.insert(step.name.to_owned(), output);
                            }
                        }
                        state.progress.succeeded.insert(step.name.to_owned());
                    }
                    Ok(ActionEnd::Skipped) => {
                        state.progress.skipped.insert(step.name.to_owned());
                    }
                    Ok(ActionEnd::Failed(e)) => {
                        failed.get_or_insert((step.name, e));
                    }
                    Ok(ActionEnd::Parked(reason)) => {
                        parked.get_or_insert((step.name, reason));
                    }
                }
            }
            if let Some(e) = error {
                return Err(e);
            }
            if let Some((step, error)) = failed {
                return Ok(Forward::Failed {
                    step: step.to_owned(),
                    error,
                });
            }
            if let Some((step, reason)) = parked {
                return Ok(Forward::Parked {
                    step: step.to_owned(),
                    reason,
                });
            }
        }
        Ok(Forward::Completed)
    }

    /// Attempts one action per its retry policy, recording every attempt.
    async fn run_action<C: SagaContext>(
        &self,
        held: &Held<'_>,
        state: &RunState<C>,
        step: &Step<C>,
        first_attempt: u32,
    ) -> Result<ActionEnd<C>> {
        let (id, saga_type, name) = (state.id, state.saga_type, step.name);
        if let Some(condition) = &step.condition
            && !condition(&state.context)
        {
            held.record_skip(name).await?;
            info!(saga_id = %id, saga_type, step = name, "saga step skipped: condition false");
            return Ok(ActionEnd::Skipped);
        }
        let max = step.retry.attempts();
        let mut tries = 0;
        loop {
            tries += 1;
            let attempt = first_attempt + tries - 1;
            let row = held.start_attempt(name, StepKind::Action, attempt).await?;
            info!(saga_id = %id, saga_type, step = name, attempt, "saga step started");
            let input = state.input(name, attempt);
            let result = match tokio::time::timeout(step.timeout, (step.action)(input)).await {
                Ok(result) => result,
                Err(_) => Err(timed_out(step.timeout)),
            };
            match result {
                Ok(effect) => {
                    let (result, new_context) = match &effect {
                        Effect::Context(context) => (serde_json::to_value(context)?, true),
                        Effect::Output(output) => (output.clone(), false),
                    };
                    held.action_succeeded(row, name, &result, new_context)
                        .await?;
                    info!(saga_id = %id, saga_type, step = name, attempt, "saga step succeeded");
                    return Ok(ActionEnd::Succeeded(effect));
                }
                Err(StepError::Park(reason)) => {
                    held.attempt_ended(row, StepStatus::Parked, &reason).await?;
                    info!(saga_id = %id, saga_type, step = name, attempt, reason, "saga step parked");
                    return Ok(ActionEnd::Parked(reason));
                }
                Err(StepError::Fatal(error)) => {
                    held.attempt_ended(row, StepStatus::Failed, &error).await?;
                    warn!(saga_id = %id, saga_type, step = name, attempt, error, "saga step failed (fatal)");
                    return Ok(ActionEnd::Failed(error));
                }
                Err(StepError::Retryable(error)) => {
                    held.attempt_ended(row, StepStatus::Failed, &error).await?;
                    if tries >= max {
                        warn!(saga_id = %id, saga_type, step = name, attempt, error, "saga step failed, out of attempts");
                        return Ok(ActionEnd::Failed(error));
                    }
                    let delay = step.retry.delay_after(tries);
                    warn!(saga_id = %id, saga_type, step = name, attempt, error, ?delay, "saga step failed, retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Compensates the completed steps not yet compensated, last first. Returns the step whose
    /// compensation failed for good, and why.
    async fn compensate_all<'d, C: SagaContext>(
        &self,
        definition: &'d SagaDefinition<C>,
        held: &Held<'_>,
        state: &mut RunState<C>,
    ) -> Result<Option<(&'d str, String)>> {
        for step in definition.steps().iter().rev() {
            let Some(compensation) = &step.compensation else {
                continue;
            };
            if !state.progress.succeeded.contains(step.name)
                || state.progress.compensated.contains(step.name)
            {
                continue;
            }
            let (id, saga_type, name) = (state.id, state.saga_type, step.name);
            let first_attempt = state.progress.next_attempt(name, StepKind::Compensation);
            let max = step.compensation_retry.attempts();
            let mut tries = 0;
            loop {
                tries += 1;
                let attempt = first_attempt + tries - 1;
                let row = held
                    .start_attempt(name, StepKind::Compensation, attempt)
                    .await?;
                info!(saga_id = %id, saga_type, step = name, attempt, "saga compensation started");
                let input = state.input(name, attempt);
                let result = match tokio::time::timeout(step.timeout, compensation(input)).await {
                    Ok(result) => result,
                    Err(_) => Err(timed_out(step.timeout)),
                };
                match result {
                    Ok(()) => {
                        held.compensation_succeeded(row).await?;
                        info!(saga_id = %id, saga_type, step = name, attempt, "saga compensation succeeded");
                        state.progress.compensated.insert(name.to_owned());
                        break;
                    }
                    Err(StepError::Retryable(error)) if tries < max => {
                        held.attempt_ended(row, StepStatus::Failed, &error).await?;
                        let delay = step.compensation_retry.delay_after(tries);
                        warn!(saga_id = %id, saga_type, step = name, attempt, error, ?delay, "saga compensation failed, retrying");
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => {
                        let error = e.to_string();
                        held.attempt_ended(row, StepStatus::Failed, &error).await?;
                        return Ok(Some((name, error)));
                    }
                }
            }
        }
        Ok(None)
    }
}

fn timed_out(limit: Duration) -> StepError {
    StepError::Retryable(format!("timed out after {limit:?}"))
}

fn into_outputs(value: Value) -> Outputs {
    match value {
        Value::Object(map) => map,
        _ => Outputs::new(),
    }
}

enum Forward {
    Completed,
    Failed { step: String, error: String },
    Parked { step: String, reason: String },
}

enum ActionEnd<C> {
    Succeeded(Effect<C>),
    Skipped,
    Failed(String),
    Parked(String),
}

/// A run's view of its saga, kept in step with what it persisted.
struct RunState<C> {
    id: Uuid,
    saga_type: &'static str,
    context: C,
    outputs: Outputs,
    progress: Progress,
    failed_step: Option<String>,
    error: String,
}

impl<C: SagaContext> RunState<C> {
    fn input(&self, step: &'static str, attempt: u32) -> StepInput<C> {
        StepInput {
            saga_id: self.id,
            step,
            attempt,
            context: self.context.clone(),
            outputs: self.outputs.clone(),
        }
    }

    fn outcome(self, end: SagaEnd) -> SagaOutcome<C> {
        SagaOutcome {
            id: self.id,
            context: self.context,
            outputs: self.outputs,
            end,
        }
    }
}

/// What the recorded step executions say is done.
#[derive(Default)]
struct Progress {
    /// Actions that succeeded.
    succeeded: HashSet<String>,
    /// Actions skipped by their condition.
    skipped: HashSet<String>,
    /// Compensations that succeeded.
    compensated: HashSet<String>,
    /// The highest attempt number per step and kind.
    attempts: HashMap<(String, StepKind), u32>,
    /// Whether an attempt was left `RUNNING` by a previous owner.
    interrupted: bool,
}

impl Progress {
    async fn load(pool: &PgPool, id: Uuid) -> Result<Self> {
        let mut progress = Self::default();
        for row in store::step_rows(pool, id).await? {
            let kind: StepKind = row.kind.parse()?;
            let status: StepStatus = row.status.parse()?;
            match (kind, status) {
                (StepKind::Action, StepStatus::Succeeded) => {
                    progress.succeeded.insert(row.step.clone());
                }
                (StepKind::Action, StepStatus::Skipped) => {
                    progress.skipped.insert(row.step.clone());
                }
                (StepKind::Compensation, StepStatus::Succeeded) => {
                    progress.compensated.insert(row.step.clone());
                }
                (_, StepStatus::Running) => progress.interrupted = true,
                _ => {}
            }
            let attempt = u32::try_from(row.attempt).unwrap_or_default();
            let max = progress.attempts.entry((row.step, kind)).or_default();
            *max = (*max).max(attempt);
        }
        Ok(progress)
    }

    fn action_done(&self, step: &str) -> bool {
        self.succeeded.contains(step) || self.skipped.contains(step)
    }

    fn next_attempt(&self, step: &str, kind: StepKind) -> u32 {
        self.attempts
            .get(&(step.to_owned(), kind))
            .copied()
            .unwrap_or_default()
            + 1
    }
}
