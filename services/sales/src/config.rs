//! Settings of the sales service, from `SALES_*` environment variables.

use std::time::Duration;

use platform::config::{ConfigError, DatabaseConfig, Env, ServerConfig};
use resilience::BreakerConfig;

/// Every setting of the sales service.
#[derive(Debug, Clone)]
pub struct Config {
    /// `SALES_LISTEN_ADDR` (default `127.0.0.1:8080`) and the other server settings.
    pub server: ServerConfig,
    /// `SALES_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/sales`) and pool settings.
    pub database: DatabaseConfig,
    /// The staff console and staff sessions, see [`ConsoleConfig`]. (Staff
    /// credentials are per person, made by `sales staff add`; there is no shared token.)
    pub console: ConsoleConfig,
    /// `SALES_PRODUCT_SERVICE_TOKEN` (no default): the bearer token sales sends on every
    /// call to product (one of product's `PRODUCT_SERVICE_TOKEN`). Never logged.
    pub product_service_token: Option<String>,
    /// `SALES_DELIVERY_SERVICE_TOKEN` (no default): the bearer token sales sends on every
    /// call to delivery (one of delivery's `DELIVERY_SERVICE_TOKEN`). Never logged.
    pub delivery_service_token: Option<String>,
    /// `SALES_PRODUCT_URL` (default `http://127.0.0.1:8081`).
    pub product_url: String,
    /// `SALES_DELIVERY_URL` (default `http://127.0.0.1:8082`).
    pub delivery_url: String,
    /// `SALES_HTTP_CONNECT_TIMEOUT_MS` (default 1000): connecting to product or delivery.
    pub http_connect_timeout: Duration,
    /// `SALES_HTTP_REQUEST_TIMEOUT_MS` (default 3000): a whole call to product or delivery.
    pub http_request_timeout: Duration,
    /// The breakers, see [`Breakers`].
    pub breakers: Breakers,
    /// Caps on concurrent calls to each dependency, see [`Bulkheads`].
    pub bulkheads: Bulkheads,
    /// The delivery retry worker, see [`DeliveryRetryConfig`].
    pub delivery_retry: DeliveryRetryConfig,
    /// The outbox relay to SNS, see [`OutboxConfig`].
    pub outbox: OutboxConfig,
    /// `SALES_SAGA_LEASE_MS` (default 30000): how long a running saga is held by its
    /// instance before another may recover it (renewed while it runs).
    pub saga_lease: Duration,
    /// `SALES_SAGA_RECOVERY_INTERVAL_MS` (default 30000): how often sagas left running by a
    /// crashed instance are looked for (also once at start-up).
    pub saga_recovery_interval: Duration,
    /// The reconciliation job, see [`ReconciliationConfig`].
    pub reconciliation: ReconciliationConfig,
    /// Following delivery's status events, see [`DeliveryEventsConfig`].
    pub delivery_events: DeliveryEventsConfig,
    /// The availability re-check of fallback orders, see [`AvailabilityRecheckConfig`].
    pub availability_recheck: AvailabilityRecheckConfig,
    /// Redis and the order cache, see [`CacheConfig`].
    pub cache: CacheConfig,
    /// Per-client rate limits of the customer endpoints, see [`RateLimitConfig`].
    pub rate_limit: RateLimitConfig,
    /// The reliability alert checker, see [`AlertsConfig`].
    pub alerts: AlertsConfig,
    /// The reservation keeper, see [`KeeperConfig`].
    pub reservation_keeper: KeeperConfig,
    /// `SALES_FAULT_PAUSE_BEFORE_RECORD_MS` (default 0): fault injection for tests, a pause
    /// between the reservation and the order's transaction (to kill the process there).
    pub fault_pause_before_record: Duration,
}

/// The reservation keeper's settings (`workers::reservation_keeper`).
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    /// `SALES_RESERVATION_KEEPER_INTERVAL_MS` (default 60000): time between rounds.
    pub interval: Duration,
    /// `SALES_RESERVATION_RENEW_AFTER_MS` (default 300000 = 5 min, a third of product's
    /// default TTL): an order's reservation is renewed once its `ORDER_CREATED` has waited
    /// this long, and again every round after.
    pub renew_after: Duration,
}

