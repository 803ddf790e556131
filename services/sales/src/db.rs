//! The sales database behind the `database` circuit breaker. A request's
//! database work runs under one permit: when the breaker is open the request is
//! answered 503 at once, with `Retry-After` set to the breaker's remaining open
//! time, before any other dependency is called.

use std::future::Future;

use contracts::Problem;
use platform::{ApiError, ApiResult};
use resilience::{CircuitBreaker, Outcome, Rejected};
use sqlx::{PgPool, migrate::Migrator};

/// The sales database's migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sales");

/// The pool and its breaker.
#[derive(Clone)]
pub struct Db {
    pub pool: PgPool,
    pub breaker: CircuitBreaker,
}

/// 503 for a request refused by the open database breaker.
pub fn rejected_problem(rejected: &Rejected) -> Problem {
    let secs = Problem::retry_after_secs(rejected.retry_after);
    Problem::unavailable(
        "the database is unavailable; try again after Retry-After seconds",
        secs,
    )
}

/// Whether an outcome says the database itself failed (as opposed to a bad request).
pub fn outcome<T>(result: &ApiResult<T>) -> Outcome {
    match result {
        Err(ApiError::Database(e)) if platform::db::is_unavailable(e) => Outcome::Failure,
        _ => Outcome::Success,
    }
}

impl Db {
    /// Runs a request's database work under one breaker permit.
    pub async fn guard<T>(&self, work: impl Future<Output = ApiResult<T>>) -> ApiResult<T> {
        let permit = self
            .breaker
            .try_acquire()
            .map_err(|r| ApiError::from(rejected_problem(&r)))?;
        let result = work.await;
        permit.record(outcome(&result));
        result
    }

    /// True while the breaker refuses calls (workers skip their step then).
    pub fn is_open(&self) -> bool {
        self.breaker.remaining_open().is_some()
    }
}
