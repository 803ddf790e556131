//! Running sagas: [`Orchestrator`] starts, resumes, cancels and recovers them.
//!
//! A run keeps what it has done in memory and writes it as **checkpoints**
//! ([`crate::store`]): a local step's checkpoint is written inside the step's own transaction
//! (its database work, its completion and every remote outcome not yet recorded commit
//! together); the outcomes of remote steps wait for the next checkpoint; a run that ends with
//! remote steps writes one more. So a saga of `remote → local → remote → local` costs two
//! transactions, and a lease costs no write of its own unless the run outlasts a third of it.
//! What a crash loses is only what was not yet checkpointed: those steps run again on recovery,
//! which is why actions and compensations must be idempotent.

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
        Action, BoxFuture, Compensation, Effect, NoRejection, Outputs, SagaContext, SagaDefinition,
        SagaRejection, Step, StepError, StepInput,
    },
    error::{Error, Result},
    store::{
        self, ClaimMode, Held, InstanceRow, InstanceState, Record, SagaStatus, StepKind, StepStatus,
    },
};

/// How many stale sagas one [`Orchestrator::recover`] call takes on.
pub const RECOVERY_BATCH: i64 = 100;

/// How a saga run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaEnd<R = NoRejection> {
    /// Every step succeeded or was skipped.
    Completed,
    /// Every completed step was compensated: `failed_step` failed with `error` (and, if it
    /// rejected the saga, with `rejection`), or (no `failed_step`) the saga was cancelled with
    /// `error` as the reason.
    Compensated {
        failed_step: Option<String>,
        error: String,
        rejection: Option<R>,
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

impl<R> SagaEnd<R> {
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
pub struct SagaOutcome<C, R = NoRejection> {
    pub id: Uuid,
    /// The context as the last completed sequential step left it.
    pub context: C,
    /// Outputs of the parallel steps that completed.
    pub outputs: Outputs,
    pub end: SagaEnd<R>,
    /// Whether the saga is in the database. A lazily started saga that ended before its
    /// first local step (e.g. compensated at once) never was.
    pub persisted: bool,
}

impl<C, R> SagaOutcome<C, R> {
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

impl<C: SagaContext, R: SagaRejection> Recoverable for SagaDefinition<C, R> {
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
/// while a saga runs (a write only for runs that last that long), so a lease only expires when
/// its owner died or stalled.
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
    pub async fn start<C: SagaContext, R: SagaRejection>(
        &self,
        definition: &SagaDefinition<C, R>,
        context: C,
    ) -> Result<SagaOutcome<C, R>> {
        self.start_with_id(definition, Uuid::now_v7(), context)
            .await
    }

    /// Starts a new saga with the given id (e.g. derived from an order id) and runs it to an
    /// end. [`Error::AlreadyExists`] if the id is taken (for a lazily started saga: when its
    /// first local step finds it taken).
    pub async fn start_with_id<C: SagaContext, R: SagaRejection>(
        &self,
        definition: &SagaDefinition<C, R>,
        id: Uuid,
        context: C,
    ) -> Result<SagaOutcome<C, R>> {
        let _running = self.enter(id).ok_or(Error::Busy(id))?;
        let held = self.held(definition, id, false);
        let mut state = RunState::new(id, definition.saga_type(), context);
        if !definition.starts_lazily() {
            held.write_alone(&state.snapshot(SagaStatus::Running, false)?.view(), &[])
                .await?;
        }
        info!(saga_id = %id, saga_type = definition.saga_type(), lazy = definition.starts_lazily(), "saga started");
        self.drive(definition, &held, &mut state, SagaStatus::Running)
            .await
    }

    /// Runs saga `id` on from where it is:
    /// - `RUNNING` / `COMPENSATING` (a saga written with [`store::create`], or whose owner's
    ///   lease expired): continues from the first step not done / the compensations not done;
    /// - `WAITING`: runs the parked step again and carries on;
    /// - `FAILED`: retries the compensation that failed, then the rest;
    /// - `COMPLETED` / `COMPENSATED`: returns the outcome as stored.
    ///
    /// [`Error::Busy`] if another owner holds the lease.
    pub async fn resume<C: SagaContext, R: SagaRejection>(
        &self,
        definition: &SagaDefinition<C, R>,
        id: Uuid,
    ) -> Result<SagaOutcome<C, R>> {
        let _running = self.enter(id).ok_or(Error::Busy(id))?;
        match self.claim(definition, id, &ClaimMode::Resume).await? {
            Some(row) => {
                info!(saga_id = %id, saga_type = definition.saga_type(), status = %row.status, "saga resumed");
                self.drive_claimed(definition, id, row).await
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
    pub async fn compensate<C: SagaContext, R: SagaRejection>(
        &self,
        definition: &SagaDefinition<C, R>,
        id: Uuid,
        reason: &str,
    ) -> Result<SagaOutcome<C, R>> {
        let _running = self.enter(id).ok_or(Error::Busy(id))?;
        match self
            .claim(definition, id, &ClaimMode::Compensate(reason))
            .await?
        {
            Some(row) => {
                info!(saga_id = %id, saga_type = definition.saga_type(), reason, "saga cancelled, compensating");
                self.drive_claimed(definition, id, row).await
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

    async fn recover_one<C: SagaContext, R: SagaRejection>(
        &self,
        definition: &SagaDefinition<C, R>,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<SagaStatus>> {
        let Some(_running) = self.enter(id) else {
            return Ok(None);
        };
        let Some(row) = self.claim(definition, id, &ClaimMode::Recover(now)).await? else {
            return Ok(None);
        };
        info!(saga_id = %id, saga_type = definition.saga_type(), status = %row.status, "recovering saga");
        let outcome = self.drive_claimed(definition, id, row).await?;
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

    fn held<C, R>(&self, definition: &SagaDefinition<C, R>, id: Uuid, persisted: bool) -> Held<'_> {
        Held::new(
            &self.inner.pool,
            id,
            definition.saga_type(),
            &self.inner.owner,
            self.lease_ms(),
            persisted,
        )
    }

    async fn claim<C, R>(
        &self,
        definition: &SagaDefinition<C, R>,
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
    async fn unclaimed<C: SagaContext, R: SagaRejection>(
        &self,
        definition: &SagaDefinition<C, R>,
        id: Uuid,
        settled: &[SagaStatus],
    ) -> Result<SagaOutcome<C, R>> {
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
        let status = row.status;
        if !settled.contains(&status) {
            return Err(Error::Busy(id));
        }
        let end = match status {
            SagaStatus::Completed => SagaEnd::Completed,
            _ => SagaEnd::Compensated {
                failed_step: row.failed_step,
                error: row.error.unwrap_or_default(),
                rejection: row.rejection.map(serde_json::from_value).transpose()?,
            },
        };
        Ok(SagaOutcome {
            id,
            context: serde_json::from_value(row.context)?,
            outputs: into_outputs(row.outputs),
            end,
            persisted: true,
        })
    }

    /// Runs a saga claimed from the database.
    async fn drive_claimed<C: SagaContext, R: SagaRejection>(
        &self,
        definition: &SagaDefinition<C, R>,
        id: Uuid,
        row: InstanceRow,
    ) -> Result<SagaOutcome<C, R>> {
        let held = self.held(definition, id, true);
        let status = row.status;
        let progress = Progress::load(&self.inner.pool, id).await?;
        if progress.interrupted {
            // Attempts written RUNNING by an older version of this crate, whose owner stopped.
            store::interrupt_running(&self.inner.pool, id).await?;
        }
        let mut state = RunState {
            id,
            saga_type: definition.saga_type(),
            context: serde_json::from_value(row.context)?,
            outputs: into_outputs(row.outputs),
            progress,
            failed_step: row.failed_step,
            error: row.error.unwrap_or_default(),
            rejection: row.rejection.map(serde_json::from_value).transpose()?,
            pending: Vec::new(),
        };
        self.drive(definition, &held, &mut state, status).await
    }

    /// Runs a saga to an end while renewing its lease. If the lease is lost, the run is
    /// dropped wherever it is (the new owner carries on).
    async fn drive<C: SagaContext, R: SagaRejection>(
        &self,
        definition: &SagaDefinition<C, R>,
        held: &Held<'_>,
        state: &mut RunState<C, R>,
        status: SagaStatus,
    ) -> Result<SagaOutcome<C, R>> {
        let span = info_span!("saga", saga_id = %held.id, saga_type = definition.saga_type());
        async {
            tokio::select! {
                biased;
                outcome = self.run(definition, held, state, status) => outcome,
                lost = self.keep_lease(held) => Err(lost),
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

    async fn run<C: SagaContext, R: SagaRejection>(
        &self,
        definition: &SagaDefinition<C, R>,
        held: &Held<'_>,
        state: &mut RunState<C, R>,
        status: SagaStatus,
    ) -> Result<SagaOutcome<C, R>> {
        let id = held.id;
        if status == SagaStatus::Running {
            let forward = match self.forward(definition, held, state).await {
                Ok(forward) => forward,
                // The database failed before a lazily started saga was ever written: nothing
                // will recover it, so undo what its remote steps did now (as far as the
                // database allows) and report the database's failure.
                Err(Error::Database(e)) if !held.persisted() => {
                    warn!(saga_id = %id, saga_type = state.saga_type, error = %e,
                        "database unavailable before the saga was written; compensating in memory");
                    state.error = format!("database: {e}");
                    if let Err(undo) = self.compensate_all(definition, held, state).await {
                        warn!(saga_id = %id, error = %undo, "compensation stopped");
                    }
                    return Err(Error::Database(e));
                }
                Err(e) => return Err(e),
            };
            match forward {
                Forward::Completed { written } => {
                    if !written {
                        state
                            .checkpoint(held, SagaStatus::Completed, None, true)
                            .await?;
                    }
                    info!(saga_id = %id, saga_type = state.saga_type, "saga completed");
                    return Ok(state.outcome(SagaEnd::Completed, held.persisted()));
                }
                Forward::Parked { step, reason } => {
                    state.error = reason.clone();
                    state
                        .checkpoint(held, SagaStatus::Waiting, Some(&step), true)
                        .await?;
                    info!(saga_id = %id, saga_type = state.saga_type, step, reason, "saga waiting");
                    return Ok(state.outcome(SagaEnd::Waiting { step, reason }, true));
                }
                Forward::Failed {
                    step,
                    error,
                    rejection,
                } => {
                    warn!(saga_id = %id, saga_type = state.saga_type, step, error, "saga step failed; compensating");
                    state.failed_step = Some(step.clone());
                    state.error = error;
                    state.rejection = rejection;
                    if held.persisted() {
                        state
                            .checkpoint(held, SagaStatus::Compensating, Some(&step), false)
                            .await?;
                    }
                }
            }
        }

        match self.compensate_all(definition, held, state).await? {
            None => {
                if held.persisted() {
                    state
                        .checkpoint(held, SagaStatus::Compensated, None, true)
                        .await?;
                }
                info!(saga_id = %id, saga_type = state.saga_type, persisted = held.persisted(), "saga compensated");
                let end = SagaEnd::Compensated {
                    failed_step: state.failed_step.clone(),
                    error: state.error.clone(),
                    rejection: state.rejection.clone(),
                };
                Ok(state.outcome(end, held.persisted()))
            }
            Some((step, compensation_error)) => {
                // Written even for a saga never written before, so a person sees it — unless
                // it started lazily and never reached a local step: by contract, what its
                // remote steps did undoes itself.
                let lazy_unwritten = definition.starts_lazily() && !held.persisted();
                if !lazy_unwritten {
                    state
                        .checkpoint_failed(held, step, &compensation_error)
                        .await?;
                }
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
                Ok(state.outcome(end, held.persisted()))
            }
        }
    }

    /// Runs the actions not yet done, unit by unit (a sequential step, or a parallel group).
    async fn forward<C: SagaContext, R: SagaRejection>(
        &self,
        definition: &SagaDefinition<C, R>,
        held: &Held<'_>,
        state: &mut RunState<C, R>,
    ) -> Result<Forward<R>> {
        let units = definition.units();
        for (at, unit) in units.iter().enumerate() {
            let pending: Vec<&Step<C, R>> = unit
                .iter()
                .filter(|s| !state.progress.action_done(s.name))
                .collect();
            if pending.is_empty() {
                continue;
            }
            if let [step] = pending.as_slice()
                && let Action::Local(action) = &step.action
            {
                let later: Vec<&Step<C, R>> =
                    units[at + 1..].iter().flat_map(|u| u.iter()).collect();
                match self.run_local(held, state, step, action, &later).await? {
                    LocalEnd::Succeeded { completed: true } => {
                        return Ok(Forward::Completed { written: true });
                    }
                    LocalEnd::Succeeded { completed: false } | LocalEnd::Skipped => continue,
                    LocalEnd::Ended(end) => return Ok(end),
                }
            }
            let results = join_all(pending.iter().map(|step| {
                let first_attempt = state.progress.next_attempt(step.name, StepKind::Action);
                self.run_remote(state, step, first_attempt)
            }))
            .await;

            let (mut failed, mut parked, mut error) = (None, None, None);
            for (step, result) in pending.iter().zip(results) {
                let (end, records) = match result {
                    Ok(done) => done,
                    Err(e) => {
                        error.get_or_insert(e);
                        continue;
                    }
                };
                state.pending.extend(records);
                match end {
                    ActionEnd::Succeeded(effect) => {
                        match effect {
                            Effect::Context(context) => state.context = context,
                            Effect::Output(output) => {
                                state.outputs.insert(step.name.to_owned(), output);
                            }
                        }
                        state.progress.succeeded.insert(step.name.to_owned());
                    }
                    ActionEnd::Skipped => {
                        state.progress.skipped.insert(step.name.to_owned());
                    }
                    ActionEnd::Failed(e, rejection) => {
                        failed.get_or_insert((step.name, e, rejection));
                    }
                    ActionEnd::Parked(reason) => {
                        parked.get_or_insert((step.name, reason));
                    }
                }
            }
            if let Some(e) = error {
                return Err(e);
            }
            if let Some((step, error, rejection)) = failed {
                return Ok(Forward::Failed {
                    step: step.to_owned(),
                    error,
                    rejection,
                });
            }
            if let Some((step, reason)) = parked {
                return Ok(Forward::Parked {
                    step: step.to_owned(),
                    reason,
                });
            }
        }
        Ok(Forward::Completed { written: false })
    }

    /// Attempts one remote action per its retry policy; returns how it ended and the records
    /// of its attempts (written with the next checkpoint).
    async fn run_remote<C: SagaContext, R: SagaRejection>(
        &self,
        state: &RunState<C, R>,
        step: &Step<C, R>,
        first_attempt: u32,
    ) -> Result<(ActionEnd<C, R>, Vec<Record>)> {
        let (id, saga_type, name) = (state.id, state.saga_type, step.name);
        if let Some(condition) = &step.condition
            && !condition(&state.context)
        {
            info!(saga_id = %id, saga_type, step = name, "saga step skipped: condition false");
            return Ok((ActionEnd::Skipped, vec![Record::skipped(name)]));
        }
        let Action::Remote(action) = &step.action else {
            unreachable!("local steps run through run_local");
        };
        let mut records = Vec::new();
        let mut tries = 0;
        loop {
            let this = Attempt::start(id, saga_type, step, first_attempt, &mut tries);
            let (attempt, started) = (this.attempt, this.started);
            info!(saga_id = %id, saga_type, step = name, attempt, "saga step started");
            let input = state.input(name, attempt);
            let result = match tokio::time::timeout(step.timeout, action(input)).await {
                Ok(result) => result,
                Err(_) => Err(timed_out(step.timeout)),
            };
            match result {
                Ok(effect) => {
                    let result = match &effect {
                        Effect::Context(context) => serde_json::to_value(context)?,
                        Effect::Output(output) => output.clone(),
                    };
                    records.push(Record::action(name, attempt, started, Ok(Some(result))));
                    info!(saga_id = %id, saga_type, step = name, attempt, "saga step succeeded");
                    return Ok((ActionEnd::Succeeded(effect), records));
                }
                Err(e) => match this.failed(e, &mut records).await {
                    Some(StepEnd::Parked(reason)) => {
                        return Ok((ActionEnd::Parked(reason), records));
                    }
                    Some(StepEnd::Failed(error, rejection)) => {
                        return Ok((ActionEnd::Failed(error, rejection), records));
                    }
                    None => {}
                },
            }
        }
    }

    /// Attempts one local action per its retry policy, each attempt in a transaction of its own
    /// that also writes the checkpoint. When every step after it is skipped for the context it
    /// returns (or there is none), the same transaction completes the saga.
    async fn run_local<C: SagaContext, R: SagaRejection>(
        &self,
        held: &Held<'_>,
        state: &mut RunState<C, R>,
        step: &Step<C, R>,
        action: &crate::definition::LocalActionFn<C, R>,
        later: &[&Step<C, R>],
    ) -> Result<LocalEnd<R>> {
        let (id, saga_type, name) = (state.id, state.saga_type, step.name);
        if let Some(condition) = &step.condition
            && !condition(&state.context)
        {
            info!(saga_id = %id, saga_type, step = name, "saga step skipped: condition false");
            state.pending.push(Record::skipped(name));
            state.progress.skipped.insert(name.to_owned());
            return Ok(LocalEnd::Skipped);
        }
        let first_attempt = state.progress.next_attempt(name, StepKind::Action);
        let mut tries = 0;
        loop {
            let this = Attempt::start(id, saga_type, step, first_attempt, &mut tries);
            let (attempt, started) = (this.attempt, this.started);
            // Dropping `tx` without commit (a failed attempt, a lost lease) rolls back the
            // step's writes and its checkpoint alike.
            let mut tx = self.inner.pool.begin().await?;
            let input = state.input(name, attempt);
            let result = match tokio::time::timeout(step.timeout, action(input, &mut tx)).await {
                Ok(result) => result,
                Err(_) => Err(timed_out(step.timeout)),
            };
            match result {
                Ok(context) => {
                    let context_json = serde_json::to_value(&context)?;
                    let rest_skipped: Vec<&str> = later
                        .iter()
                        .filter(|s| !state.progress.action_done(s.name))
                        .map(|s| {
                            s.condition
                                .as_ref()
                                .is_some_and(|c| !c(&context))
                                .then_some(s.name)
                        })
                        .collect::<Option<Vec<_>>>()
                        .unwrap_or_default();
                    let completes = later
                        .iter()
                        .filter(|s| !state.progress.action_done(s.name))
                        .count()
                        == rest_skipped.len();
                    let mut records = state.pending.clone();
                    records.push(Record::action(
                        name,
                        attempt,
                        started,
                        Ok(Some(context_json.clone())),
                    ));
                    if completes {
                        records.extend(rest_skipped.iter().map(|s| Record::skipped(s)));
                    }
                    let outputs = Value::Object(state.outputs.clone());
                    let write = InstanceState {
                        status: if completes {
                            SagaStatus::Completed
                        } else {
                            SagaStatus::Running
                        },
                        context: &context_json,
                        outputs: &outputs,
                        // Where the saga goes on from.
                        current_step: later
                            .iter()
                            .find(|s| !state.progress.action_done(s.name))
                            .filter(|_| !completes)
                            .map(|s| s.name),
                        failed_step: None,
                        error: None,
                        rejection: None,
                        compensation_error: None,
                        ends_run: completes,
                    };
                    let inserted = held.write(&mut tx, &write, &records).await?;
                    tx.commit().await?;
                    if inserted {
                        held.mark_persisted();
                    }
                    state.pending.clear();
                    state.context = context;
                    state.progress.succeeded.insert(name.to_owned());
                    if completes {
                        for s in rest_skipped {
                            state.progress.skipped.insert(s.to_owned());
                        }
                    }
                    info!(saga_id = %id, saga_type, step = name, attempt, completes, "saga step succeeded");
                    return Ok(LocalEnd::Succeeded {
                        completed: completes,
                    });
                }
                Err(e) => {
                    drop(tx);
                    let step = name.to_owned();
                    match this.failed(e, &mut state.pending).await {
                        Some(StepEnd::Parked(reason)) => {
                            return Ok(LocalEnd::Ended(Forward::Parked { step, reason }));
                        }
                        Some(StepEnd::Failed(error, rejection)) => {
                            return Ok(LocalEnd::Ended(Forward::Failed {
                                step,
                                error,
                                rejection,
                            }));
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// Compensates the completed steps not yet compensated, last first. Returns the step whose
    /// compensation failed for good, and why.
    async fn compensate_all<'d, C: SagaContext, R: SagaRejection>(
        &self,
        definition: &'d SagaDefinition<C, R>,
        held: &Held<'_>,
        state: &mut RunState<C, R>,
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
                let started = Utc::now();
                info!(saga_id = %id, saga_type, step = name, attempt, "saga compensation started");
                let input = state.input(name, attempt);
                let result = match compensation {
                    Compensation::Remote(f) => {
                        match tokio::time::timeout(step.timeout, f(input)).await {
                            Ok(result) => result,
                            Err(_) => Err(timed_out(step.timeout)),
                        }
                    }
                    Compensation::Local(f) => {
                        let mut tx = self.inner.pool.begin().await?;
                        match tokio::time::timeout(step.timeout, f(input, &mut tx)).await {
                            Ok(Ok(())) => {
                                let mut records = state.pending.clone();
                                records.push(Record::compensation(name, attempt, started, Ok(())));
                                let snapshot = state.snapshot(SagaStatus::Compensating, false)?;
                                let mut write = snapshot.view();
                                write.current_step = Some(name);
                                let inserted = held.write(&mut tx, &write, &records).await?;
                                tx.commit().await?;
                                if inserted {
                                    held.mark_persisted();
                                }
                                state.pending.clear();
                                info!(saga_id = %id, saga_type, step = name, attempt, "saga compensation succeeded");
                                state.progress.compensated.insert(name.to_owned());
                                break;
                            }
                            Ok(Err(e)) => Err(e),
                            Err(_) => Err(timed_out(step.timeout)),
                        }
                    }
                };
                match result {
                    Ok(()) => {
                        state
                            .pending
                            .push(Record::compensation(name, attempt, started, Ok(())));
                        info!(saga_id = %id, saga_type, step = name, attempt, "saga compensation succeeded");
                        state.progress.compensated.insert(name.to_owned());
                        break;
                    }
                    Err(StepError::Retryable(error)) if tries < max => {
                        state.pending.push(Record::compensation(
                            name,
                            attempt,
                            started,
                            Err(&error),
                        ));
                        let delay = step.compensation_retry.delay_after(tries);
                        warn!(saga_id = %id, saga_type, step = name, attempt, error, ?delay, "saga compensation failed, retrying");
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => {
                        let error = e.to_string();
                        state.pending.push(Record::compensation(
                            name,
                            attempt,
                            started,
                            Err(&error),
                        ));
                        return Ok(Some((name, error)));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// One attempt of an action, remote or local.
struct Attempt<'s, C, R> {
    id: Uuid,
    saga_type: &'static str,
    step: &'s Step<C, R>,
    attempt: u32,
    /// Attempts in this run so far, this one included.
    tries: u32,
    started: DateTime<Utc>,
}

/// How a failed attempt ends its action.
enum StepEnd<R> {
    Parked(String),
    Failed(String, Option<R>),
}

impl<'s, C, R: std::fmt::Debug> Attempt<'s, C, R> {
    /// The next attempt of `step` in this run (`tries` counts them, this one included),
    /// starting now.
    fn start(
        id: Uuid,
        saga_type: &'static str,
        step: &'s Step<C, R>,
        first_attempt: u32,
        tries: &mut u32,
    ) -> Self {
        *tries += 1;
        Self {
            id,
            saga_type,
            step,
            attempt: first_attempt + *tries - 1,
            tries: *tries,
            started: Utc::now(),
        }
    }

    /// Records the failed attempt in `records` and decides what comes next: the action ends
    /// parked or failed (fatal, rejected, or out of attempts), or `None` after the policy's
    /// backoff has been slept: the caller tries again.
    async fn failed(&self, e: StepError<R>, records: &mut Vec<Record>) -> Option<StepEnd<R>> {
        let (id, saga_type, name, attempt) =
            (self.id, self.saga_type, self.step.name, self.attempt);
        match e {
            StepError::Park(reason) => {
                records.push(Record::parked(name, attempt, self.started, &reason));
                info!(saga_id = %id, saga_type, step = name, attempt, reason, "saga step parked");
                Some(StepEnd::Parked(reason))
            }
            e @ (StepError::Fatal(_) | StepError::Rejected(_)) => {
                let error = e.to_string();
                records.push(Record::action(name, attempt, self.started, Err(&error)));
                warn!(saga_id = %id, saga_type, step = name, attempt, error, "saga step failed (fatal)");
                Some(StepEnd::Failed(error, rejection_of(e)))
            }
            StepError::Retryable(error) => {
                records.push(Record::action(name, attempt, self.started, Err(&error)));
                if self.tries >= self.step.retry.attempts() {
                    warn!(saga_id = %id, saga_type, step = name, attempt, error, "saga step failed, out of attempts");
                    return Some(StepEnd::Failed(error, None));
                }
                let delay = self.step.retry.delay_after(self.tries);
                warn!(saga_id = %id, saga_type, step = name, attempt, error, ?delay, "saga step failed, retrying");
                tokio::time::sleep(delay).await;
                None
            }
        }
    }
}

fn timed_out<R>(limit: Duration) -> StepError<R> {
    StepError::Retryable(format!("timed out after {limit:?}"))
}

fn rejection_of<R>(e: StepError<R>) -> Option<R> {
    match e {
        StepError::Rejected(r) => Some(r),
        _ => None,
    }
}

fn into_outputs(value: Value) -> Outputs {
    match value {
        Value::Object(map) => map,
        _ => Outputs::new(),
    }
}

enum Forward<R> {
    /// `written`: the last local step's transaction already completed the saga.
    Completed {
        written: bool,
    },
    Failed {
        step: String,
        error: String,
        rejection: Option<R>,
    },
    Parked {
        step: String,
        reason: String,
    },
}

enum ActionEnd<C, R> {
    Succeeded(Effect<C>),
    Skipped,
    Failed(String, Option<R>),
    Parked(String),
}

enum LocalEnd<R> {
    /// Committed; `completed`: the saga with it.
    Succeeded {
        completed: bool,
    },
    Skipped,
    Ended(Forward<R>),
}

impl Record {
    fn action(
        step: &str,
        attempt: u32,
        started_at: DateTime<Utc>,
        result: std::result::Result<Option<Value>, &str>,
    ) -> Self {
        let (status, result, error) = match result {
            Ok(result) => (StepStatus::Succeeded, result, None),
            Err(error) => (StepStatus::Failed, None, Some(error.to_owned())),
        };
        Self {
            step: step.to_owned(),
            kind: StepKind::Action,
            attempt,
            status,
            result,
            error,
            started_at,
            finished_at: Utc::now(),
        }
    }

    fn compensation(
        step: &str,
        attempt: u32,
        started_at: DateTime<Utc>,
        result: std::result::Result<(), &str>,
    ) -> Self {
        Self {
            step: step.to_owned(),
            kind: StepKind::Compensation,
            attempt,
            status: if result.is_ok() {
                StepStatus::Succeeded
            } else {
                StepStatus::Failed
            },
            result: None,
            error: result.err().map(str::to_owned),
            started_at,
            finished_at: Utc::now(),
        }
    }

    fn parked(step: &str, attempt: u32, started_at: DateTime<Utc>, reason: &str) -> Self {
        Self {
            step: step.to_owned(),
            kind: StepKind::Action,
            attempt,
            status: StepStatus::Parked,
            result: None,
            error: Some(reason.to_owned()),
            started_at,
            finished_at: Utc::now(),
        }
    }

    fn skipped(step: &str) -> Self {
        let now = Utc::now();
        Self {
            step: step.to_owned(),
            kind: StepKind::Action,
            attempt: 0,
            status: StepStatus::Skipped,
            result: None,
            error: None,
            started_at: now,
            finished_at: now,
        }
    }
}

/// A run's view of its saga, and what it did since its last checkpoint.
struct RunState<C, R> {
    id: Uuid,
    saga_type: &'static str,
    context: C,
    outputs: Outputs,
    progress: Progress,
    failed_step: Option<String>,
    error: String,
    rejection: Option<R>,
    /// Step executions not yet written.
    pending: Vec<Record>,
}

/// The instance row's values, serialized, for one checkpoint.
struct Snapshot {
    status: SagaStatus,
    context: Value,
    outputs: Value,
    failed_step: Option<String>,
    error: Option<String>,
    rejection: Option<Value>,
    compensation_error: Option<String>,
    ends_run: bool,
}

impl Snapshot {
    fn view(&self) -> InstanceState<'_> {
        InstanceState {
            status: self.status,
            context: &self.context,
            outputs: &self.outputs,
            current_step: None,
            failed_step: self.failed_step.as_deref(),
            error: self.error.as_deref(),
            rejection: self.rejection.as_ref(),
            compensation_error: self.compensation_error.as_deref(),
            ends_run: self.ends_run,
        }
    }
}

impl<C: SagaContext, R: SagaRejection> RunState<C, R> {
    fn new(id: Uuid, saga_type: &'static str, context: C) -> Self {
        Self {
            id,
            saga_type,
            context,
            outputs: Outputs::new(),
            progress: Progress::default(),
            failed_step: None,
            error: String::new(),
            rejection: None,
            pending: Vec::new(),
        }
    }

    fn input(&self, step: &'static str, attempt: u32) -> StepInput<C> {
        StepInput {
            saga_id: self.id,
            step,
            attempt,
            context: self.context.clone(),
            outputs: self.outputs.clone(),
        }
    }

    fn snapshot(&self, status: SagaStatus, ends_run: bool) -> Result<Snapshot> {
        Ok(Snapshot {
            status,
            context: serde_json::to_value(&self.context)?,
            outputs: Value::Object(self.outputs.clone()),
            failed_step: self.failed_step.clone(),
            error: (!self.error.is_empty()).then(|| self.error.clone()),
            rejection: self
                .rejection
                .as_ref()
                .map(serde_json::to_value)
                .transpose()?,
            compensation_error: None,
            ends_run,
        })
    }

    /// Writes the saga as it is now with `status`, and the executions not yet written, in a
    /// transaction of its own.
    async fn checkpoint(
        &mut self,
        held: &Held<'_>,
        status: SagaStatus,
        current_step: Option<&str>,
        ends_run: bool,
    ) -> Result<()> {
        let snapshot = self.snapshot(status, ends_run)?;
        let mut write = snapshot.view();
        write.current_step = current_step;
        held.write_alone(&write, &self.pending).await?;
        self.pending.clear();
        Ok(())
    }

    /// The checkpoint of a saga whose compensation of `step` failed for good.
    async fn checkpoint_failed(
        &mut self,
        held: &Held<'_>,
        step: &str,
        compensation_error: &str,
    ) -> Result<()> {
        let mut snapshot = self.snapshot(SagaStatus::Failed, true)?;
        snapshot.compensation_error = Some(compensation_error.to_owned());
        let mut write = snapshot.view();
        write.current_step = Some(step);
        held.write_alone(&write, &self.pending).await?;
        self.pending.clear();
        Ok(())
    }

    fn outcome(&self, end: SagaEnd<R>, persisted: bool) -> SagaOutcome<C, R> {
        SagaOutcome {
            id: self.id,
            context: self.context.clone(),
            outputs: self.outputs.clone(),
            end,
            persisted,
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
    /// Whether an attempt was left `RUNNING` (by an older version, which wrote attempts as
    /// they started).
    interrupted: bool,
}

impl Progress {
    async fn load(pool: &PgPool, id: Uuid) -> Result<Self> {
        let mut progress = Self::default();
        for row in store::step_rows(pool, id).await? {
            match (row.kind, row.status) {
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
            let max = progress.attempts.entry((row.step, row.kind)).or_default();
            *max = (*max).max(attempt);
        }
        Ok(progress)
    }

    fn action_done(&self, step: &str) -> bool {
        self.succeeded.contains(step) || self.skipped.contains(step)
    }

    /// The next attempt number of `step`'s `kind`: after the recorded ones. (Attempts of this
    /// run not yet written are counted by the caller's own loop.)
    fn next_attempt(&self, step: &str, kind: StepKind) -> u32 {
        self.attempts
            .get(&(step.to_owned(), kind))
            .copied()
            .unwrap_or_default()
            + 1
    }
}
