//! Settings of the delivery service, from `DELIVERY_*` environment variables.

use platform::config::{ConfigError, DatabaseConfig, Env, ServerConfig};
use resilience::BreakerConfig;

/// Every setting of the delivery service.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DELIVERY_LISTEN_ADDR` (default `127.0.0.1:8082`) and the other server settings.
    pub server: ServerConfig,
    /// `DELIVERY_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/delivery`) and pool settings.
    pub database: DatabaseConfig,
    /// `DELIVERY_STAFF_TOKEN` (no default): bearer token(s) for courier/ops status
    /// updates, comma-separated.
    pub staff_token: Option<String>,
    /// `DELIVERY_SERVICE_TOKEN` (no default): bearer token(s) of the services allowed to
    /// initiate and cancel deliveries (sales), comma-separated; unset refuses every
    /// caller but staff.
    pub service_token: Option<String>,
    /// The outbox relay publishing `DELIVERY_STATUS_CHANGED` to delivery's SNS topic: the
    /// `outbox` crate's settings from `DELIVERY_BROKER_*` (`DELIVERY_BROKER_ENABLED`,
    /// `_PROVISION`, `_TOPIC_NAME` default `delivery-events`, `_TOPIC_ARN`) and
    /// `DELIVERY_OUTBOX_*` (poll interval, coalesce, batch size, in-flight calls, max
    /// attempts, dead-letter age, retry backoff, retention, cleanup interval), with the same
    /// defaults as sales'.
    pub outbox: outbox::Config,
    /// The `broker` breaker of the relay: `DELIVERY_BREAKER_BROKER_*` (50 %, 30 s, volume 5,
    /// call timeout 5 s) and `DELIVERY_BREAKER_ROLLING_WINDOW_MS`/`_ROLLING_BUCKETS`.
    pub broker_breaker: BreakerConfig,
    /// The outbox's alerts: `DELIVERY_ALERTS_INTERVAL_MS` (default 30000),
    /// `DELIVERY_ALERTS_OUTBOX_BACKLOG_THRESHOLD` (default 100: `OUTBOX_BACKLOG` above it),
    /// `DELIVERY_ALERTS_OUTBOX_STALLED_SECS` (default 300: `OUTBOX_STALLED` while the oldest
    /// pending event is older); any dead letter raises `OUTBOX_DEAD_LETTERS`.
    pub alerts: outbox::monitor::Thresholds,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from(&Env::from_process("DELIVERY_"))
    }

    pub fn from(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            server: ServerConfig::from_env(env, "127.0.0.1:8082")?,
            database: DatabaseConfig::from_env(env, "postgres://postgres@127.0.0.1:5432/delivery")?,
            staff_token: env.optional("STAFF_TOKEN"),
            service_token: env.optional("SERVICE_TOKEN"),
            outbox: outbox::Config::from_env(env, "delivery-events")?,
            broker_breaker: outbox::broker_breaker(env)?,
            alerts: outbox::monitor::Thresholds {
                interval: env.millis("ALERTS_INTERVAL_MS", 30_000)?,
                backlog: env
                    .parse::<u32>("ALERTS_OUTBOX_BACKLOG_THRESHOLD", 100)?
                    .into(),
                stalled: env.secs("ALERTS_OUTBOX_STALLED_SECS", 300)?,
            },
        })
    }
}