/// The staff console (`http::console`).
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// `SALES_CONSOLE_IDLE_TIMEOUT_MS` (default 1800000, 30 minutes): a session unused this
    /// long is over.
    pub idle_timeout: Duration,
    /// `SALES_CONSOLE_SECURE_COOKIE` (default true): the session cookie is `Secure` (sent
    /// over HTTPS only); set false to use the console over plain HTTP on localhost.
    pub secure_cookie: bool,
    /// `SALES_CONSOLE_LOGIN_ATTEMPTS_PER_MINUTE` (default 5): sign-in attempts allowed per
    /// staff name (and 10 times as many in all) each minute; more are refused until then.
    pub login_attempts_per_minute: u32,
}

/// The reliability alert checker (`workers::alerts`).
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// `SALES_ALERTS_INTERVAL_MS` (default 30000): time between evaluations.
    pub interval: Duration,
    /// `SALES_ALERTS_OUTBOX_BACKLOG_THRESHOLD` (default 100): `OUTBOX_BACKLOG` while more
    /// outbox rows than this are pending.
    pub outbox_backlog: i64,
    /// `SALES_ALERTS_REVIEW_BACKLOG_THRESHOLD` (default 50): `MANUAL_REVIEW_BACKLOG` while
    /// more manual reviews than this are open.
    pub review_backlog: i64,
    /// `SALES_ALERTS_OUTBOX_STALLED_SECS` (default 300): `OUTBOX_STALLED` while the oldest
    /// pending outbox row is older than this, however few rows are pending.
    pub outbox_stalled: Duration,
    /// `SALES_ALERTS_WEBHOOK_URL` (default unset): alerts raised and resolved are also POSTed
    /// here as JSON, best-effort.
    pub webhook_url: Option<String>,
    /// `SALES_ALERTS_WEBHOOK_TIMEOUT_MS` (default 2000): longest wait for the webhook.
    pub webhook_timeout: Duration,
}

/// Redis (`cache`): the order cache, and the rate limits' shared store.
#[derive(Clone)]
pub struct CacheConfig {
    /// `SALES_REDIS_URL` (default unset: no cache, rate limits per instance), e.g.
    /// `redis://127.0.0.1:6379`. May hold a password: never logged.
    pub url: Option<String>,
    /// `SALES_REDIS_KEY_PREFIX` (default `sales:`): prefix of every key this service writes.
    pub key_prefix: String,
    /// `SALES_REDIS_ORDER_TTL_SECS` (default 300): life of a cached order.
    pub order_ttl: Duration,
    /// `SALES_REDIS_TIMEOUT_MS` (default 200): connecting to Redis, and each answer.
    pub timeout: Duration,
}

impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("key_prefix", &self.key_prefix)
            .field("order_ttl", &self.order_ttl)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Per-client rate limits (`rate_limit`).
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// `SALES_RATE_LIMIT_PER_SECOND` (default 50; decimals allowed, e.g. 0.5): sustained
    /// requests per second per client; `0` turns rate limiting off.
    pub per_second: f64,
    /// `SALES_RATE_LIMIT_BURST` (default 100): requests a client may send at once.
    pub burst: u32,
    /// `SALES_RATE_LIMIT_TRUSTED_PROXY_HOPS` (default 0): proxies (load balancer,
    /// ingress) in front of sales that append to `X-Forwarded-For`; a client without
    /// an API key is then the address the outermost of them saw, not the proxy's.
    pub trusted_proxy_hops: usize,
}

impl RateLimitConfig {
    pub fn enabled(&self) -> bool {
        self.per_second > 0.0
    }
}

