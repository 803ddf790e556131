//! Dead letters (FAILED rows): listing them with their errors, replaying one or all (back to
//! PENDING, their refusals forgotten) and discarding one with a reason (kept as DISCARDED).
//! Every replay and discard is written to `outbox_audit` with the person who did it, in the
//! same transaction. [`http`]: the staff endpoints doing these over HTTP, which each service
//! mounts ([`http::router`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::CHANNEL;

pub mod http;

/// Most dead letters [`list`] returns.
pub const LIST_LIMIT: i64 = 1000;

/// A dead-lettered event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FailedEvent {
    pub id: Uuid,
    pub event_type: String,
    pub aggregate_id: Uuid,
    pub aggregate_version: i32,
    pub retry_count: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

async fn audit(
    conn: &mut PgConnection,
    ids: &[Uuid],
    action: &str,
    actor: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO outbox_audit (event_id, action, actor, reason) SELECT id, $2, $3, $4 FROM unnest($1::uuid[]) AS id",
        ids,
        action,
        actor,
        reason,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// FAILED events, oldest first (at most [`LIST_LIMIT`]).
pub async fn list(pool: &PgPool) -> Result<Vec<FailedEvent>, sqlx::Error> {
    sqlx::query_as!(
        FailedEvent,
        "SELECT id, event_type, aggregate_id, aggregate_version, retry_count, last_error, created_at
         FROM outbox_events WHERE status = 'FAILED' ORDER BY created_at LIMIT $1",
        LIST_LIMIT,
    )
    .fetch_all(pool)
    .await
}

/// Puts every FAILED event (or only `only`) back to PENDING, due now, and wakes the relay;
/// returns the ids replayed.
pub async fn replay(
    pool: &PgPool,
    only: Option<Uuid>,
    actor: &str,
) -> Result<Vec<Uuid>, sqlx::Error> {
    // Dropping `tx` without commit (any early return) rolls back.
    let mut tx = pool.begin().await?;
    let ids = sqlx::query_scalar!(
        "UPDATE outbox_events SET status = 'PENDING', retry_count = 0, first_refused_at = NULL, next_attempt_at = now(), last_error = NULL
         WHERE status = 'FAILED' AND ($1::uuid IS NULL OR id = $1) RETURNING id",
        only,
    )
    .fetch_all(&mut *tx)
    .await?;
    audit(&mut tx, &ids, "REPLAYED", actor, None).await?;
    // Wake the relay: the trigger only fires on INSERT.
    sqlx::query!("SELECT FROM pg_notify($1, '')", CHANNEL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(count = ids.len(), actor, "dead-lettered events replayed");
    Ok(ids)
}

/// Discards the FAILED event `id` (kept as DISCARDED) with `reason`; false when there is no
/// FAILED event with that id.
pub async fn discard(
    pool: &PgPool,
    id: Uuid,
    actor: &str,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    // Dropping `tx` without commit (any early return) rolls back.
    let mut tx = pool.begin().await?;
    let ids = sqlx::query_scalar!(
        "UPDATE outbox_events SET status = 'DISCARDED' WHERE status = 'FAILED' AND id = $1 RETURNING id",
        id,
    )
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        return Ok(false);
    }
    audit(&mut tx, &ids, "DISCARDED", actor, Some(reason)).await?;
    tx.commit().await?;
    tracing::warn!(event_id = %id, actor, reason, "dead-lettered event discarded");
    Ok(true)
}
