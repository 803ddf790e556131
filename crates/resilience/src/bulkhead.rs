//! A bulkhead: a cap on the calls in flight to one dependency, so a dependency that hangs
//! while its breaker is still closed holds at most its share of the caller's tasks and
//! connections. A call over the cap is refused at once ([`BulkheadFull`]) — the caller takes
//! the same path as for an open breaker (fallback, durable retry, wait) — instead of queueing
//! behind the hung calls.
//!
//! Metrics: `bulkhead_in_flight{bulkhead}` (gauge) and `bulkhead_rejected_total{bulkhead}`.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A cap on concurrent calls; clones share it.
#[derive(Clone)]
pub struct Bulkhead {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    max: usize,
    slots: Arc<Semaphore>,
    in_flight: metrics::Gauge,
    rejected: metrics::Counter,
}

/// The call was refused: `max` calls to `bulkhead` are in flight already.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{bulkhead}: {max} calls in flight already (bulkhead full)")]
pub struct BulkheadFull {
    pub bulkhead: String,
    pub max: usize,
}

/// One slot of a bulkhead, given back when dropped.
#[derive(Debug)]
pub struct BulkheadPermit {
    _slot: OwnedSemaphorePermit,
    in_flight: metrics::Gauge,
}

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        self.in_flight.decrement(1.0);
    }
}

impl Bulkhead {
    /// A bulkhead letting at most `max` (at least 1) calls in at once.
    pub fn new(name: impl Into<String>, max: usize) -> Self {
        let name = name.into();
        let max = max.max(1);
        Self {
            inner: Arc::new(Inner {
                in_flight: metrics::gauge!("bulkhead_in_flight", "bulkhead" => name.clone()),
                rejected: metrics::counter!("bulkhead_rejected_total", "bulkhead" => name.clone()),
                slots: Arc::new(Semaphore::new(max)),
                max,
                name,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.max - self.inner.slots.available_permits()
    }

    /// A slot if one is free, else [`BulkheadFull`] at once (never waits).
    pub fn try_enter(&self) -> Result<BulkheadPermit, BulkheadFull> {
        match Arc::clone(&self.inner.slots).try_acquire_owned() {
            Ok(slot) => {
                self.inner.in_flight.increment(1.0);
                Ok(BulkheadPermit {
                    _slot: slot,
                    in_flight: self.inner.in_flight.clone(),
                })
            }
            Err(_) => {
                self.inner.rejected.increment(1);
                tracing::debug!(bulkhead = %self.inner.name, max = self.inner.max, "bulkhead full; call refused");
                Err(BulkheadFull {
                    bulkhead: self.inner.name.clone(),
                    max: self.inner.max,
                })
            }
        }
    }
}

impl std::fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.inner.name)
            .field("max", &self.inner.max)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_over_the_cap_and_frees_slots_on_drop() {
        let bulkhead = Bulkhead::new("peer", 2);
        let a = bulkhead.try_enter().expect("first slot");
        let _b = bulkhead.try_enter().expect("second slot");
        assert_eq!(bulkhead.in_flight(), 2);
        let full = bulkhead.try_enter().expect_err("over the cap");
        assert_eq!(
            full,
            BulkheadFull {
                bulkhead: "peer".into(),
                max: 2
            }
        );
        drop(a);
        assert_eq!(bulkhead.in_flight(), 1);
        assert!(bulkhead.try_enter().is_ok());
    }

    #[test]
    fn clones_share_the_cap_and_zero_means_one() {
        let bulkhead = Bulkhead::new("peer", 0);
        assert_eq!(bulkhead.max(), 1);
        let clone = bulkhead.clone();
        let _held = bulkhead.try_enter().expect("one slot");
        assert!(clone.try_enter().is_err());
    }
}