fn redis_url(env: &Env) -> Result<Option<String>, ConfigError> {
    let Some(url) = env.optional("REDIS_URL") else {
        return Ok(None);
    };
    match redis::Client::open(url.as_str()) {
        Ok(_) if url.starts_with("redis://") || url.starts_with("redis+unix://") => Ok(Some(url)),
        // The value is not echoed: it may hold a password.
        _ => Err(ConfigError {
            variable: env.name("REDIS_URL"),
            message: "must be a redis:// URL, e.g. redis://127.0.0.1:6379".into(),
        }),
    }
}

/// A token sales sends: one bearer token (visible ASCII, no comma: rotation lists
/// several on the receiving side, never here). The value is not echoed.
fn service_token(env: &Env, key: &str) -> Result<Option<String>, ConfigError> {
    let Some(token) = env.optional(key).map(|t| t.trim().to_owned()) else {
        return Ok(None);
    };
    if token.is_empty() {
        return Ok(None);
    }
    if !token.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err(ConfigError {
            variable: env.name(key),
            message: "must be one token of visible ASCII characters, without commas".into(),
        });
    }
    Ok(Some(token))
}

fn per_second(env: &Env) -> Result<f64, ConfigError> {
    let rate: f64 = env.parse("RATE_LIMIT_PER_SECOND", 50.0)?;
    if !rate.is_finite() || rate < 0.0 {
        return Err(ConfigError {
            variable: env.name("RATE_LIMIT_PER_SECOND"),
            message: format!("must be 0 (off) or a positive number, got {rate}"),
        });
    }
    Ok(rate)
}

/// The job comparing orders with delivery's authoritative status: the safety net.
///
/// Sales follows delivery's `DELIVERY_STATUS_CHANGED` events (see [`DeliveryEventsConfig`]),
/// so an order shows its delivery's status within a second; reconciliation only catches
/// what a lost or late event left behind (an event discarded as a dead letter, a queue
/// that was purged, a consumer switched off). Its defaults say so: an order is looked at
/// only once it has not changed for 30 minutes (longer than any broker outage the outbox
/// rides out without help, so a run does not race the events on their way), and a run
/// every 10 minutes bounds how long a lost event shows the wrong status (about 40
/// minutes), at a cost of one delivery call per such order instead of one per order.
#[derive(Debug, Clone)]
pub struct ReconciliationConfig {
    /// `SALES_RECONCILIATION_ENABLED` (default true): run the job. Off, nothing corrects an
    /// order whose delivery event was lost (tests that must see the events do the work).
    pub enabled: bool,
    /// `SALES_RECONCILIATION_INTERVAL_MS` (default 600000 = 10 min): time between runs.
    /// `/health/reliability` reports DEGRADED when no run finished for two intervals.
    pub interval: Duration,
    /// `SALES_RECONCILIATION_STALE_AFTER_MS` (default 1800000 = 30 min; 0 allowed): an order
    /// pending shipment or shipped is checked once it has not changed for this long
    /// (flagged orders are checked every run).
    pub stale_after: Duration,
    /// `SALES_RECONCILIATION_STALE_SHIPMENT_REVIEW_AFTER_MS` (default 259200000 = 72 h): an
    /// order still pending shipment, unchanged this long, while its delivery is not picked
    /// up either, goes to manual review (`STALE_PENDING_SHIPMENT`).
    pub stale_shipment_review_after: Duration,
    /// `SALES_RECONCILIATION_BATCH` (default 100): most orders checked per run, least
    /// recently checked first.
    pub batch: i64,
    /// `SALES_RECONCILIATION_RUN_RETENTION_MS` (default 2592000000 = 30 days): run records
    /// older than this are deleted.
    pub run_retention: Duration,
}

