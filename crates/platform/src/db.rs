//! The database pool: create the database if asked, connect with bounded waits,
//! apply the embedded migrations, and tell "the database is unavailable" (503)
//! apart from other errors (500); [`guard`] runs a request's database work behind a
//! circuit breaker.

use std::time::{Duration, Instant};

use anyhow::Context;
use contracts::Problem;
use sqlx::{
    PgPool, Postgres,
    migrate::{MigrateDatabase, Migrator},
    postgres::PgPoolOptions,
};

use crate::config::DatabaseConfig;

/// Seconds a client is told to wait when the database is unavailable.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Connects (waiting up to `startup_timeout` for the server), creating the database
/// first if configured to, and applies `migrator`. Migrations take an advisory
/// lock, so several instances may start at once.
pub async fn connect_and_migrate(
    config: &DatabaseConfig,
    migrator: &Migrator,
) -> anyhow::Result<PgPool> {
    let deadline = Instant::now() + config.startup_timeout;
    let mut failures = 0;
    loop {
        match try_connect(config).await {
            Ok(pool) => {
                migrator
                    .run(&pool)
                    .await
                    .context("applying database migrations")?;
                return Ok(pool);
            }
            Err(e) => {
                failures += 1;
                let delay = connect_backoff(failures);
                if Instant::now() + delay >= deadline {
                    return Err(e).context("connecting to the database");
                }
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database not reachable yet");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The wait after the `failures`-th failed connection at start-up: 100 ms doubling to 2 s.
fn connect_backoff(failures: u32) -> Duration {
    resilience::backoff::exponential(failures, Duration::from_millis(100), Duration::from_secs(2))
}

async fn try_connect(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    if config.create_if_missing && !Postgres::database_exists(&config.url).await? {
        match Postgres::create_database(&config.url).await {
            Ok(()) => tracing::info!("created the database"),
            // Another instance created it at the same moment.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e),
        }
    }
    pool_options(config).connect(&config.url).await
}

/// Pool options from the configuration.
pub fn pool_options(config: &DatabaseConfig) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
}

/// True when the error means the database cannot be reached or cannot take work
/// right now (as opposed to a bug or a constraint violation).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception; 57P0x: shutdown/cannot connect now;
            // 53300: too many connections; 40001/40P01 are retryable but not outages.
            c.starts_with("08") || c.starts_with("57P") || c == "53300"
        }),
        _ => false,
    }
}

/// 503 for a request refused by an open database breaker, `Retry-After` its remaining open
/// time.
pub fn breaker_rejected(rejected: &resilience::Rejected) -> Problem {
    let secs = Problem::retry_after_secs(rejected.retry_after);
    Problem::unavailable(
        "the database is unavailable; try again after Retry-After seconds",
        secs,
    )
}

/// Whether a request's result says the database itself failed (as opposed to a bad request).
pub fn outcome<T>(result: &crate::ApiResult<T>) -> resilience::Outcome {
    match result {
        Err(crate::ApiError::Database(e)) if is_unavailable(e) => resilience::Outcome::Failure,
        _ => resilience::Outcome::Success,
    }
}

/// Runs a request's database work under one permit of `breaker`: refused at once (503,
/// [`breaker_rejected`]) while it is open, its outcome recorded otherwise.
pub async fn guard<T>(
    breaker: &resilience::CircuitBreaker,
    work: impl Future<Output = crate::ApiResult<T>>,
) -> crate::ApiResult<T> {
    let permit = breaker
        .try_acquire()
        .map_err(|r| crate::ApiError::from(breaker_rejected(&r)))?;
    let result = work.await;
    permit.record(outcome(&result));
    result
}

/// A short description without secrets, for logs and readiness.
pub fn describe(e: &sqlx::Error) -> String {
    if is_unavailable(e) {
        format!("unavailable: {e}")
    } else {
        "error".to_owned()
    }
}

/// The problem to answer for a database error: 503 with `Retry-After` when the
/// database is unavailable, an opaque 500 otherwise. The cause is logged here.
pub fn problem(e: &sqlx::Error) -> Problem {
    if is_unavailable(e) {
        tracing::warn!(error = %e, "database unavailable");
        Problem::unavailable(
            "the database is unavailable; try again shortly",
            RETRY_AFTER_SECS,
        )
    } else {
        tracing::error!(error = %e, "database error");
        Problem::internal()
    }
}

/// The name of the unique constraint a database error violated, if any.
pub fn violated_constraint(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => db.constraint(),
        _ => None,
    }
}
