//! Keeping a service useful while its dependencies fail: circuit breakers with opossum's
//! semantics (built on failsafe's state machine), the backoff arithmetic of every retry loop,
//! overflow-safe deadlines and bulkheads.
//!
//! A breaker wraps each call to one dependency (another service, the database, the broker): it
//! counts failures over a rolling window, opens when their share is too high, rejects calls while
//! open, and after `reset_timeout` lets one trial call decide whether to close again. Timeouts are
//! failures; the caller's classifier says which errors are the dependency's fault.
//!
//! # Layout
//! - [`breaker`]: [`CircuitBreaker`], its [`BreakerConfig`], [`Permit`]s for calls made by hand,
//!   [`CircuitBreaker::call`] with a per-call timeout, [`BreakerSnapshot`]s and the service's
//!   [`Registry`] of named breakers.
//! - [`backoff`]: [`backoff::exponential`] and [`backoff::jittered`], the delays of every retry
//!   loop: those that sleep (the saga's attempts, the SQS consumer's receives) and those that
//!   store their next attempt (the outbox relay's `next_attempt_at`).
//! - [`deadline`]: [`deadline::after`] / [`deadline::before`], the instant a delay away from
//!   another, saturating instead of panicking on a huge delay.
//! - [`bulkhead`]: [`Bulkhead`], a cap on the calls in flight to one dependency; a call over
//!   the cap is refused at once, like one to an open breaker.

pub mod backoff;
pub mod breaker;
pub mod bulkhead;
pub mod deadline;

pub use breaker::{
    BreakerConfig, BreakerSnapshot, BreakerState, CallError, CircuitBreaker, Outcome, Permit,
    Registry, Rejected,
};
pub use bulkhead::{Bulkhead, BulkheadFull, BulkheadPermit};
