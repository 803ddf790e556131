//! A circuit breaker with opossum's semantics, built on failsafe's state machine.
//!
//! failsafe's `StateMachine` holds the state (closed → open → half-open) and its timing; what it
//! gets wrong for us is replaced around it:
//! - the failure policy (`policy`) is a rolling window of buckets (`window`) that trips when at
//!   least `volume_threshold` calls were seen and the failure percentage is strictly above
//!   `error_threshold_percentage` (failsafe's own success-rate policy is blind for a whole window);
//! - half-open lets exactly one trial call through (failsafe lets every call through): a gate
//!   lock around the state machine hands out a single trial permit, and only that permit's
//!   outcome may close or re-open the breaker;
//! - a per-call timeout, a caller-supplied classifier, counters and the observable state (also
//!   exported through the `metrics` facade: `circuit_breaker_state{breaker}` and
//!   `circuit_breaker_calls_total{breaker,outcome}`; install a recorder before building breakers).
//!
//! Time comes from `failsafe::clock::now()`, which tests freeze and advance.

mod policy;
mod registry;
mod window;

use std::{
    fmt,
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use failsafe::{StateMachine, clock};
use parking_lot::Mutex;
use serde::Serialize;

use self::policy::{Observer, RollingPolicy, Shared};
pub use self::registry::Registry;

/// `retry_after` when the breaker is half-open and its trial call is still running.
const HALF_OPEN_BUSY_RETRY_AFTER: Duration = Duration::from_millis(100);
/// The smallest `retry_after` handed out, so callers never spin on a zero delay.
const MIN_RETRY_AFTER: Duration = Duration::from_millis(1);

/// How one breaker behaves (opossum's option names, in Rust units).
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Names the breaker in logs, snapshots and rejections (e.g. `delivery`).
    pub name: String,
    /// The breaker opens when the failure percentage in the window is strictly above this.
    pub error_threshold_percentage: u32,
    /// How long the breaker stays open before letting one trial call through.
    pub reset_timeout: Duration,
    /// The fewest calls in the window before the breaker may open at all.
    pub volume_threshold: u32,
    /// The length of the rolling window that successes and failures are counted over.
    pub rolling_count_timeout: Duration,
    /// Into how many buckets the window is split; outcomes leave the window a bucket at a time.
    pub rolling_count_buckets: u32,
    /// How long [`CircuitBreaker::call`] waits for the call before counting it as a failure.
    pub call_timeout: Duration,
}

impl BreakerConfig {
    /// A configuration with opossum's default window: `rolling_count_timeout` = 10 s in
    /// `rolling_count_buckets` = 10 buckets.
    pub fn new(
        name: impl Into<String>,
        error_threshold_percentage: u32,
        reset_timeout: Duration,
        volume_threshold: u32,
        call_timeout: Duration,
    ) -> Self {
        BreakerConfig {
            name: name.into(),
            error_threshold_percentage,
            reset_timeout,
            volume_threshold,
            rolling_count_timeout: Duration::from_secs(10),
            rolling_count_buckets: 10,
            call_timeout,
        }
    }
}

/// The state of a breaker, as its last transition left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BreakerState {
    /// Calls go through; outcomes are counted.
    Closed,
    /// Calls are rejected until the reset timeout has passed.
    Open,
    /// One trial call is let through; its outcome closes or re-opens the breaker.
    HalfOpen,
}

impl BreakerState {
    /// `CLOSED`, `OPEN` or `HALF_OPEN` (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::Open => "OPEN",
            BreakerState::HalfOpen => "HALF_OPEN",
        }
    }
}

/// What a call's result means for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The dependency did its job, or the error is the caller's (4xx, validation, business
    /// rules such as insufficient stock): opossum's `errorFilter`.
    Success,
    /// The dependency is failing (5xx, connection errors, timeouts).
    Failure,
}

/// The breaker refused the call (open, or half-open with its trial in flight).
#[derive(Debug, Clone, thiserror::Error)]
#[error("circuit breaker {breaker} is open")]
pub struct Rejected {
    /// The breaker's name.
    pub breaker: String,
    /// When trying again may succeed: the rest of the open period, or a short delay while a
    /// half-open trial is running. Never below 1 ms.
    pub retry_after: Duration,
}

