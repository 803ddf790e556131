//! The transactional outbox, one implementation for every service that publishes events
//! (sales and delivery): an event is written inside the caller's transaction, so it exists
//! exactly when the change it describes was committed, and a relay publishes it to the
//! service's SNS topic.
//!
//! Each service's database holds its own `outbox_events` table (and `outbox_audit`, and the
//! trigger notifying the `outbox_events` channel on insert: see the `outbox` migrations of
//! sales and delivery, which create the same shape); a service configures the relay with its
//! own [`Config`], read from its own prefix (`SALES_OUTBOX_*`, `DELIVERY_OUTBOX_*`, …).
//!
//! # Layout
//! - [`enqueue`]: append an event in the caller's transaction.
//! - [`Config`]: the relay's settings, from `{PREFIX}BROKER_*` and `{PREFIX}OUTBOX_*`.
//! - [`relay`]: the relay to SNS ([`Relay`]: claim, publish, mark), woken by LISTEN/NOTIFY,
//!   and [`relay::backlog`] (pending/failed counts for health, metrics and alerts).
//! - [`owned`]: the writer's fast path: a row's notification carries it to the process that
//!   wrote it, which publishes it without a claim; its marks ride in later transactions.
//! - [`cleanup`]: retention of SENT rows.
//! - [`dead_letters`]: listing, replaying and discarding FAILED rows, audited.
//! - [`monitor`]: the backlog gauges and alerts of a service without its own alert checker.

pub mod cleanup;
pub mod dead_letters;
pub mod monitor;
pub mod owned;
pub mod relay;

use std::time::Duration;

use platform::config::{ConfigError, Env};
use resilience::BreakerConfig;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

pub use relay::{Relay, RelayReport};

/// Channel the outbox trigger notifies (and a replay notifies, to wake the relay).
pub const CHANNEL: &str = "outbox_events";

/// Appends one PENDING event about `aggregate_type` `aggregate_id` at `aggregate_version`;
/// returns its id (the event id consumers dedup on). The current span's trace context is
/// stored with it, for the relay to continue. When this process runs a relay, the row
/// names it as its owner ([`owned::owner`]): the relay publishes it from its notification,
/// without reading it.
pub async fn enqueue(
    conn: &mut PgConnection,
    aggregate_type: &str,
    aggregate_id: Uuid,
    aggregate_version: i32,
    event_type: &str,
    payload: &impl Serialize,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    let payload = serde_json::to_value(payload).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let trace = sqlx::types::Json(platform::trace_context::current_map());
    sqlx::query!(
        "INSERT INTO outbox_events (id, aggregate_type, aggregate_id, aggregate_version, event_type, payload, trace, owner)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        id,
        aggregate_type,
        aggregate_id,
        aggregate_version,
        event_type,
        payload,
        trace as _,
        owned::owner(),
    )
    .execute(conn)
    .await?;
    Ok(id)
}

