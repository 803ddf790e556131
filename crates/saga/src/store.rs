//! The saga tables (`saga_instances`, `saga_steps`; DDL in
//! `migrations/sales/20261122000005_sagas.sql`): the public read API ([`load`]), creating a
//! saga inside the caller's transaction ([`create`]), and the orchestrator's writes.
//!
//! Every write of a running saga is one transaction that first updates the instance row
//! `WHERE locked_by = <this owner>`: if the lease passed to someone else, nothing is written and
//! the run stops with [`Error::LeaseLost`]. The same update renews the lease.

use std::{
    fmt,
    str::FromStr,
    sync::atomic::{AtomicBool, Ordering},
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
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
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(Error::Corrupt(format!(
                        concat!(stringify!($name), " {:?}"),
                        other
                    ))),
                }
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

#[derive(sqlx::FromRow)]
struct ViewRow {
    id: Uuid,
    saga_type: String,
    status: String,
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

#[derive(sqlx::FromRow)]
struct StepViewRow {
    step: String,
    kind: String,
    attempt: i32,
    status: String,
    result: Option<Value>,
    error: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

/// The saga `id` with all its step executions, or `None` if there is no such saga.
pub async fn load(pool: &PgPool, id: Uuid) -> Result<Option<SagaView>> {
    let Some(row) = sqlx::query_as::<_, ViewRow>(
        "SELECT id, saga_type, status, context, outputs, current_step, failed_step, error, \
                compensation_error, locked_by, locked_until, created_at, updated_at, completed_at \
         FROM saga_instances WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let steps = sqlx::query_as::<_, StepViewRow>(
        "SELECT step, kind, attempt, status, result, error, started_at, finished_at \
         FROM saga_steps WHERE saga_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|s| {
        Ok(StepView {
            step: s.step,
            kind: s.kind.parse()?,
            attempt: u32::try_from(s.attempt).unwrap_or_default(),
            status: s.status.parse()?,
            result: s.result,
            error: s.error,
            started_at: s.started_at,
            finished_at: s.finished_at,
        })
    })
    .collect::<Result<Vec<_>>>()?;
    Ok(Some(SagaView {
        id: row.id,
        saga_type: row.saga_type,
        status: row.status.parse()?,
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
pub async fn create<C: SagaContext>(
    conn: &mut PgConnection,
    definition: &SagaDefinition<C>,
    id: Uuid,
    context: &C,
) -> Result<()> {
    let inserted = sqlx::query(
        "INSERT INTO saga_instances (id, saga_type, status, context) VALUES ($1, $2, 'RUNNING', $3) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(definition.saga_type())
    .bind(serde_json::to_value(context)?)
    .execute(conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(Error::AlreadyExists(id));
    }
    Ok(())
}

/// The part of an instance row the orchestrator runs from.
#[derive(sqlx::FromRow)]
pub(crate) struct InstanceRow {
    pub saga_type: String,
    pub status: String,
    pub context: Value,
    pub outputs: Value,
    pub failed_step: Option<String>,
    pub error: Option<String>,
}

const INSTANCE_COLUMNS: &str = "saga_type, status, context, outputs, failed_step, error";

/// The progress recorded for one step execution.
#[derive(sqlx::FromRow)]
pub(crate) struct StepRow {
    pub step: String,
    pub kind: String,
    pub attempt: i32,
    pub status: String,
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

pub(crate) async fn insert_running(
    pool: &PgPool,
    id: Uuid,
    saga_type: &str,
    context: &Value,
    owner: &str,
    lease_ms: i64,
) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO saga_instances (id, saga_type, status, context, locked_by, locked_until) \
         VALUES ($1, $2, 'RUNNING', $3, $4, now() + $5::float8 * interval '1 millisecond') \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(saga_type)
    .bind(context)
    .bind(owner)
    .bind(lease_ms)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted == 1)
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
    let (now, set, statuses, reason): (Option<DateTime<Utc>>, &str, &[&str], Option<&str>) =
        match mode {
            ClaimMode::Resume => (
                None,
                "status = CASE status WHEN 'WAITING' THEN 'RUNNING' WHEN 'FAILED' THEN 'COMPENSATING' \
                                      ELSE status END, \
                 error = CASE status WHEN 'WAITING' THEN NULL ELSE error END, \
                 compensation_error = NULL, completed_at = NULL",
                &["RUNNING", "COMPENSATING", "WAITING", "FAILED"],
                None,
            ),
            ClaimMode::Recover(now) => (
                Some(*now),
                "status = status",
                &["RUNNING", "COMPENSATING"],
                None,
            ),
            ClaimMode::Compensate(reason) => (
                None,
                "status = 'COMPENSATING', \
                 failed_step = CASE WHEN status IN ('COMPENSATING', 'FAILED') THEN failed_step END, \
                 error = CASE WHEN status IN ('COMPENSATING', 'FAILED') THEN error ELSE $7 END, \
                 compensation_error = NULL, completed_at = NULL",
                &["RUNNING", "COMPENSATING", "WAITING", "COMPLETED", "FAILED"],
                Some(reason),
            ),
        };
    // The new lease runs from the later of the database's clock and the caller's `now`, so a
    // sweep that treats leases up to `now` as expired cannot take a lease another sweep with the
    // same `now` just took.
    let sql = format!(
        "UPDATE saga_instances SET \
             locked_by = $2, \
             locked_until = GREATEST(now(), COALESCE($4, now())) + $3::float8 * interval '1 millisecond', \
             updated_at = now(), \
             {set} \
         WHERE id = $1 AND saga_type = $5 AND status = ANY($6) \
           AND (locked_until IS NULL OR locked_until < COALESCE($4, now()) OR locked_by = $2) \
         RETURNING {INSTANCE_COLUMNS}"
    );
    let mut query = sqlx::query_as::<_, InstanceRow>(&sql)
        .bind(id)
        .bind(owner)
        .bind(lease_ms)
        .bind(now)
        .bind(saga_type)
        .bind(statuses);
    if let Some(reason) = reason {
        query = query.bind(reason);
    }
    Ok(query.fetch_optional(pool).await?)
}

/// The instance row, whoever holds it.
pub(crate) async fn instance(pool: &PgPool, id: Uuid) -> Result<Option<InstanceRow>> {
    let sql = format!("SELECT {INSTANCE_COLUMNS} FROM saga_instances WHERE id = $1");
    Ok(sqlx::query_as::<_, InstanceRow>(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

pub(crate) async fn step_rows(pool: &PgPool, id: Uuid) -> Result<Vec<StepRow>> {
    Ok(sqlx::query_as::<_, StepRow>(
        "SELECT step, kind, attempt, status FROM saga_steps WHERE saga_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?)
}

/// Unfinished sagas whose lease expired before `now` (or that never had one), oldest first.
pub(crate) async fn stale(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, String)>> {
    Ok(sqlx::query_as::<_, (Uuid, String)>(
        "SELECT id, saga_type FROM saga_instances \
         WHERE status IN ('RUNNING', 'COMPENSATING') AND (locked_until IS NULL OR locked_until < $1) \
         ORDER BY updated_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Writes on a saga whose lease this owner holds.
pub(crate) struct Held<'a> {
    pub pool: &'a PgPool,
    pub id: Uuid,
    pub owner: &'a str,
    pub lease_ms: i64,
    /// Set when the write that ends the run and releases the lease begins (see [`Held::end`]).
    releasing: AtomicBool,
}

/// Renews the lease and sets `current_step` if given; the guard of every write.
const TOUCH: &str = "UPDATE saga_instances SET updated_at = now(), \
     locked_until = GREATEST(locked_until, now() + $3::float8 * interval '1 millisecond'), \
     current_step = COALESCE($4, current_step) \
     WHERE id = $1 AND locked_by = $2";

const RELEASE: &str =
    "UPDATE saga_instances SET locked_by = NULL, locked_until = NULL WHERE id = $1";

impl<'a> Held<'a> {
    pub fn new(pool: &'a PgPool, id: Uuid, owner: &'a str, lease_ms: i64) -> Self {
        Self {
            pool,
            id,
            owner,
            lease_ms,
            releasing: AtomicBool::new(false),
        }
    }

    /// Whether this run has begun releasing the lease itself: from then on, finding the lease
    /// not ours may mean our own release committed, not that another owner took it.
    pub fn releasing(&self) -> bool {
        self.releasing.load(Ordering::SeqCst)
    }

    /// Begins a transaction and renews the lease in it; [`Error::LeaseLost`] if this owner no
    /// longer holds it. Dropping the transaction rolls it back.
    async fn begin(&self, current_step: Option<&str>) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        let touched = sqlx::query(TOUCH)
            .bind(self.id)
            .bind(self.owner)
            .bind(self.lease_ms)
            .bind(current_step)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if touched != 1 {
            return Err(Error::LeaseLost(self.id));
        }
        Ok(tx)
    }

    /// Renews the lease; `false` if this owner no longer holds it.
    pub async fn renew(&self) -> Result<bool> {
        let touched = sqlx::query(TOUCH)
            .bind(self.id)
            .bind(self.owner)
            .bind(self.lease_ms)
            .bind(None::<&str>)
            .execute(self.pool)
            .await?
            .rows_affected();
        Ok(touched == 1)
    }

    /// Marks attempts left `RUNNING` by a previous owner `INTERRUPTED`.
    pub async fn interrupt_running(&self) -> Result<u64> {
        let mut tx = self.begin(None).await?;
        let interrupted = sqlx::query(
            "UPDATE saga_steps SET status = 'INTERRUPTED', finished_at = now(), \
                 error = 'interrupted: its owner stopped before the attempt finished' \
             WHERE saga_id = $1 AND status = 'RUNNING'",
        )
        .bind(self.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(interrupted)
    }

    pub async fn record_skip(&self, step: &str) -> Result<()> {
        let mut tx = self.begin(Some(step)).await?;
        sqlx::query(
            "INSERT INTO saga_steps (saga_id, step, kind, attempt, status, finished_at) \
             VALUES ($1, $2, 'ACTION', 0, 'SKIPPED', now())",
        )
        .bind(self.id)
        .bind(step)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records an attempt as started; returns its row id.
    pub async fn start_attempt(&self, step: &str, kind: StepKind, attempt: u32) -> Result<i64> {
        let mut tx = self.begin(Some(step)).await?;
        let row: i64 = sqlx::query_scalar(
            "INSERT INTO saga_steps (saga_id, step, kind, attempt, status) \
             VALUES ($1, $2, $3, $4, 'RUNNING') RETURNING id",
        )
        .bind(self.id)
        .bind(step)
        .bind(kind.as_str())
        .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Records a successful action and, in the same transaction, its effect on the saga:
    /// a new context, or an output stored under the step's name.
    pub async fn action_succeeded(
        &self,
        row: i64,
        step: &str,
        result: &Value,
        new_context: bool,
    ) -> Result<()> {
        let mut tx = self.begin(None).await?;
        let effect = if new_context {
            sqlx::query("UPDATE saga_instances SET context = $2 WHERE id = $1")
                .bind(self.id)
                .bind(result)
        } else {
            sqlx::query(
                "UPDATE saga_instances SET outputs = outputs || jsonb_build_object($3::text, $2::jsonb) \
                 WHERE id = $1",
            )
            .bind(self.id)
            .bind(result)
            .bind(step)
        };
        effect.execute(&mut *tx).await?;
        finish_row(&mut tx, row, StepStatus::Succeeded, Some(result), None).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn compensation_succeeded(&self, row: i64) -> Result<()> {
        let mut tx = self.begin(None).await?;
        finish_row(&mut tx, row, StepStatus::Succeeded, None, None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records how an attempt ended when it changes nothing else.
    pub async fn attempt_ended(&self, row: i64, status: StepStatus, error: &str) -> Result<()> {
        let mut tx = self.begin(None).await?;
        finish_row(&mut tx, row, status, None, Some(error)).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn begin_compensation(&self, failed_step: &str, error: &str) -> Result<()> {
        let mut tx = self.begin(Some(failed_step)).await?;
        sqlx::query(
            "UPDATE saga_instances SET status = 'COMPENSATING', failed_step = $2, error = $3 \
             WHERE id = $1",
        )
        .bind(self.id)
        .bind(failed_step)
        .bind(error)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// WAITING at `step`, lease released.
    pub async fn park(&self, step: &str, reason: &str) -> Result<()> {
        self.end(Some(step), "status = 'WAITING', error = $2", Some(reason))
            .await
    }

    pub async fn complete(&self) -> Result<()> {
        self.end(
            None,
            "status = 'COMPLETED', current_step = NULL, completed_at = now()",
            None,
        )
        .await
    }

    pub async fn compensated(&self) -> Result<()> {
        self.end(
            None,
            "status = 'COMPENSATED', current_step = NULL, completed_at = now()",
            None,
        )
        .await
    }

    /// FAILED at compensation `step`, lease released.
    pub async fn failed(&self, step: &str, error: &str) -> Result<()> {
        self.end(
            Some(step),
            "status = 'FAILED', compensation_error = $2, completed_at = now()",
            Some(error),
        )
        .await
    }

    /// A status change that ends this run: applied and the lease released in one transaction.
    async fn end(&self, current_step: Option<&str>, set: &str, text: Option<&str>) -> Result<()> {
        // Before anything is sent: a renewal that finds the lease released after this point
        // may have run after our commit, so it must not be taken for a loss.
        self.releasing.store(true, Ordering::SeqCst);
        let mut tx = self.begin(current_step).await?;
        let sql = format!("UPDATE saga_instances SET {set} WHERE id = $1");
        let mut query = sqlx::query(&sql).bind(self.id);
        if let Some(text) = text {
            query = query.bind(text);
        }
        query.execute(&mut *tx).await?;
        sqlx::query(RELEASE).bind(self.id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn finish_row(
    tx: &mut PgConnection,
    row: i64,
    status: StepStatus,
    result: Option<&Value>,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE saga_steps SET status = $2, result = $3, error = $4, finished_at = now() WHERE id = $1",
    )
    .bind(row)
    .bind(status.as_str())
    .bind(result)
    .bind(error)
    .execute(tx)
    .await?;
    Ok(())
}
