//! The saga tables (`saga_instances`, `saga_steps`; DDL in
//! `migrations/sales/20261122000005_sagas.sql`): the public read API ([`load`]), creating a
//! saga inside the caller's transaction ([`create`]), marking one compensated inside the
//! caller's transaction ([`mark_compensated`]), and the orchestrator's writes.
//!
//! The orchestrator writes a saga as checkpoints ([`Held::write`]): the instance row and the
//! step executions finished since the last checkpoint, in one statement each, inside a
//! transaction that is often the caller's own (a local step's). A checkpoint inserts the row
//! (the first write of a saga) or updates it `WHERE locked_by = <this owner>`: if the lease
//! passed to someone else, nothing is written and the run stops with [`Error::LeaseLost`].
//! The same update renews the lease, so a lease costs no write of its own unless a run lasts
//! longer than a third of it.

use std::{
    fmt,
    str::FromStr,
    sync::atomic::{AtomicBool, Ordering},
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    SagaContext, SagaDefinition,
    error::{Error, Result},
};

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The value stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }

            /// The value of a stored string, `None` for one this crate does not know.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        // Read from and written to its TEXT column as itself; an unknown value is refused.
        contracts::text_enum!($name);

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self> {
                Self::parse(s).ok_or_else(|| {
                    Error::Corrupt(format!(concat!(stringify!($name), " {:?}"), s))
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// Where a saga is.
    SagaStatus {
        /// Running its actions (or about to be resumed by recovery if its lease expired).
        Running = "RUNNING",
        /// Running compensations after a failed step or a cancel.
        Compensating = "COMPENSATING",
        /// Every step succeeded or was skipped.
        Completed = "COMPLETED",
        /// A step failed or the saga was cancelled, and every completed step was compensated.
        Compensated = "COMPENSATED",
        /// A compensation could not be done: the saga needs a person. `resume` retries it.
        Failed = "FAILED",
        /// A step parked the saga; `resume` runs that step again.
        Waiting = "WAITING",
    }
}

impl SagaStatus {
    /// Whether the saga ended for good (`COMPLETED` or `COMPENSATED`).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated)
    }
}

string_enum! {
    /// What a step execution ran.
    StepKind {
        Action = "ACTION",
        Compensation = "COMPENSATION",
    }
}

string_enum! {
    /// How a step execution ended.
    StepStatus {
        /// Started and not finished: in flight, or its owner crashed (see `INTERRUPTED`).
        Running = "RUNNING",
        Succeeded = "SUCCEEDED",
        Failed = "FAILED",
        /// The step's condition was false (attempt 0).
        Skipped = "SKIPPED",
        /// The action returned `StepError::Park`.
        Parked = "PARKED",
        /// Found `RUNNING` when the saga was resumed: its owner stopped mid-attempt; the attempt
        /// runs again.
        Interrupted = "INTERRUPTED",
    }
}

/// A saga as staff see it (`GET /sagas/{id}`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SagaView {
    pub id: Uuid,
    pub saga_type: String,
    pub status: SagaStatus,
    /// The context as the last completed sequential step left it.
    #[schema(value_type = Object)]
    pub context: Value,
    /// Outputs of parallel steps, by step name.
    #[schema(value_type = Object)]
    pub outputs: Value,
    /// The step being run or compensated; where the saga waits; which compensation failed.
    pub current_step: Option<String>,
    /// The action whose failure started compensation.
    pub failed_step: Option<String>,
    /// The failing step's error, the cancel reason, or the park reason.
    pub error: Option<String>,
    /// Why the saga ended `FAILED`.
    pub compensation_error: Option<String>,
    pub locked_by: Option<String>,
    pub locked_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Every execution of an action or compensation, oldest first.
    pub steps: Vec<StepView>,
}

/// One attempt of an action or a compensation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StepView {
    pub step: String,
    pub kind: StepKind,
    pub attempt: u32,
    pub status: StepStatus,
    /// A successful action's new context or output.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