/// The outbox relay of one service, publishing its events to its SNS topic. Endpoint,
/// region and credentials come from the standard AWS environment (`AWS_ENDPOINT_URL`).
/// `{PREFIX}` is the service's prefix (`SALES_`, `DELIVERY_`).
#[derive(Debug, Clone)]
pub struct Config {
    /// `{PREFIX}BROKER_ENABLED` (default false): run the relay. Off, events wait in the outbox.
    pub enabled: bool,
    /// `{PREFIX}BROKER_PROVISION` (default false): create the SNS topic at start (dev/test).
    pub provision: bool,
    /// `{PREFIX}BROKER_TOPIC_NAME` (default: the service's, e.g. `sales-events`): the topic
    /// created when provisioning.
    pub topic_name: String,
    /// `{PREFIX}BROKER_TOPIC_ARN`: the topic to publish to when not provisioning (required then).
    pub topic_arn: Option<String>,
    /// `{PREFIX}OUTBOX_POLL_INTERVAL_MS` (default 1000): safety-net poll besides LISTEN/NOTIFY.
    pub poll_interval: Duration,
    /// `{PREFIX}OUTBOX_COALESCE_MS` (default 40; 0 allowed): the relay gathers the
    /// notifications of this long (or until a `PublishBatch` is full), so the events of
    /// commits close together go out in one call. It adds at most this to the lag (the
    /// design's p99 budget is 100 ms) and, at 100 orders/s, makes one call of a few orders'
    /// events instead of one per order: fewer broker requests, and on the benchmark's two
    /// cores 0.4× the emulator's CPU per order of a 10 ms window.
    pub coalesce: Duration,
    /// `{PREFIX}OUTBOX_TAKEOVER_MS` (default 10000; 0 turns the writer's fast path off): a
    /// row is published by the instance that wrote it, from its notification (no claim, no
    /// read); other instances' claims take it only once it is this old and still PENDING
    /// (its writer crashed or could not publish it). Must exceed twice the mark interval.
    pub takeover: Duration,
    /// `{PREFIX}OUTBOX_MARK_INTERVAL_MS` (default 1000): what the writer published is marked
    /// SENT by the service's next transaction that carries marks ([`owned::ride`]: sales'
    /// order transactions); what waited this long for one is marked by the relay, in one
    /// statement (sooner when 1000 wait). A crash loses at most two intervals of marks: those
    /// events are published again (consumers dedup).
    pub mark_interval: Duration,
    /// `{PREFIX}OUTBOX_BATCH_SIZE` (default 100): rows claimed per step.
    pub batch_size: i64,
    /// `{PREFIX}OUTBOX_MAX_IN_FLIGHT` (default 4): concurrent `PublishBatch` calls.
    pub max_in_flight: usize,
    /// `{PREFIX}OUTBOX_MAX_ATTEMPTS` (default 5): refusals of an event by the broker (a
    /// per-entry failure, content it will not take) before it may become FAILED (a dead
    /// letter). The broker being unreachable, slow or failing never counts: an outage of any
    /// length makes no dead letter.
    pub max_attempts: i32,
    /// `{PREFIX}OUTBOX_DEAD_LETTER_MIN_AGE_MS` (default 300000 = 5 min): and not before its
    /// first refusal is this old, so a short burst of refusals (the broker throttling some
    /// entries) never dead-letters an event it takes a minute later.
    pub dead_letter_min_age: Duration,
    /// `{PREFIX}OUTBOX_RETRY_BASE_MS` (default 1000) and `{PREFIX}OUTBOX_RETRY_MAX_MS` (default
    /// 60000): backoff between publish attempts of a row.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// `{PREFIX}OUTBOX_RETENTION_MS` (default 604800000 = 7 days): SENT rows older than this are deleted.
    pub retention: Duration,
    /// `{PREFIX}OUTBOX_CLEANUP_INTERVAL_MS` (default 60000).
    pub cleanup_interval: Duration,
    /// `{PREFIX}OUTBOX_FAULT_PAUSE_BEFORE_MARK_MS` (default 0): fault injection for tests, a
    /// pause between publishing a batch and marking it SENT (to kill the process there).
    pub fault_pause_before_mark: Duration,
}

impl Config {
    /// Reads the settings from `env` (its prefix names the variables); `default_topic` is the
    /// service's topic name. Enabled without provisioning, the topic ARN is required.
    pub fn from_env(env: &Env, default_topic: &str) -> Result<Self, ConfigError> {
        let config = Self {
            enabled: env.flag("BROKER_ENABLED", false)?,
            provision: env.flag("BROKER_PROVISION", false)?,
            topic_name: env.string("BROKER_TOPIC_NAME", default_topic),
            topic_arn: env.optional("BROKER_TOPIC_ARN"),
            poll_interval: env.millis("OUTBOX_POLL_INTERVAL_MS", 1_000)?,
            coalesce: env.millis_or_zero("OUTBOX_COALESCE_MS", 40)?,
            takeover: env.millis_or_zero("OUTBOX_TAKEOVER_MS", 10_000)?,
            mark_interval: env.millis("OUTBOX_MARK_INTERVAL_MS", 1_000)?,
            batch_size: env.positive("OUTBOX_BATCH_SIZE", 100)?,
            max_in_flight: env.positive("OUTBOX_MAX_IN_FLIGHT", 4)?,
            max_attempts: env.positive("OUTBOX_MAX_ATTEMPTS", 5)?,
            dead_letter_min_age: env.millis_or_zero("OUTBOX_DEAD_LETTER_MIN_AGE_MS", 300_000)?,
            retry_base: env.millis("OUTBOX_RETRY_BASE_MS", 1_000)?,
            retry_max: env.millis("OUTBOX_RETRY_MAX_MS", 60_000)?,
            retention: env.millis("OUTBOX_RETENTION_MS", 7 * 86_400_000)?,
            cleanup_interval: env.millis("OUTBOX_CLEANUP_INTERVAL_MS", 60_000)?,
            fault_pause_before_mark: env.millis_or_zero("OUTBOX_FAULT_PAUSE_BEFORE_MARK_MS", 0)?,
        };
        if config.enabled && !config.provision && config.topic_arn.is_none() {
            return Err(ConfigError {
                variable: env.name("BROKER_TOPIC_ARN"),
                message: format!(
                    "required when {} is true and {} is false",
                    env.name("BROKER_ENABLED"),
                    env.name("BROKER_PROVISION")
                ),
            });
        }
        if !config.takeover.is_zero() && config.takeover <= 2 * config.mark_interval {
            return Err(ConfigError {
                variable: env.name("OUTBOX_TAKEOVER_MS"),
                message: format!(
                    "must be 0 (fast path off) or more than twice {}, else other instances \
                     publish rows their writer is about to mark",
                    env.name("OUTBOX_MARK_INTERVAL_MS")
                ),
            });
        }
        Ok(config)
    }
}