/// The SQS consumer of delivery's `DELIVERY_STATUS_CHANGED` events
/// (`workers::delivery_events`). Endpoint, region and credentials come from the standard
/// AWS environment (`AWS_ENDPOINT_URL` for LocalStack).
#[derive(Debug, Clone)]
pub struct DeliveryEventsConfig {
    /// `SALES_DELIVERY_EVENTS_ENABLED` (default false): follow delivery's events.
    pub enabled: bool,
    /// `SALES_DELIVERY_EVENTS_PROVISION` (default false): create delivery's topic, the queue,
    /// its DLQ and the filtered subscription at start (dev/test; production provisions them
    /// beforehand).
    pub provision: bool,
    /// `SALES_DELIVERY_EVENTS_TOPIC_NAME` (default `delivery-events`): delivery's topic
    /// (`DELIVERY_BROKER_TOPIC_NAME`).
    pub topic_name: String,
    /// `SALES_DELIVERY_EVENTS_QUEUE_NAME` (default `sales-delivery-events`); its DLQ is
    /// `<name>-dlq`. Its subscription delivers `DELIVERY_STATUS_CHANGED` except status
    /// `CREATED`.
    pub queue_name: String,
    /// `SALES_DELIVERY_EVENTS_MAX_RECEIVE_COUNT` (default 5): receives before a message goes
    /// to the DLQ.
    pub max_receive_count: i32,
    /// `SALES_DELIVERY_EVENTS_VISIBILITY_TIMEOUT_SECS` (default 30).
    pub visibility_timeout_secs: i32,
    /// `SALES_DELIVERY_EVENTS_WAIT_TIME_SECS` (default 10): SQS long-poll wait.
    pub wait_time_secs: i32,
}

/// The worker reserving, once product answers again, the items of orders
/// accepted on the availability fallback.
#[derive(Debug, Clone)]
pub struct AvailabilityRecheckConfig {
    /// `SALES_AVAILABILITY_RECHECK_INTERVAL_MS` (default 10000): time between rounds (while
    /// product's breaker is open, a round comes as soon as it lets a trial through).
    pub interval: Duration,
    /// `SALES_AVAILABILITY_RECHECK_BATCH` (default 100): most orders per round, oldest first;
    /// a full round is followed by another at once.
    pub batch: i64,
    /// `SALES_AVAILABILITY_RECHECK_CONCURRENCY` (default 8): orders asked about at once.
    pub concurrency: usize,
    /// `SALES_AVAILABILITY_RECHECK_WAKE` (default true): an order accepted on the fallback
    /// wakes the worker, which then follows product's breaker (a round as soon as it lets a
    /// trial through). Off, rounds come every interval only (tests that drive rounds
    /// themselves).
    pub wake: bool,
}

/// The outbox relay publishing sales' events to SNS: the `outbox` crate's settings, read
/// from `SALES_BROKER_*` and `SALES_OUTBOX_*` (topic default `sales-events`).
pub use outbox::Config as OutboxConfig;

/// Circuit breakers of sales' dependencies (the numbers of docs/architecture.md). Each reads
/// `SALES_BREAKER_{DEP}_ERROR_THRESHOLD_PERCENTAGE`, `_RESET_TIMEOUT_MS`,
/// `_VOLUME_THRESHOLD` and `_CALL_TIMEOUT_MS`, with `{DEP}` one of `PRODUCT`,
/// `DELIVERY`, `DATABASE`; all share `SALES_BREAKER_ROLLING_WINDOW_MS` (10000)
/// and `SALES_BREAKER_ROLLING_BUCKETS` (10).
#[derive(Debug, Clone)]
pub struct Breakers {
    /// `product-service`: 50 %, 30 s, volume 10, call timeout 3 s.
    pub product: BreakerConfig,
    /// `delivery-service`: 40 %, 60 s, volume 5, call timeout 3 s.
    pub delivery: BreakerConfig,
    /// `database`: 60 %, 20 s, volume 10, call timeout 5 s.
    pub database: BreakerConfig,
    /// `broker` (SNS, `{DEP}` = `BROKER`): 50 %, 30 s, volume 5, call timeout 5 s.
    pub broker: BreakerConfig,
}

