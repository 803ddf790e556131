//! Redis, optional (`SALES_REDIS_URL`): the order cache behind `GET /orders/{id}`
//! and the store the rate limiter shares across instances.
//! Without it, reads go to the database and rate limits are kept per instance.
//!
//! Redis is never on the critical path. The connection is made lazily (the
//! service starts without Redis), connecting and each answer are bounded by
//! `SALES_REDIS_TIMEOUT_MS`, and after a failure Redis is left alone for
//! [`DOWN_PAUSE`]: calls in that window fail at once, so a dead or hanging Redis
//! costs one timeout per pause, not one per request. `cache_available` says
//! whether the last call got an answer; the change either way is logged once.
//!
//! # Layout
//! - [`Redis`] (here): the shared connection, its key prefix and its health.
//! - [`orders`]: cache-aside of orders, versioned entries, write-after-commit.
//!
//! The rate limiter (`rate_limit`) shares the connection.

pub mod orders;

use std::{
    fmt::Display,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

pub use orders::OrderCache;
use redis::{
    ErrorKind, RedisError, RedisResult,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use crate::config::CacheConfig;

/// How long Redis is left alone after a call failed for want of an answer.
pub const DOWN_PAUSE: Duration = Duration::from_secs(1);

/// Why a Redis call gave no result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Not attempted: Redis failed less than [`DOWN_PAUSE`] ago.
    #[error("Redis failed moments ago; not asked again yet")]
    Paused,
    /// No answer within the timeout.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Not attempted: as many calls as the bulkhead allows are waiting on Redis already.
    #[error(transparent)]
    Busy(#[from] resilience::BulkheadFull),
    /// Connection refused or dropped, or Redis answered with an error.
    #[error(transparent)]
    Redis(#[from] RedisError),
}

/// The connection to Redis shared by the cache and the rate limiter. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    /// Caps the calls waiting on Redis at once (`SALES_BULKHEAD_REDIS_MAX_CONCURRENT`).
    bulkhead: resilience::Bulkhead,
    prefix: String,
    timeout: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` before which no call is attempted (0: none).
    paused_until_ms: AtomicU64,
    available: AtomicBool,
}

/// Whether the error is an answer from Redis (it is up, the command failed)
/// rather than a connection that failed.
fn answered(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(_) | ErrorKind::Parse | ErrorKind::UnexpectedReturnType
    )
}

impl Redis {
    /// The connection of `config`, or `None` when `SALES_REDIS_URL` is unset. No
    /// connection is made here beyond one `PING` (bounded by the timeout) that sets
    /// `cache_available`; an unreachable Redis is logged and the service starts. At most
    /// `max_concurrent` calls wait on Redis at once; more are refused ([`CallError::Busy`])
    /// and the caller goes to the database.
    pub async fn connect(
        config: &CacheConfig,
        max_concurrent: usize,
    ) -> anyhow::Result<Option<Self>> {
        let Some(url) = &config.url else {
            tracing::info!("SALES_REDIS_URL is not set: no order cache, rate limits per instance");
            return Ok(None);
        };
        let client = redis::Client::open(url.as_str())?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            // One connection attempt per call: the pause does the backing off.
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, manager)?;
        let redis = Self {
            inner: Arc::new(Inner {
                conn,
                bulkhead: resilience::Bulkhead::new("redis", max_concurrent),
                prefix: config.key_prefix.clone(),
                timeout: config.timeout,
                epoch: Instant::now(),
                paused_until_ms: AtomicU64::new(0),
                available: AtomicBool::new(true),
            }),
        };
        match redis
            .call(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
        {
            Ok(_) => {
                tracing::info!(prefix = %config.key_prefix, "Redis answers: order cache and shared rate limits on")
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis does not answer at start-up; serving from the database until it does")
            }
        }
        Ok(Some(redis))
    }

    /// `{prefix}{kind}:{id}`, e.g. `sales:order:0190…`.
    pub fn key(&self, kind: &str, id: impl Display) -> String {
        format!("{}{kind}:{id}", self.inner.prefix)
    }

    /// The key prefix (`SALES_REDIS_KEY_PREFIX`).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Whether the last call got an answer.
    pub fn is_available(&self) -> bool {
        self.inner.available.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    /// Whether calls are skipped right now (a failure less than [`DOWN_PAUSE`] ago).
    pub fn is_paused(&self) -> bool {
        self.now_ms() < self.inner.paused_until_ms.load(Ordering::Relaxed)
    }

    /// Runs `op` on the connection unless Redis is paused, bounded by the timeout.
    pub async fn call<T, F, Fut>(&self, op: F) -> Result<T, CallError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if self.is_paused() {
            return Err(CallError::Paused);
        }
        self.call_unpaused(op).await
    }

    /// [`Redis::call`] even while paused (background retries, off any request's path).
    pub async fn call_unpaused<T, F, Fut>(&self, op: F) -> Result<T, CallError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let _slot = self.inner.bulkhead.try_enter()?;
        // The manager bounds connecting and answering separately; this bounds the sum.
        let limit = self.inner.timeout * 2;
        match tokio::time::timeout(limit, op(self.inner.conn.clone())).await {
            Ok(Ok(value)) => {
                self.up();
                Ok(value)
            }
            Ok(Err(e)) if answered(&e) => {
                self.up();
                Err(e.into())
            }
            Ok(Err(e)) => {
                self.down(&e);
                Err(e.into())
            }
            Err(_) => {
                let e = CallError::Timeout(limit);
                self.down(&e);
                Err(e)
            }
        }
    }

    fn up(&self) {
        metrics::gauge!("cache_available").set(1.0);
        self.inner.paused_until_ms.store(0, Ordering::Relaxed);
        if !self.inner.available.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis answers again: order cache and shared rate limits back on");
        }
    }

    fn down(&self, error: &dyn std::error::Error) {
        metrics::gauge!("cache_available").set(0.0);
        let until = self.now_ms() + DOWN_PAUSE.as_millis() as u64;
        self.inner.paused_until_ms.store(until, Ordering::Relaxed);
        if self.inner.available.swap(false, Ordering::Relaxed) {
            tracing::warn!(%error, "Redis unavailable: reads go to the database, rate limits are per instance, until it answers");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use platform::config::Env;

    use crate::Config;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, platform::config::ConfigError> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from(&Env::from_map("SALES_", vars))
    }

    #[test]
    fn redis_and_rate_limits_default_to_the_documented_values() {
        let config = config(&[]).expect("defaults are valid");
        assert_eq!(config.cache.url, None);
        assert_eq!(config.cache.key_prefix, "sales:");
        assert_eq!(config.cache.order_ttl.as_secs(), 300);
        assert_eq!(config.cache.timeout.as_millis(), 200);
        assert_eq!(config.rate_limit.per_second, 50.0);
        assert_eq!(config.rate_limit.burst, 100);
    }

    #[test]
    fn redis_and_rate_limit_settings_are_validated() {
        let err = config(&[("SALES_REDIS_URL", "http://nope")]).expect_err("not redis://");
        assert_eq!(err.variable, "SALES_REDIS_URL");
        assert!(!err.message.contains("nope"), "the URL may hold a password");
        let err = config(&[("SALES_RATE_LIMIT_PER_SECOND", "-1")]).expect_err("negative");
        assert_eq!(err.variable, "SALES_RATE_LIMIT_PER_SECOND");
        let err = config(&[("SALES_RATE_LIMIT_BURST", "0")]).expect_err("zero burst");
        assert_eq!(err.variable, "SALES_RATE_LIMIT_BURST");
        let err = config(&[("SALES_REDIS_ORDER_TTL_SECS", "0")]).expect_err("zero TTL");
        assert_eq!(err.variable, "SALES_REDIS_ORDER_TTL_SECS");
        let config = config(&[
            ("SALES_REDIS_URL", "redis://user:secret@127.0.0.1:6379/2"),
            ("SALES_RATE_LIMIT_PER_SECOND", "0.5"),
            ("SALES_RATE_LIMIT_BURST", "3"),
        ])
        .expect("valid");
        assert!(config.cache.url.is_some());
        assert!(
            !format!("{config:?}").contains("secret"),
            "Debug hides the URL"
        );
        assert_eq!(
            (config.rate_limit.per_second, config.rate_limit.burst),
            (0.5, 3)
        );
        let off = self::config(&[("SALES_RATE_LIMIT_PER_SECOND", "0")]).expect("0 turns it off");
        assert!(!off.rate_limit.enabled());
    }
}
