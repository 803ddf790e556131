//! The two hooks failsafe's `StateMachine` calls: our [`FailurePolicy`] (the rolling window and
//! the opossum trip rule) and our [`Instrument`] (observable state, counters, transition logs).
//!
//! Both run while the breaker's gate lock is held (see `super::Inner`), so the state they publish
//! is the state machine's state whenever the gate is taken.
//!
//! [`Meters`] are the breaker's Prometheus series (`circuit_breaker_state{breaker}`,
//! `circuit_breaker_calls_total{breaker,outcome}`), registered once per breaker so a call
//! costs an atomic add, not a lookup by name.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use failsafe::{FailurePolicy, Instrument, clock};
use parking_lot::Mutex;

use super::{BreakerConfig, BreakerState, window::Counts, window::RollingWindow};

/// failsafe computes `now + delay` unchecked; a longer reset timeout than this is treated as this.
const MAX_RESET_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// What the breaker, its policy and its instrument share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: BreakerConfig,
    /// `config.reset_timeout`, bounded so the state machine's clock arithmetic cannot overflow.
    pub(crate) reset_timeout: Duration,
    pub(crate) window: Mutex<RollingWindow>,
    state: AtomicU8,
    /// Bumped on every state change, so a permit can tell it outlived the state it was given in.
    epoch: AtomicU64,
    /// When the current open period ends; `None` unless open.
    open_until: Mutex<Option<Instant>>,
    pub(crate) rejected_total: AtomicU64,
    pub(crate) opened_total: AtomicU64,
    pub(crate) meters: Meters,
}

/// The breaker's metric handles. Taken from the global `metrics` recorder when the breaker is
/// built: without one (or before one is installed) they are no-ops.
#[derive(Debug)]
pub(crate) struct Meters {
    state: metrics::Gauge,
    pub(crate) successes: metrics::Counter,
    pub(crate) failures: metrics::Counter,
    pub(crate) rejections: metrics::Counter,
}

impl Meters {
    fn new(breaker: &str) -> Self {
        let calls = |outcome: &'static str| metrics::counter!("circuit_breaker_calls_total", "breaker" => breaker.to_owned(), "outcome" => outcome);
        let meters = Meters {
            state: metrics::gauge!("circuit_breaker_state", "breaker" => breaker.to_owned()),
            successes: calls("success"),
            failures: calls("failure"),
            rejections: calls("rejected"),
        };
        meters.set_state(BreakerState::Closed);
        meters
    }

    /// 0 closed, 1 open, 2 half-open.
    fn set_state(&self, state: BreakerState) {
        self.state.set(match state {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        });
    }
}

impl Shared {
    pub(crate) fn new(config: BreakerConfig, now: Instant) -> Self {
        Shared {
            meters: Meters::new(&config.name),
            reset_timeout: config.reset_timeout.min(MAX_RESET_TIMEOUT),
            window: Mutex::new(RollingWindow::new(
                config.rolling_count_timeout,
                config.rolling_count_buckets,
                now,
            )),
            config,
            state: AtomicU8::new(BreakerState::Closed as u8),
            epoch: AtomicU64::new(0),
            open_until: Mutex::new(None),
            rejected_total: AtomicU64::new(0),
            opened_total: AtomicU64::new(0),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            s if s == BreakerState::Open as u8 => BreakerState::Open,
            s if s == BreakerState::HalfOpen as u8 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn open_until(&self) -> Option<Instant> {
        *self.open_until.lock()
    }

    /// Publishes `state`; returns the previous one.
    fn set_state(&self, state: BreakerState) -> BreakerState {
        let previous = self.state.swap(state as u8, Ordering::AcqRel);
        if previous != state as u8 {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.meters.set_state(state);
        match previous {
            p if p == BreakerState::Open as u8 => BreakerState::Open,
            p if p == BreakerState::HalfOpen as u8 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    fn counts(&self, now: Instant) -> Counts {
        self.window.lock().counts(now)
    }
}

/// opossum's rule: at least `volume_threshold` calls in the window, and a failure percentage
/// strictly above `error_threshold_percentage` (exact integer arithmetic, so 50 % does not exceed 50).
pub(crate) fn trips(
    counts: Counts,
    error_threshold_percentage: u32,
    volume_threshold: u32,
) -> bool {
    let calls = u128::from(counts.calls());
    calls >= u128::from(volume_threshold)
        && calls > 0
        && u128::from(counts.failures) * 100 > u128::from(error_threshold_percentage) * calls
}

/// Decides, on each failure while closed, whether the breaker opens (and for how long).
#[derive(Debug)]
pub(crate) struct RollingPolicy(pub(crate) Arc<Shared>);

impl FailurePolicy for RollingPolicy {
    fn record_success(&mut self) {
        self.0.window.lock().record_success(clock::now());
    }

    fn mark_dead_on_failure(&mut self) -> Option<Duration> {
        let counts = self.0.window.lock().record_failure(clock::now());
        let config = &self.0.config;
        trips(
            counts,
            config.error_threshold_percentage,
            config.volume_threshold,
        )
        .then_some(self.0.reset_timeout)
    }

    fn revived(&mut self) {
        self.0.window.lock().reset();
    }
}

/// Publishes the state machine's transitions.
#[derive(Debug)]
pub(crate) struct Observer(pub(crate) Arc<Shared>);

impl Instrument for Observer {
    fn on_call_rejected(&self) {
        self.0.rejected_total.fetch_add(1, Ordering::Relaxed);
        self.0.meters.rejections.increment(1);
    }

    fn on_open(&self) {
        let shared = &self.0;
        let now = clock::now();
        *shared.open_until.lock() = Some(now + shared.reset_timeout);
        shared.opened_total.fetch_add(1, Ordering::Relaxed);
        let previous = shared.set_state(BreakerState::Open);
        let counts = shared.counts(now);
        tracing::warn!(
            breaker = %shared.config.name,
            from = previous.as_str(),
            failures = counts.failures,
            successes = counts.successes,
            error_threshold_percentage = shared.config.error_threshold_percentage,
            volume_threshold = shared.config.volume_threshold,
            reset_timeout_ms = u64::try_from(shared.reset_timeout.as_millis()).unwrap_or(u64::MAX),
            "circuit breaker opened"
        );
    }

    fn on_half_open(&self) {
        let shared = &self.0;
        *shared.open_until.lock() = None;
        shared.set_state(BreakerState::HalfOpen);
        tracing::info!(breaker = %shared.config.name, "circuit breaker half-open: letting one trial call through");
    }

    fn on_closed(&self) {
        let shared = &self.0;
        *shared.open_until.lock() = None;
        // The state machine also reports `closed` when it is created; that is no transition.
        if shared.set_state(BreakerState::Closed) != BreakerState::Closed {
            tracing::info!(breaker = %shared.config.name, "circuit breaker closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(successes: u64, failures: u64) -> Counts {
        Counts {
            successes,
            failures,
        }
    }

    #[test]
    fn trip_rule_is_strictly_greater_and_needs_volume() {
        assert!(
            !trips(counts(5, 5), 50, 10),
            "exactly 50 % does not exceed 50"
        );
        assert!(trips(counts(5, 6), 50, 10));
        assert!(trips(counts(49, 51), 50, 10));
        assert!(!trips(counts(0, 9), 50, 10), "below the volume threshold");
        assert!(trips(counts(0, 10), 50, 10));
        assert!(!trips(counts(0, 0), 0, 0), "no calls, no trip");
        assert!(!trips(counts(0, 10), 100, 0), "100 % can never be exceeded");
        assert!(trips(counts(u64::MAX, u64::MAX), 40, 0), "no overflow");
    }
}
