//! `reconciliation_runs`: the run records of reconciliation, and the jobs status the
//! reliability view derives from the latest one.

use chrono::{DateTime, Utc};
use resilience::deadline::after;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    /// Every order checked without error.
    Succeeded,
    /// The run finished, but some orders failed.
    Partial,
    /// The run itself failed (e.g. the candidates could not be read).
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCEEDED",
            Self::Partial => "PARTIAL",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Running, Self::Succeeded, Self::Partial, Self::Failed]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

contracts::text_enum!(RunStatus);

/// `reconciliationJobsStatus` of the reliability view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobsStatus {
    /// The last run succeeded, recently.
    Healthy,
    /// The last run had errors, or no run finished for two intervals.
    Degraded,
    /// The last run failed entirely.
    Failed,
    /// Reconciliation is switched off (`SALES_RECONCILIATION_ENABLED=false`).
    Disabled,
}

/// The status given the last finished run (its status and start), `now`, the
/// configured interval and when this instance started.
pub fn classify(
    last: Option<(RunStatus, DateTime<Utc>)>,
    now: DateTime<Utc>,
    interval: std::time::Duration,
    since: DateTime<Utc>,
) -> JobsStatus {
    let overdue = |at: DateTime<Utc>| now > after(after(at, interval), interval);
    match last {
        None if overdue(since) => JobsStatus::Degraded,
        None => JobsStatus::Healthy,
        Some((RunStatus::Failed, _)) => JobsStatus::Failed,
        Some((RunStatus::Partial, _)) => JobsStatus::Degraded,
        Some((_, at)) if overdue(at.max(since)) => JobsStatus::Degraded,
        Some(_) => JobsStatus::Healthy,
    }
}

/// [`classify`] on the latest finished run recorded (by any instance).
pub async fn jobs_status(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    interval: std::time::Duration,
    since: DateTime<Utc>,
) -> Result<JobsStatus, sqlx::Error> {
    let last = sqlx::query!(
        r#"SELECT status AS "status: RunStatus", started_at FROM reconciliation_runs
           WHERE status <> $1 ORDER BY started_at DESC LIMIT 1"#,
        RunStatus::Running as _,
    )
    .fetch_optional(conn)
    .await?
    .map(|r| (r.status, r.started_at));
    Ok(classify(last, now, interval, since))
}

/// Holding the run lock, no other run is alive: one still RUNNING died.
pub async fn fail_interrupted(pool: &PgPool, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE reconciliation_runs SET status = $2, finished_at = $1,
                error = 'interrupted: the instance running it stopped'
         WHERE status = $3",
        now,
        RunStatus::Failed as _,
        RunStatus::Running as _,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Records the start of run `id`.
pub async fn start(pool: &PgPool, id: Uuid, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO reconciliation_runs (id, started_at, status) VALUES ($1, $2, $3)",
        id,
        now,
        RunStatus::Running as _,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// What a finished run counted.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    pub checked: i32,
    pub fixed: i32,
    pub flagged: i32,
    pub errors: i32,
}

/// Records the end of run `id`.
pub async fn finish(
    pool: &PgPool,
    id: Uuid,
    finished_at: DateTime<Utc>,
    counts: Counts,
    status: RunStatus,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE reconciliation_runs SET finished_at = $2, checked = $3, fixed = $4, flagged = $5,
                errors = $6, status = $7, error = $8
         WHERE id = $1",
        id,
        finished_at,
        counts.checked,
        counts.fixed,
        counts.flagged,
        counts.errors,
        status as _,
        error,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes the records of runs started before `before`.
pub async fn prune(pool: &PgPool, before: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM reconciliation_runs WHERE started_at < $1",
        before
    )
    .execute(pool)
    .await?;
    Ok(())
}