struct ViewRow {
    id: Uuid,
    saga_type: String,
    status: SagaStatus,
    context: Value,
    outputs: Value,
    current_step: Option<String>,
    failed_step: Option<String>,
    error: Option<String>,
    compensation_error: Option<String>,
    locked_by: Option<String>,
    locked_until: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

struct StepViewRow {
    step: String,
    kind: StepKind,
    attempt: i32,
    status: StepStatus,
    result: Option<Value>,
    error: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

/// The saga `id` with all its step executions, or `None` if there is no such saga.
pub async fn load(pool: &PgPool, id: Uuid) -> Result<Option<SagaView>> {
    let Some(row) = sqlx::query_as!(
        ViewRow,
        r#"SELECT id, saga_type, status AS "status: SagaStatus", context, outputs, current_step, failed_step, error,
                compensation_error, locked_by, locked_until, created_at, updated_at, completed_at
           FROM saga_instances WHERE id = $1"#,
        id,
    )
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let steps = sqlx::query_as!(
        StepViewRow,
        r#"SELECT step, kind AS "kind: StepKind", attempt, status AS "status: StepStatus", result,
                  error, started_at, finished_at
           FROM saga_steps WHERE saga_id = $1 ORDER BY id"#,
        id,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|s| StepView {
        step: s.step,
        kind: s.kind,
        attempt: u32::try_from(s.attempt).unwrap_or_default(),
        status: s.status,
        result: s.result,
        error: s.error,
        started_at: s.started_at,
        finished_at: s.finished_at,
    })
    .collect();
    Ok(Some(SagaView {
        id: row.id,
        saga_type: row.saga_type,
        status: row.status,
        context: row.context,
        outputs: row.outputs,
        current_step: row.current_step,
        failed_step: row.failed_step,
        error: row.error,
        compensation_error: row.compensation_error,
        locked_by: row.locked_by,
        locked_until: row.locked_until,
        created_at: row.created_at,
        updated_at: row.updated_at,
        completed_at: row.completed_at,
        steps,
    }))
}

/// Writes a new `RUNNING` saga without running it, on the caller's connection, so it commits
/// (or rolls back) with the caller's own writes. Run it after the commit with
/// [`Orchestrator::resume`](crate::Orchestrator::resume); if the process dies first, the
/// recovery sweep runs it (it has no lease).
pub async fn create<C: SagaContext, R>(
    conn: &mut PgConnection,
    definition: &SagaDefinition<C, R>,
    id: Uuid,
    context: &C,
) -> Result<()> {
    let inserted = sqlx::query!(
        "INSERT INTO saga_instances (id, saga_type, status, context) VALUES ($1, $2, 'RUNNING', $3) \
         ON CONFLICT (id) DO NOTHING",
        id,
        definition.saga_type(),
        serde_json::to_value(context)?,
    )
    .execute(conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(Error::AlreadyExists(id));
    }
    Ok(())
}

/// The part of an instance row the orchestrator runs from.
pub(crate) struct InstanceRow {
    pub saga_type: String,
    pub status: SagaStatus,
    pub context: Value,
    pub outputs: Value,
    pub failed_step: Option<String>,
    pub error: Option<String>,
    pub rejection: Option<Value>,
}

/// The progress recorded for one step execution.
pub(crate) struct StepRow {
    pub step: String,
    pub kind: StepKind,
    pub attempt: i32,
    pub status: StepStatus,
}

/// How a claim may take a saga, and what it changes.
pub(crate) enum ClaimMode<'a> {
    /// `resume`: WAITING → RUNNING, FAILED → COMPENSATING, RUNNING/COMPENSATING as they are.
    Resume,
    /// The recovery sweep, with its notion of now: RUNNING/COMPENSATING only.
    Recover(DateTime<Utc>),
    /// A cancel: anything not yet compensated → COMPENSATING, with this reason unless already
    /// compensating.
    Compensate(&'a str),
}

/// Takes the lease on saga `id` if nobody else holds it, applying `mode`'s status change.
/// `None` if it is held by another owner, in a status `mode` does not take, of another type,
/// or absent.
pub(crate) async fn claim(
    pool: &PgPool,
    id: Uuid,
    saga_type: &str,
    owner: &str,
    lease_ms: i64,
    mode: &ClaimMode<'_>,
) -> Result<Option<InstanceRow>> {
    let (now, resume, compensate, reason) = match mode {
        ClaimMode::Resume => (None, true, false, None),
        ClaimMode::Recover(now) => (Some(*now), false, false, None),
        ClaimMode::Compensate(reason) => (None, false, true, Some(*reason)),
    };
    let statuses: &[SagaStatus] = match mode {
        ClaimMode::Resume => &[
            SagaStatus::Running,
            SagaStatus::Compensating,
            SagaStatus::Waiting,
            SagaStatus::Failed,
        ],
        ClaimMode::Recover(_) => &[SagaStatus::Running, SagaStatus::Compensating],
        ClaimMode::Compensate(_) => &[
            SagaStatus::Running,
            SagaStatus::Compensating,
            SagaStatus::Waiting,
            SagaStatus::Completed,
            SagaStatus::Failed,
        ],
    };
    // The new lease runs from the later of the database's clock and the caller's `now`, so a
    // sweep that treats leases up to `now` as expired cannot take a lease another sweep with the
    // same `now` just took. `resume` ($7): WAITING → RUNNING, FAILED → COMPENSATING, the
    // others as they are. `compensate` ($8): anything → COMPENSATING, with the reason ($9)
    // unless already compensating. Neither (recovery): only the lease changes.
    Ok(sqlx::query_as!(
        InstanceRow,
        r#"UPDATE saga_instances SET
               locked_by = $2,
               locked_until = GREATEST(now(), COALESCE($4, now())) + $3::float8 * interval '1 millisecond',
               updated_at = now(),
               status = CASE
                   WHEN $8 THEN 'COMPENSATING'
                   WHEN $7 THEN CASE status WHEN 'WAITING' THEN 'RUNNING'
                                            WHEN 'FAILED' THEN 'COMPENSATING' ELSE status END
                   ELSE status END,
               failed_step = CASE
                   WHEN $8 AND status NOT IN ('COMPENSATING', 'FAILED') THEN NULL
                   ELSE failed_step END,
               error = CASE
                   WHEN $8 AND status NOT IN ('COMPENSATING', 'FAILED') THEN $9
                   WHEN $7 AND status = 'WAITING' THEN NULL
                   ELSE error END,
               compensation_error = CASE WHEN $7 OR $8 THEN NULL ELSE compensation_error END,
               completed_at = CASE WHEN $7 OR $8 THEN NULL ELSE completed_at END
           WHERE id = $1 AND saga_type = $5 AND status = ANY($6)
             AND (locked_until IS NULL OR locked_until < COALESCE($4, now()) OR locked_by = $2)
           RETURNING saga_type, status AS "status: SagaStatus", context, outputs, failed_step, error, rejection"#,
        id,
        owner,
        lease_ms as f64,
        now,
        saga_type,
        statuses as &[SagaStatus],
        resume,
        compensate,
        reason,
    )
    .fetch_optional(pool)
    .await?)
}

/// The instance row, whoever holds it.
pub(crate) async fn instance(pool: &PgPool, id: Uuid) -> Result<Option<InstanceRow>> {
    Ok(sqlx::query_as!(
        InstanceRow,
        r#"SELECT saga_type, status AS "status: SagaStatus", context, outputs, failed_step, error, rejection
           FROM saga_instances WHERE id = $1"#,
        id,
    )
    .fetch_optional(pool)
    .await?)
}

pub(crate) async fn step_rows(pool: &PgPool, id: Uuid) -> Result<Vec<StepRow>> {
    Ok(sqlx::query_as!(
        StepRow,
        r#"SELECT step, kind AS "kind: StepKind", attempt, status AS "status: StepStatus"
           FROM saga_steps WHERE saga_id = $1 ORDER BY id"#,
        id,
    )
    .fetch_all(pool)
    .await?)
}

/// Marks attempts left `RUNNING` (written by an older version of this crate, whose owner
/// stopped mid-attempt) `INTERRUPTED`; the attempt runs again.
pub(crate) async fn interrupt_running(pool: &PgPool, id: Uuid) -> Result<u64> {
    Ok(sqlx::query!(
        "UPDATE saga_steps SET status = 'INTERRUPTED', finished_at = now(), \
             error = 'interrupted: its owner stopped before the attempt finished' \
         WHERE saga_id = $1 AND status = 'RUNNING'",
        id,
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Unfinished sagas whose lease expired before `now` (or that never had one), oldest first.
pub(crate) async fn stale(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, String)>> {
    Ok(sqlx::query!(
        "SELECT id, saga_type FROM saga_instances \
         WHERE status IN ('RUNNING', 'COMPENSATING') AND (locked_until IS NULL OR locked_until < $1) \
         ORDER BY updated_at LIMIT $2",
        now,
        limit,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.id, row.saga_type))
    .collect())
}

/// One finished execution of an action or a compensation, waiting for the next checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub step: String,
    pub kind: StepKind,
    pub attempt: u32,
    pub status: StepStatus,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// The instance row as a checkpoint writes it.
#[derive(Debug, Clone)]
pub(crate) struct InstanceState<'a> {
    pub status: SagaStatus,
    pub context: &'a Value,
    pub outputs: &'a Value,
    pub current_step: Option<&'a str>,
    pub failed_step: Option<&'a str>,
    pub error: Option<&'a str>,
    pub rejection: Option<&'a Value>,
    pub compensation_error: Option<&'a str>,
    /// The run ends with this write: `completed_at` is set (for final statuses) and the
    /// lease released.
    pub ends_run: bool,
}

/// Writes on a saga whose lease this owner holds (or will, with its first write).
pub(crate) struct Held<'a> {
    pub pool: &'a PgPool,
    pub id: Uuid,
    pub saga_type: &'static str,
    pub owner: &'a str,
    pub lease_ms: i64,
    /// The row exists (false for a lazily started saga until its first checkpoint commits).
    persisted: AtomicBool,
    /// Set when the write that ends the run and releases the lease begins.
    releasing: AtomicBool,
}

impl<'a> Held<'a> {
    pub fn new(
        pool: &'a PgPool,
        id: Uuid,
        saga_type: &'static str,
        owner: &'a str,
        lease_ms: i64,
        persisted: bool,
    ) -> Self {
        Self {
            pool,
            id,
            saga_type,
            owner,
            lease_ms,
            persisted: AtomicBool::new(persisted),
            releasing: AtomicBool::new(false),
        }
    }

