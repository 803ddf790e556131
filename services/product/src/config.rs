//! Settings of the product service, from `PRODUCT_*` environment variables.

use std::time::Duration;

use platform::config::{ConfigError, DatabaseConfig, Env, ServerConfig};

/// Every setting of the product service.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PRODUCT_LISTEN_ADDR` (default `127.0.0.1:8081`) and the other server settings.
    pub server: ServerConfig,
    /// `PRODUCT_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/product`) and pool settings.
    pub database: DatabaseConfig,
    /// `PRODUCT_STAFF_TOKEN` (no default): bearer token(s) for staff endpoints,
    /// comma-separated; unset disables them.
    pub staff_token: Option<String>,
    /// `PRODUCT_SERVICE_TOKEN` (no default): bearer token(s) of the services allowed to
    /// reserve, commit and release stock (sales), comma-separated; unset refuses every
    /// caller but staff.
    pub service_token: Option<String>,
    /// `PRODUCT_RESERVATION_TTL_MS` (default 900000 = 15 min): an uncommitted reservation's life.
    pub reservation_ttl: Duration,
    /// `PRODUCT_EXPIRY_SWEEP_INTERVAL_MS` (default 5000): how often expired reservations are released.
    pub expiry_sweep_interval: Duration,
    /// `PRODUCT_SEED_DEMO_CATALOG` (default false): insert the demo products at start if missing.
    pub seed_demo_catalog: bool,
    /// Consuming sales' order events, see [`BrokerConfig`].
    pub broker: BrokerConfig,
}

/// The SQS consumer of sales' order events. Endpoint, region and credentials
/// come from the standard AWS environment (`AWS_ENDPOINT_URL` for LocalStack).
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `PRODUCT_BROKER_ENABLED` (default false): consume order events.
    pub enabled: bool,
    /// `PRODUCT_BROKER_PROVISION` (default false): create the topic, queue, DLQ and
    /// subscription at start (dev/test; production provisions them beforehand).
    pub provision: bool,
    /// `PRODUCT_BROKER_TOPIC_NAME` (default `sales-events`).
    pub topic_name: String,
    /// `PRODUCT_BROKER_QUEUE_NAME` (default `product-order-events`); its DLQ is `<name>-dlq`.
    pub queue_name: String,
    /// `PRODUCT_BROKER_MAX_RECEIVE_COUNT` (default 5, 1–1000 as SQS allows): receives before a
    /// message goes to the DLQ.
    pub max_receive_count: i32,
    /// `PRODUCT_BROKER_VISIBILITY_TIMEOUT_SECS` (default 30, at most SQS' 43200 = 12 hours).
    pub visibility_timeout_secs: i32,
    /// `PRODUCT_BROKER_WAIT_TIME_SECS` (default 10, 0–20 as SQS allows): SQS long-poll wait.
    pub wait_time_secs: i32,
    /// `PRODUCT_BROKER_GATHER_MS` (default 200; 0: none): after a receive that did not fill
    /// a batch, the next one waits this long, so a busy queue is received and deleted ten
    /// messages per request rather than one or two (`messaging::ConsumerConfig::gather`).
    /// Nothing a customer waits on rides on these events: the reservation is already held.
    pub gather: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from(&Env::from_process("PRODUCT_"))
    }

    pub fn from(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            server: ServerConfig::from_env(env, "127.0.0.1:8081")?,
            database: DatabaseConfig::from_env(env, "postgres://postgres@127.0.0.1:5432/product")?,
            staff_token: env.optional("STAFF_TOKEN"),
            service_token: env.optional("SERVICE_TOKEN"),
            reservation_ttl: env.millis("RESERVATION_TTL_MS", 15 * 60 * 1000)?,
            expiry_sweep_interval: env.millis("EXPIRY_SWEEP_INTERVAL_MS", 5_000)?,
            seed_demo_catalog: env.flag("SEED_DEMO_CATALOG", false)?,
            broker: BrokerConfig {
                enabled: env.flag("BROKER_ENABLED", false)?,
                provision: env.flag("BROKER_PROVISION", false)?,
                topic_name: env.string("BROKER_TOPIC_NAME", "sales-events"),
                queue_name: env.string("BROKER_QUEUE_NAME", "product-order-events"),
                max_receive_count: env.in_range("BROKER_MAX_RECEIVE_COUNT", 5, 1, 1_000)?,
                visibility_timeout_secs: env.in_range(
                    "BROKER_VISIBILITY_TIMEOUT_SECS",
                    30,
                    1,
                    43_200,
                )?,
                wait_time_secs: env.in_range("BROKER_WAIT_TIME_SECS", 10, 0, 20)?,
                gather: env.millis_or_zero("BROKER_GATHER_MS", 200)?,
            },
        })
    }
}
