//! Outbox retention: SENT rows older than the retention are deleted in batches,
//! keeping the table (and the relay's index) small. FAILED rows stay until an
//! operator replays or discards them.

use chrono::{DateTime, Utc};
use platform::worker::{Next, Start, run_every};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::Config;

/// Rows deleted per statement.
pub const BATCH: i64 = 1_000;

/// Deletes up to [`BATCH`] SENT rows sent before `now - retention`; returns how many.
pub async fn run_once(
    pool: &PgPool,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let cutoff = resilience::deadline::before(now, config.retention);
    let deleted = sqlx::query!(
        "DELETE FROM outbox_events WHERE id IN (
             SELECT id FROM outbox_events WHERE status = 'SENT' AND sent_at < $1
             ORDER BY sent_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        cutoff,
        BATCH,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(deleted)
}

/// Cleans up every `cleanup_interval` until `token` is cancelled.
pub async fn run(pool: PgPool, config: Config, token: CancellationToken) {
    run_every(
        "outbox-cleanup",
        config.cleanup_interval,
        Start::Immediately,
        token,
        || async {
            let deleted = run_once(&pool, &config, Utc::now()).await?;
            if deleted > 0 {
                tracing::info!(deleted, "old SENT outbox rows deleted");
            }
            Ok::<_, sqlx::Error>(if deleted as i64 == BATCH {
                Next::Again
            } else {
                Next::Wait
            })
        },
    )
    .await;
}