    /// Whether the saga's row exists.
    pub fn persisted(&self) -> bool {
        self.persisted.load(Ordering::SeqCst)
    }

    /// Records that a checkpoint inserting the row committed.
    pub fn mark_persisted(&self) {
        self.persisted.store(true, Ordering::SeqCst);
    }

    /// Whether this run has begun releasing the lease itself: from then on, finding the lease
    /// not ours may mean our own release committed, not that another owner took it.
    pub fn releasing(&self) -> bool {
        self.releasing.load(Ordering::SeqCst)
    }

    /// Renews the lease; `false` if this owner no longer holds it. Nothing to renew before the
    /// row exists.
    pub async fn renew(&self) -> Result<bool> {
        if !self.persisted() {
            return Ok(true);
        }
        // What the keeper runs while a run lasts.
        let touched = sqlx::query!(
            "UPDATE saga_instances SET updated_at = now(), \
                 locked_until = GREATEST(locked_until, now() + $3::float8 * interval '1 millisecond') \
             WHERE id = $1 AND locked_by = $2",
            self.id,
            self.owner,
            self.lease_ms as f64,
        )
        .execute(self.pool)
        .await?
        .rows_affected();
        Ok(touched == 1)
    }

    /// A checkpoint in the caller's transaction: the instance row as `state` says (inserted
    /// if it does not exist yet, else updated under this owner's lease, which it renews or,
    /// ending the run, releases) and `records` appended. [`Error::LeaseLost`] if the lease is
    /// another owner's; [`Error::AlreadyExists`] if a new saga's id is taken. Returns whether
    /// this write inserted the row (call [`Held::mark_persisted`] once it committed).
    pub async fn write(
        &self,
        conn: &mut PgConnection,
        state: &InstanceState<'_>,
        records: &[Record],
    ) -> Result<bool> {
        if state.ends_run {
            // Before anything is sent: a renewal that finds the lease released after this
            // point may have run after our commit, so it must not be taken for a loss.
            self.releasing.store(true, Ordering::SeqCst);
        }
        let inserted = if self.persisted() {
            let updated = sqlx::query!(
                "UPDATE saga_instances SET status = $3, context = $4, outputs = $5, current_step = $6, \
                     failed_step = $7, error = $8, rejection = $9, compensation_error = $10, \
                     updated_at = now(), \
                     completed_at = CASE WHEN $11 AND $3 IN ('COMPLETED', 'COMPENSATED', 'FAILED') \
                                         THEN now() END, \
                     locked_by = CASE WHEN $11 THEN NULL ELSE locked_by END, \
                     locked_until = CASE WHEN $11 THEN NULL \
                         ELSE GREATEST(locked_until, now() + $12::float8 * interval '1 millisecond') END \
                 WHERE id = $1 AND locked_by = $2",
                self.id,
                self.owner,
                state.status.as_str(),
                state.context,
                state.outputs,
                state.current_step,
                state.failed_step,
                state.error,
                state.rejection,
                state.compensation_error,
                state.ends_run,
                self.lease_ms as f64,
            )
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if updated != 1 {
                return Err(Error::LeaseLost(self.id));
            }
            false
        } else {
            let inserted = sqlx::query!(
                "INSERT INTO saga_instances (id, saga_type, status, context, outputs, current_step, \
                     failed_step, error, rejection, compensation_error, locked_by, locked_until, completed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                         CASE WHEN $11 THEN NULL ELSE $12 END, \
                         CASE WHEN $11 THEN NULL ELSE now() + $13::float8 * interval '1 millisecond' END, \
                         CASE WHEN $11 AND $3 IN ('COMPLETED', 'COMPENSATED', 'FAILED') THEN now() END) \
                 ON CONFLICT (id) DO NOTHING",
                self.id,
                self.saga_type,
                state.status.as_str(),
                state.context,
                state.outputs,
                state.current_step,
                state.failed_step,
                state.error,
                state.rejection,
                state.compensation_error,
                state.ends_run,
                self.owner,
                self.lease_ms as f64,
            )
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if inserted != 1 {
                return Err(Error::AlreadyExists(self.id));
            }
            true
        };
        insert_records(conn, self.id, records).await?;
        Ok(inserted)
    }