/// Caps on the calls in flight to each of sales' dependencies (bulkheads). A call over the
/// cap is refused at once and takes the path of an open breaker (product: the fallback;
/// delivery: the durable retry; Redis: the database), so a dependency that hangs while its
/// breaker is still closed ties up at most this many requests. The broker's cap is
/// `SALES_OUTBOX_MAX_IN_FLIGHT` (the relay is its only caller).
#[derive(Debug, Clone)]
pub struct Bulkheads {
    /// `SALES_BULKHEAD_PRODUCT_MAX_CONCURRENT` (default 64).
    pub product: usize,
    /// `SALES_BULKHEAD_DELIVERY_MAX_CONCURRENT` (default 64).
    pub delivery: usize,
    /// `SALES_BULKHEAD_REDIS_MAX_CONCURRENT` (default 128).
    pub redis: usize,
}

/// The worker re-initiating deliveries that failed inline.
#[derive(Debug, Clone)]
pub struct DeliveryRetryConfig {
    /// `SALES_DELIVERY_RETRY_POLL_INTERVAL_MS` (default 5000): how often due retries are looked for.
    pub poll_interval: Duration,
    /// `SALES_DELIVERY_RETRY_FIRST_DELAY_MS` (default 60000): delay before the first retry.
    pub first_delay: Duration,
    /// `SALES_DELIVERY_RETRY_MAX_DELAY_MS` (default 300000): cap of the exponential backoff.
    pub max_delay: Duration,
    /// `SALES_DELIVERY_RETRY_MAX_ATTEMPTS` (default 20): then a manual review.
    pub max_attempts: i32,
    /// `SALES_DELIVERY_RETRY_MAX_AGE_MS` (default 86400000 = 24 h): then a manual review.
    pub max_age: Duration,
    /// `SALES_DELIVERY_RETRY_BATCH` (default 20): rows claimed per step.
    pub batch: i64,
    /// `SALES_DELIVERY_RETRY_CONCURRENCY` (default 8): claimed rows attempted at once.
    pub concurrency: usize,
    /// `SALES_DELIVERY_RETRY_LEASE_MS` (default 30000): a claimed row is invisible to other
    /// instances this long; if its worker dies, another takes it over after that.
    pub lease: Duration,
}

