//! The sales database behind the `database` circuit breaker. A request's
//! database work runs under one permit: when the breaker is open the request is
//! answered 503 at once, with `Retry-After` set to the breaker's remaining open
//! time, before any other dependency is called.

use std::future::Future;

use platform::ApiResult;
use resilience::CircuitBreaker;
use sqlx::{PgPool, migrate::Migrator};

/// The sales database's migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sales");

/// The pool and its breaker.
#[derive(Clone)]
pub struct Db {
    pub pool: PgPool,
    pub breaker: CircuitBreaker,
}

impl Db {
    /// Runs a request's database work under one breaker permit.
    pub async fn guard<T>(&self, work: impl Future<Output = ApiResult<T>>) -> ApiResult<T> {
        platform::db::guard(&self.breaker, work).await
    }

    /// True while the breaker refuses calls (workers skip their step then).
    pub fn is_open(&self) -> bool {
        self.breaker.remaining_open().is_some()
    }
}