/// Why [`CircuitBreaker::call`] did not return the call's value.
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// The breaker did not let the call through; the call was not made.
    #[error(transparent)]
    Rejected(Rejected),
    /// The call did not finish within the breaker's `call_timeout` (counted as a failure).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The call's own error (counted as the classifier said).
    #[error(transparent)]
    Inner(E),
}

impl<E> CallError<E> {
    /// Whether the breaker refused the call (so nothing was sent).
    pub fn is_rejected(&self) -> bool {
        matches!(self, CallError::Rejected(_))
    }
}

/// A circuit breaker; clones share the same state.
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    machine: StateMachine<RollingPolicy, Observer>,
    /// Held around every use of `machine`, so the state the instrument publishes is the machine's
    /// state while the gate is held, and so only one trial permit exists per half-open period.
    /// Lock order: gate → machine → window.
    gate: Mutex<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    /// The half-open trial in flight, if any.
    trial: Option<u64>,
    next_trial: u64,
}

#[derive(Debug, Clone, Copy)]
enum PermitKind {
    /// A call let through while closed; counts only if the breaker has not changed state since.
    Normal { epoch: u64 },
    /// The half-open trial call.
    Trial { id: u64 },
    /// Outcome already recorded.
    Spent,
}

impl CircuitBreaker {
    /// A closed breaker with an empty window.
    pub fn new(config: BreakerConfig) -> Self {
        let shared = Arc::new(Shared::new(config, clock::now()));
        let machine = StateMachine::new(
            RollingPolicy(Arc::clone(&shared)),
            Observer(Arc::clone(&shared)),
        );
        CircuitBreaker {
            inner: Arc::new(Inner {
                shared,
                machine,
                gate: Mutex::new(Gate::default()),
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.shared.config.name
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &BreakerConfig {
        &self.inner.shared.config
    }

    /// The state as of the last transition. An open breaker whose reset timeout has passed stays
    /// `Open` until the next call attempt turns it half-open.
    pub fn state(&self) -> BreakerState {
        self.inner.shared.state()
    }

    /// How much longer the breaker stays open: `Some` while open and not yet due for a trial,
    /// otherwise `None`.
    pub fn remaining_open(&self) -> Option<Duration> {
        let shared = &self.inner.shared;
        if shared.state() != BreakerState::Open {
            return None;
        }
        let until = shared.open_until()?;
        let now = clock::now();
        (now < until).then(|| until - now)
    }

    /// Asks to make one call. The permit records the call's outcome; see [`Permit`].
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        let shared = &self.inner.shared;
        let mut gate = self.inner.gate.lock();
        if !self.inner.machine.is_call_permitted() {
            // The instrument has counted the rejection.
            let retry_after = self.remaining_open().unwrap_or(MIN_RETRY_AFTER);
            return Err(self.rejected(retry_after));
        }
        match shared.state() {
            BreakerState::Closed => Ok(self.permit(PermitKind::Normal {
                epoch: shared.epoch(),
            })),
            BreakerState::HalfOpen if gate.trial.is_none() => {
                let id = gate.next_trial;
                gate.next_trial = gate.next_trial.wrapping_add(1);
                gate.trial = Some(id);
                Ok(self.permit(PermitKind::Trial { id }))
            }
            // Half-open with the trial still running (failsafe itself would let this through).
            BreakerState::HalfOpen | BreakerState::Open => {
                shared.rejected_total.fetch_add(1, Ordering::Relaxed);
                shared.meters.rejections.increment(1);
                Err(self.rejected(HALF_OPEN_BUSY_RETRY_AFTER))
            }
        }
    }

    /// Runs `f` through the breaker with the per-call timeout; `classify` sees the result (not
    /// called on timeout). A timeout counts as a failure. If the returned future is dropped
    /// before `f` finishes, nothing is recorded.
    pub async fn call<T, E, F, Fut>(
        &self,
        classify: impl FnOnce(&Result<T, E>) -> Outcome,
        f: F,
    ) -> Result<T, CallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(CallError::Rejected)?;
        let timeout = self.inner.shared.config.call_timeout;
        match tokio::time::timeout(timeout, f()).await {
            Ok(result) => {
                permit.record(classify(&result));
                result.map_err(CallError::Inner)
            }
            Err(_elapsed) => {
                permit.failure();
                tracing::debug!(breaker = %self.name(), ?timeout, "call timed out");
                Err(CallError::Timeout(timeout))
            }
        }
    }

    /// State, window counts and counters, for health and metrics endpoints.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let shared = &self.inner.shared;
        let counts = shared.window.lock().counts(clock::now());
        BreakerSnapshot {
            name: shared.config.name.clone(),
            state: shared.state(),
            successes: counts.successes,
            failures: counts.failures,
            rejected_total: shared.rejected_total.load(Ordering::Relaxed),
            opened_total: shared.opened_total.load(Ordering::Relaxed),
            error_threshold_percentage: shared.config.error_threshold_percentage,
            volume_threshold: shared.config.volume_threshold,
            reset_timeout_ms: u64::try_from(shared.config.reset_timeout.as_millis())
                .unwrap_or(u64::MAX),
        }
    }

    fn permit(&self, kind: PermitKind) -> Permit {
        Permit {
            inner: Arc::clone(&self.inner),
            kind,
        }
    }

    fn rejected(&self, retry_after: Duration) -> Rejected {
        Rejected {
            breaker: self.name().to_owned(),
            retry_after: retry_after.max(MIN_RETRY_AFTER),
        }
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn record(&self, kind: PermitKind, outcome: Outcome) {
        // Every finished call is counted by outcome, even one the window ignores (stale epoch).
        match outcome {
            Outcome::Success => self.shared.meters.successes.increment(1),
            Outcome::Failure => self.shared.meters.failures.increment(1),
        }
        let mut gate = self.gate.lock();
        let state = self.shared.state();
        let counts = match kind {
            PermitKind::Trial { id } => {
                if gate.trial != Some(id) {
                    return;
                }
                gate.trial = None;
                state == BreakerState::HalfOpen
            }
            // A call started before the breaker last changed state says nothing about now: while
            // half-open only the trial may decide, and after a re-close the window starts afresh.
            PermitKind::Normal { epoch } => {
                state == BreakerState::Closed && self.shared.epoch() == epoch
            }
            PermitKind::Spent => false,
        };
        if counts {
            match outcome {
                Outcome::Success => self.machine.on_success(),
                Outcome::Failure => self.machine.on_error(),
            }
        }
    }

    fn abandon(&self, kind: PermitKind) {
        if let PermitKind::Trial { id } = kind {
            let mut gate = self.gate.lock();
            if gate.trial == Some(id) {
                gate.trial = None;
            }
        }
    }
}

/// Permission for one call; record its outcome. Dropping it without one records nothing (and frees
/// a half-open trial slot).
#[must_use = "record the call's outcome with success(), failure() or record()"]
pub struct Permit {
    inner: Arc<Inner>,
    kind: PermitKind,
}

impl Permit {
    /// The call succeeded (or failed in a way that is not the dependency's fault).
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// The dependency failed.
    pub fn failure(self) {
        self.record(Outcome::Failure);
    }

    /// Records `outcome`.
    pub fn record(mut self, outcome: Outcome) {
        let kind = std::mem::replace(&mut self.kind, PermitKind::Spent);
        self.inner.record(kind, outcome);
    }

    /// Whether this is the half-open trial call, whose outcome closes or re-opens the breaker.
    pub fn is_trial(&self) -> bool {
        matches!(self.kind, PermitKind::Trial { .. })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.abandon(self.kind);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.inner.shared.config.name)
            .field("trial", &self.is_trial())
            .finish()
    }
}

/// A breaker's state and counters at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerSnapshot {
    /// The breaker's name.
    pub name: String,
    /// Its state.
    pub state: BreakerState,
    /// Successes in the rolling window.
    pub successes: u64,
    /// Failures in the rolling window.
    pub failures: u64,
    /// Calls refused since the breaker was created.
    pub rejected_total: u64,
    /// Times the breaker opened since it was created.
    pub opened_total: u64,
    /// From the configuration.
    pub error_threshold_percentage: u32,
    /// From the configuration.
    pub volume_threshold: u32,
    /// From the configuration, in milliseconds.
    pub reset_timeout_ms: u64,
}

#[cfg(test)]
mod tests;