    /// [`Held::write`] in a transaction of its own.
    pub async fn write_alone(&self, state: &InstanceState<'_>, records: &[Record]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let inserted = self.write(&mut tx, state, records).await?;
        tx.commit().await?;
        if inserted {
            self.mark_persisted();
        }
        Ok(())
    }
}

/// Appends step executions of saga `id`, in order.
async fn insert_records(conn: &mut PgConnection, id: Uuid, records: &[Record]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let steps: Vec<&str> = records.iter().map(|r| r.step.as_str()).collect();
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    let attempts: Vec<i32> = records
        .iter()
        .map(|r| i32::try_from(r.attempt).unwrap_or(i32::MAX))
        .collect();
    let statuses: Vec<&str> = records.iter().map(|r| r.status.as_str()).collect();
    let results: Vec<Option<Value>> = records.iter().map(|r| r.result.clone()).collect();
    let errors: Vec<Option<&str>> = records.iter().map(|r| r.error.as_deref()).collect();
    let started: Vec<DateTime<Utc>> = records.iter().map(|r| r.started_at).collect();
    let finished: Vec<DateTime<Utc>> = records.iter().map(|r| r.finished_at).collect();
    sqlx::query!(
        "INSERT INTO saga_steps (saga_id, step, kind, attempt, status, result, error, started_at, finished_at) \
         SELECT $1, step, kind, attempt, status, result, error, started_at, finished_at \
         FROM unnest($2::text[], $3::text[], $4::int[], $5::text[], $6::jsonb[], $7::text[], \
                     $8::timestamptz[], $9::timestamptz[]) WITH ORDINALITY \
              AS r(step, kind, attempt, status, result, error, started_at, finished_at, n) \
         ORDER BY n",
        id,
        &steps as &[&str],
        &kinds as &[&str],
        &attempts,
        &statuses as &[&str],
        &results as &[Option<Value>],
        &errors as &[Option<&str>],
        &started,
        &finished,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks saga `id` COMPENSATED in the caller's transaction, for a caller that undid the saga's
/// steps itself (an order's cancellation runs the same compensations): `compensated` names
/// the steps it undid, recorded as succeeded compensations, `reason` becomes the saga's error.
/// Only a saga at rest (COMPLETED, WAITING or FAILED, no lease held) is marked; returns
/// whether it was (a saga still running carries on and sees the change itself).
pub async fn mark_compensated(
    conn: &mut PgConnection,
    id: Uuid,
    reason: &str,
    compensated: &[&str],
) -> Result<bool> {
    let marked = sqlx::query!(
        "UPDATE saga_instances SET status = 'COMPENSATED', error = $2, failed_step = NULL, \
             current_step = NULL, compensation_error = NULL, updated_at = now(), completed_at = now() \
         WHERE id = $1 AND status IN ('COMPLETED', 'WAITING', 'FAILED') \
           AND (locked_until IS NULL OR locked_until < now())",
        id,
        reason,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if marked == 0 {
        return Ok(false);
    }
    let done: Vec<(String, i32)> = sqlx::query!(
        r#"SELECT step, max(attempt) AS "attempts!" FROM saga_steps
           WHERE saga_id = $1 AND kind = 'COMPENSATION' GROUP BY step"#,
        id,
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|row| (row.step, row.attempts))
    .collect();
    let now = Utc::now();
    let records: Vec<Record> = compensated
        .iter()
        .map(|step| {
            let attempt = done
                .iter()
                .find(|(s, _)| s == step)
                .map_or(1, |(_, n)| u32::try_from(*n).unwrap_or(0) + 1);
            Record {
                step: (*step).to_owned(),
                kind: StepKind::Compensation,
                attempt,
                status: StepStatus::Succeeded,
                result: None,
                error: None,
                started_at: now,
                finished_at: now,
            }
        })
        .collect();
    insert_records(conn, id, &records).await?;
    Ok(true)
}
