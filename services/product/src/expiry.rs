//! The expiry worker: returns the stock of reservations whose TTL ran out.
//! Safe with several instances: each reservation is settled under its row lock
//! and only while still ACTIVE, so stock is never returned twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use contracts::catalog::ReservationStatus;
use platform::ApiError;
use platform::worker::{Next, Start, run_every};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::reservations::{Settle, settle};

/// Most reservations expired by one step.
pub const BATCH: i64 = 100;

/// One step: expires up to [`BATCH`] reservations due at `now`; returns how many.
pub async fn run_once(pool: &PgPool, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let due: Vec<Uuid> = sqlx::query_scalar!(
        "SELECT order_id FROM reservations WHERE status = 'ACTIVE' AND expires_at <= $1
         ORDER BY expires_at LIMIT $2",
        now,
        BATCH,
    )
    .fetch_all(pool)
    .await?;
    let mut expired = 0;
    for order_id in due {
        match settle(pool, order_id, Settle::Expire, now).await {
            Ok(Some(r)) if r.status == ReservationStatus::Expired => {
                tracing::warn!(%order_id, "reservation expired before it was committed; stock returned");
                expired += 1;
            }
            // Committed or released meanwhile by a request: nothing to do.
            Ok(_) | Err(ApiError::Problem(_)) => {}
            Err(ApiError::Database(e)) => return Err(e.into()),
        }
    }
    Ok(expired)
}

/// Runs [`run_once`] every `interval` until `token` is cancelled.
pub async fn run(pool: PgPool, interval: Duration, token: CancellationToken) {
    run_every(
        "reservation-expiry",
        interval,
        Start::Immediately,
        token,
        || async {
            let expired = run_once(&pool, Utc::now()).await?;
            anyhow::Ok(if expired as i64 >= BATCH {
                Next::Again
            } else {
                Next::Wait
            })
        },
    )
    .await;
}