/// The `broker` breaker's settings from `{PREFIX}BREAKER_BROKER_ERROR_THRESHOLD_PERCENTAGE`
/// (default 50), `_RESET_TIMEOUT_MS` (30000), `_VOLUME_THRESHOLD` (5), `_CALL_TIMEOUT_MS`
/// (5000) and `{PREFIX}BREAKER_ROLLING_WINDOW_MS` (10000) / `_ROLLING_BUCKETS` (10), for a
/// service whose only breaker is the relay's.
pub fn broker_breaker(env: &Env) -> Result<BreakerConfig, ConfigError> {
    let threshold: u32 = env.positive("BREAKER_BROKER_ERROR_THRESHOLD_PERCENTAGE", 50)?;
    if threshold > 100 {
        return Err(ConfigError {
            variable: env.name("BREAKER_BROKER_ERROR_THRESHOLD_PERCENTAGE"),
            message: format!("must be a percentage from 1 to 100, got {threshold}"),
        });
    }
    let mut config = BreakerConfig::new(
        "broker",
        threshold,
        env.millis("BREAKER_BROKER_RESET_TIMEOUT_MS", 30_000)?,
        env.positive("BREAKER_BROKER_VOLUME_THRESHOLD", 5)?,
        env.millis("BREAKER_BROKER_CALL_TIMEOUT_MS", 5_000)?,
    );
    config.rolling_count_timeout = env.millis("BREAKER_ROLLING_WINDOW_MS", 10_000)?;
    config.rolling_count_buckets = env.positive("BREAKER_ROLLING_BUCKETS", 10)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env(prefix: &str, pairs: &[(&str, &str)]) -> Env {
        Env::from_map(
            prefix,
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn each_service_reads_its_own_prefix() {
        let config = Config::from_env(
            &env(
                "DELIVERY_",
                &[
                    ("DELIVERY_OUTBOX_BATCH_SIZE", "7"),
                    ("SALES_OUTBOX_BATCH_SIZE", "9"),
                ],
            ),
            "delivery-events",
        )
        .unwrap();
        assert_eq!(config.batch_size, 7);
        assert_eq!(config.topic_name, "delivery-events");
        assert_eq!(config.max_attempts, 5);
        assert_eq!(config.retention, Duration::from_secs(7 * 86_400));
        assert!(!config.enabled);
    }

    #[test]
    fn enabled_without_provisioning_needs_the_topic_arn() {
        let err = Config::from_env(
            &env("DELIVERY_", &[("DELIVERY_BROKER_ENABLED", "true")]),
            "delivery-events",
        )
        .unwrap_err();
        assert_eq!(err.variable, "DELIVERY_BROKER_TOPIC_ARN");
        assert!(
            err.message.contains("DELIVERY_BROKER_PROVISION"),
            "{}",
            err.message
        );
        let err = Config::from_env(
            &env("DELIVERY_", &[("DELIVERY_OUTBOX_POLL_INTERVAL_MS", "0")]),
            "delivery-events",
        )
        .unwrap_err();
        assert_eq!(err.variable, "DELIVERY_OUTBOX_POLL_INTERVAL_MS");
    }

    #[test]
    fn the_broker_breaker_defaults_to_the_design_numbers() {
        let b = broker_breaker(&env("DELIVERY_", &[])).unwrap();
        assert_eq!(
            (
                b.error_threshold_percentage,
                b.reset_timeout,
                b.volume_threshold
            ),
            (50, Duration::from_secs(30), 5)
        );
        let err = broker_breaker(&env(
            "DELIVERY_",
            &[("DELIVERY_BREAKER_BROKER_ERROR_THRESHOLD_PERCENTAGE", "101")],
        ))
        .unwrap_err();
        assert_eq!(
            err.variable,
            "DELIVERY_BREAKER_BROKER_ERROR_THRESHOLD_PERCENTAGE"
        );
    }
}