fn breaker(
    env: &Env,
    dep: &str,
    name: &str,
    (threshold, reset_ms, volume, call_timeout_ms): (u32, u64, u32, u64),
) -> Result<BreakerConfig, ConfigError> {
    let key = |k: &str| format!("BREAKER_{dep}_{k}");
    let threshold: u32 = env.positive(&key("ERROR_THRESHOLD_PERCENTAGE"), threshold)?;
    if threshold > 100 {
        return Err(ConfigError {
            variable: env.name(&key("ERROR_THRESHOLD_PERCENTAGE")),
            message: format!("must be a percentage from 1 to 100, got {threshold}"),
        });
    }
    let mut config = BreakerConfig::new(
        name,
        threshold,
        env.millis(&key("RESET_TIMEOUT_MS"), reset_ms)?,
        env.positive(&key("VOLUME_THRESHOLD"), volume)?,
        env.millis(&key("CALL_TIMEOUT_MS"), call_timeout_ms)?,
    );
    config.rolling_count_timeout = env.millis("BREAKER_ROLLING_WINDOW_MS", 10_000)?;
    config.rolling_count_buckets = env.positive("BREAKER_ROLLING_BUCKETS", 10)?;
    Ok(config)
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from(&Env::from_process("SALES_"))
    }

    pub fn from(env: &Env) -> Result<Self, ConfigError> {
        Self::read(env)
    }

    fn read(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            server: ServerConfig::from_env(env, "127.0.0.1:8080")?,
            database: DatabaseConfig::from_env(env, "postgres://postgres@127.0.0.1:5432/sales")?,
            console: ConsoleConfig {
                idle_timeout: env.millis("CONSOLE_IDLE_TIMEOUT_MS", 1_800_000)?,
                secure_cookie: env.flag("CONSOLE_SECURE_COOKIE", true)?,
                login_attempts_per_minute: env.positive("CONSOLE_LOGIN_ATTEMPTS_PER_MINUTE", 5)?,
            },
            product_service_token: service_token(env, "PRODUCT_SERVICE_TOKEN")?,
            delivery_service_token: service_token(env, "DELIVERY_SERVICE_TOKEN")?,
            product_url: env.http_url("PRODUCT_URL", "http://127.0.0.1:8081")?,
            delivery_url: env.http_url("DELIVERY_URL", "http://127.0.0.1:8082")?,
            http_connect_timeout: env.millis("HTTP_CONNECT_TIMEOUT_MS", 1_000)?,
            http_request_timeout: env.millis("HTTP_REQUEST_TIMEOUT_MS", 3_000)?,
            breakers: Breakers {
                product: breaker(env, "PRODUCT", "product-service", (50, 30_000, 10, 3_000))?,
                delivery: breaker(env, "DELIVERY", "delivery-service", (40, 60_000, 5, 3_000))?,
                database: breaker(env, "DATABASE", "database", (60, 20_000, 10, 5_000))?,
                broker: breaker(env, "BROKER", "broker", (50, 30_000, 5, 5_000))?,
            },
            bulkheads: Bulkheads {
                product: env.positive("BULKHEAD_PRODUCT_MAX_CONCURRENT", 64)?,
                delivery: env.positive("BULKHEAD_DELIVERY_MAX_CONCURRENT", 64)?,
                redis: env.positive("BULKHEAD_REDIS_MAX_CONCURRENT", 128)?,
            },
            saga_lease: env.millis("SAGA_LEASE_MS", 30_000)?,
            saga_recovery_interval: env.millis("SAGA_RECOVERY_INTERVAL_MS", 30_000)?,
            outbox: OutboxConfig::from_env(env, "sales-events")?,
            reconciliation: ReconciliationConfig {
                enabled: env.flag("RECONCILIATION_ENABLED", true)?,
                interval: env.millis("RECONCILIATION_INTERVAL_MS", 600_000)?,
                stale_after: env.millis_or_zero("RECONCILIATION_STALE_AFTER_MS", 1_800_000)?,
                stale_shipment_review_after: env.millis(
                    "RECONCILIATION_STALE_SHIPMENT_REVIEW_AFTER_MS",
                    3 * 86_400_000,
                )?,
                batch: env.positive("RECONCILIATION_BATCH", 100)?,
                run_retention: env.millis("RECONCILIATION_RUN_RETENTION_MS", 30 * 86_400_000)?,
            },
            delivery_events: DeliveryEventsConfig {
                enabled: env.flag("DELIVERY_EVENTS_ENABLED", false)?,
                provision: env.flag("DELIVERY_EVENTS_PROVISION", false)?,
                topic_name: env.string("DELIVERY_EVENTS_TOPIC_NAME", "delivery-events"),
                queue_name: env.string("DELIVERY_EVENTS_QUEUE_NAME", "sales-delivery-events"),
                max_receive_count: env.positive("DELIVERY_EVENTS_MAX_RECEIVE_COUNT", 5)?,
                visibility_timeout_secs: env
                    .positive("DELIVERY_EVENTS_VISIBILITY_TIMEOUT_SECS", 30)?,
                wait_time_secs: env.in_range("DELIVERY_EVENTS_WAIT_TIME_SECS", 10, 0, 20)?,
            },
            availability_recheck: AvailabilityRecheckConfig {
                interval: env.millis("AVAILABILITY_RECHECK_INTERVAL_MS", 10_000)?,
                batch: env.positive("AVAILABILITY_RECHECK_BATCH", 100)?,
                concurrency: env.positive("AVAILABILITY_RECHECK_CONCURRENCY", 8)?,
                wake: env.flag("AVAILABILITY_RECHECK_WAKE", true)?,
            },
            cache: CacheConfig {
                url: redis_url(env)?,
                key_prefix: env.string("REDIS_KEY_PREFIX", "sales:"),
                order_ttl: env.secs("REDIS_ORDER_TTL_SECS", 300)?,
                timeout: env.millis("REDIS_TIMEOUT_MS", 200)?,
            },
            rate_limit: RateLimitConfig {
                per_second: per_second(env)?,
                burst: env.positive("RATE_LIMIT_BURST", 100)?,
                trusted_proxy_hops: env.parse("RATE_LIMIT_TRUSTED_PROXY_HOPS", 0)?,
            },
            fault_pause_before_record: env.millis_or_zero("FAULT_PAUSE_BEFORE_RECORD_MS", 0)?,
            reservation_keeper: KeeperConfig {
                interval: env.millis("RESERVATION_KEEPER_INTERVAL_MS", 60_000)?,
                renew_after: env.millis("RESERVATION_RENEW_AFTER_MS", 300_000)?,
            },
            alerts: AlertsConfig {
                interval: env.millis("ALERTS_INTERVAL_MS", 30_000)?,
                outbox_backlog: env
                    .parse::<u32>("ALERTS_OUTBOX_BACKLOG_THRESHOLD", 100)?
                    .into(),
                review_backlog: env
                    .parse::<u32>("ALERTS_REVIEW_BACKLOG_THRESHOLD", 50)?
                    .into(),
                outbox_stalled: env.secs("ALERTS_OUTBOX_STALLED_SECS", 300)?,
                webhook_url: match env.optional("ALERTS_WEBHOOK_URL") {
                    Some(_) => Some(env.http_url("ALERTS_WEBHOOK_URL", "")?),
                    None => None,
                },
                webhook_timeout: env.millis("ALERTS_WEBHOOK_TIMEOUT_MS", 2_000)?,
            },
            delivery_retry: DeliveryRetryConfig {
                poll_interval: env.millis("DELIVERY_RETRY_POLL_INTERVAL_MS", 5_000)?,
                first_delay: env.millis("DELIVERY_RETRY_FIRST_DELAY_MS", 60_000)?,
                max_delay: env.millis("DELIVERY_RETRY_MAX_DELAY_MS", 300_000)?,
                max_attempts: env.positive("DELIVERY_RETRY_MAX_ATTEMPTS", 20)?,
                max_age: env.millis("DELIVERY_RETRY_MAX_AGE_MS", 86_400_000)?,
                batch: env.positive("DELIVERY_RETRY_BATCH", 20)?,
                concurrency: env.positive("DELIVERY_RETRY_CONCURRENCY", 8)?,
                lease: env.millis("DELIVERY_RETRY_LEASE_MS", 30_000)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_map(
            "SALES_",
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn breakers_default_to_the_design_numbers() {
        let config = Config::from(&env(&[])).expect("defaults are valid");
        let b = &config.breakers;
        assert_eq!(
            (
                b.delivery.error_threshold_percentage,
                b.delivery.reset_timeout,
                b.delivery.volume_threshold
            ),
            (40, Duration::from_secs(60), 5)
        );
        assert_eq!(
            (
                b.product.error_threshold_percentage,
                b.product.reset_timeout,
                b.product.volume_threshold
            ),
            (50, Duration::from_secs(30), 10)
        );
        assert_eq!(
            (
                b.database.error_threshold_percentage,
                b.database.reset_timeout,
                b.database.volume_threshold
            ),
            (60, Duration::from_secs(20), 10)
        );
        assert_eq!(b.product.name, "product-service");
        assert_eq!(config.delivery_retry.first_delay, Duration::from_secs(60));
        assert_eq!(config.delivery_retry.max_delay, Duration::from_secs(300));
    }

    #[test]
    fn workers_default_to_the_design_numbers_and_accept_zero_staleness() {
        let config = Config::from(&env(&[])).expect("defaults are valid");
        assert!(config.reconciliation.enabled);
        assert_eq!(config.reconciliation.interval, Duration::from_secs(600));
        assert_eq!(
            config.reconciliation.stale_after,
            Duration::from_secs(1_800)
        );
        assert!(!config.delivery_events.enabled);
        assert_eq!(config.delivery_events.topic_name, "delivery-events");
        assert_eq!(config.delivery_events.queue_name, "sales-delivery-events");
        assert_eq!(config.reconciliation.batch, 100);
        assert_eq!(
            config.availability_recheck.interval,
            Duration::from_secs(10)
        );
        let config = Config::from(&env(&[
            ("SALES_RECONCILIATION_STALE_AFTER_MS", "0"),
            ("SALES_RECONCILIATION_INTERVAL_MS", "250"),
        ]))
        .expect("valid");
        assert_eq!(config.reconciliation.stale_after, Duration::ZERO);
        assert_eq!(config.reconciliation.interval, Duration::from_millis(250));
        let err = Config::from(&env(&[("SALES_AVAILABILITY_RECHECK_INTERVAL_MS", "0")]))
            .expect_err("an interval must be positive");
        assert_eq!(err.variable, "SALES_AVAILABILITY_RECHECK_INTERVAL_MS");
        let err = Config::from(&env(&[("SALES_RECONCILIATION_STALE_AFTER_MS", "-1")]))
            .expect_err("not a number of ms");
        assert_eq!(err.variable, "SALES_RECONCILIATION_STALE_AFTER_MS");
    }

    #[test]
    fn durations_beyond_their_range_are_refused_by_name_not_a_panic_later() {
        for (variable, value) in [
            ("SALES_REDIS_ORDER_TTL_SECS", "99999999999"),
            ("SALES_ALERTS_OUTBOX_STALLED_SECS", "18446744073709551615"),
            (
                "SALES_RECONCILIATION_STALE_AFTER_MS",
                "18446744073709551615",
            ),
            ("SALES_FAULT_PAUSE_BEFORE_RECORD_MS", "2592000001"),
            ("SALES_DELIVERY_EVENTS_WAIT_TIME_SECS", "21"),
        ] {
            let err = Config::from(&env(&[(variable, value)])).expect_err("out of range");
            assert_eq!(err.variable, variable, "{value}");
        }
    }

    #[test]
    fn alert_settings_default_to_the_design_numbers_and_are_validated() {
        let alerts = Config::from(&env(&[])).expect("defaults are valid").alerts;
        assert_eq!(alerts.interval, Duration::from_secs(30));
        assert_eq!((alerts.outbox_backlog, alerts.review_backlog), (100, 50));
        assert_eq!(alerts.outbox_stalled, Duration::from_secs(300));
        assert_eq!(alerts.webhook_url, None);
        let alerts = Config::from(&env(&[
            ("SALES_ALERTS_OUTBOX_BACKLOG_THRESHOLD", "0"),
            ("SALES_ALERTS_WEBHOOK_URL", "http://127.0.0.1:9/hook/"),
        ]))
        .expect("valid")
        .alerts;
        assert_eq!(alerts.outbox_backlog, 0);
        assert_eq!(
            alerts.webhook_url.as_deref(),
            Some("http://127.0.0.1:9/hook")
        );
        let err = Config::from(&env(&[("SALES_ALERTS_WEBHOOK_URL", "not a url")]))
            .expect_err("a bad URL");
        assert_eq!(err.variable, "SALES_ALERTS_WEBHOOK_URL");
        let err = Config::from(&env(&[("SALES_ALERTS_REVIEW_BACKLOG_THRESHOLD", "-1")]))
            .expect_err("negative");
        assert_eq!(err.variable, "SALES_ALERTS_REVIEW_BACKLOG_THRESHOLD");
    }

    #[test]
    fn breaker_settings_are_validated() {
        let err = Config::from(&env(&[(
            "SALES_BREAKER_PRODUCT_ERROR_THRESHOLD_PERCENTAGE",
            "150",
        )]))
        .expect_err("over 100");
        assert_eq!(
            err.variable,
            "SALES_BREAKER_PRODUCT_ERROR_THRESHOLD_PERCENTAGE"
        );
        let config = Config::from(&env(&[("SALES_BREAKER_DELIVERY_RESET_TIMEOUT_MS", "250")]))
            .expect("valid");
        assert_eq!(
            config.breakers.delivery.reset_timeout,
            Duration::from_millis(250)
        );
    }
}
