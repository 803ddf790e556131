//! The rolling count window: successes and failures over the last `rolling_count_timeout`,
//! kept in `rolling_count_buckets` buckets so old outcomes are forgotten a bucket at a time
//! (opossum's `rollingCountTimeout` / `rollingCountBuckets`).

use std::time::{Duration, Instant};

/// Successes and failures currently inside the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) successes: u64,
    pub(crate) failures: u64,
}

impl Counts {
    pub(crate) fn calls(self) -> u64 {
        self.successes.saturating_add(self.failures)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket-width slice of time since `origin` these counts belong to.
    tick: u64,
    counts: Counts,
}

/// A ring of buckets indexed by time. A bucket whose `tick` is older than the window is stale: it
/// is ignored when counting and cleared when its slot is reused.
#[derive(Debug)]
pub(crate) struct RollingWindow {
    origin: Instant,
    bucket_nanos: u128,
    buckets: Vec<Bucket>,
}

impl RollingWindow {
    /// `now` is the clock reading the window starts from (the breaker's creation).
    pub(crate) fn new(timeout: Duration, buckets: u32, now: Instant) -> Self {
        let buckets = buckets.max(1);
        // A zero-length window would divide by zero; one nanosecond per bucket forgets at once.
        let bucket_nanos = (timeout.as_nanos() / u128::from(buckets)).max(1);
        RollingWindow {
            origin: now,
            bucket_nanos,
            buckets: vec![Bucket::default(); buckets as usize],
        }
    }

    fn tick(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.bucket_nanos).unwrap_or(u64::MAX)
    }

    fn current(&mut self, now: Instant) -> &mut Bucket {
        let tick = self.tick(now);
        let len = self.buckets.len() as u64;
        let bucket = &mut self.buckets[(tick % len) as usize];
        if bucket.tick != tick {
            *bucket = Bucket {
                tick,
                counts: Counts::default(),
            };
        }
        bucket
    }

    /// Records a success.
    pub(crate) fn record_success(&mut self, now: Instant) {
        let bucket = self.current(now);
        bucket.counts.successes = bucket.counts.successes.saturating_add(1);
    }

    /// Records a failure and returns the counts including it.
    pub(crate) fn record_failure(&mut self, now: Instant) -> Counts {
        let bucket = self.current(now);
        bucket.counts.failures = bucket.counts.failures.saturating_add(1);
        self.counts(now)
    }

    /// The counts of the buckets still inside the window at `now`.
    pub(crate) fn counts(&self, now: Instant) -> Counts {
        let tick = self.tick(now);
        let len = self.buckets.len() as u64;
        self.buckets
            .iter()
            .filter(|b| b.tick <= tick && tick - b.tick < len)
            .fold(Counts::default(), |acc, b| Counts {
                successes: acc.successes.saturating_add(b.counts.successes),
                failures: acc.failures.saturating_add(b.counts.failures),
            })
    }

    /// Forgets everything (the breaker closed again).
    pub(crate) fn reset(&mut self) {
        self.buckets.fill(Bucket::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn counts_within_the_window() {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(10 * SEC, 10, t0);
        w.record_success(t0);
        w.record_failure(t0 + SEC);
        let c = w.record_failure(t0 + 5 * SEC);
        assert_eq!(
            c,
            Counts {
                successes: 1,
                failures: 2
            }
        );
        assert_eq!(c.calls(), 3);
    }

    #[test]
    fn forgets_buckets_older_than_the_window() {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(10 * SEC, 10, t0);
        w.record_failure(t0); // bucket 0
        w.record_failure(t0 + 3 * SEC); // bucket 3
        assert_eq!(w.counts(t0 + 9 * SEC).failures, 2);
        // Bucket 0 leaves the window once bucket 10 begins.
        assert_eq!(w.counts(t0 + 10 * SEC).failures, 1);
        assert_eq!(w.counts(t0 + 13 * SEC).failures, 0);
        // Reusing a stale slot clears it first.
        w.record_success(t0 + 20 * SEC);
        let c = w.counts(t0 + 20 * SEC);
        assert_eq!(
            c,
            Counts {
                successes: 1,
                failures: 0
            }
        );
    }

    #[test]
    fn reset_forgets_everything() {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(10 * SEC, 10, t0);
        w.record_failure(t0);
        w.record_success(t0);
        w.reset();
        assert_eq!(w.counts(t0), Counts::default());
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let t0 = Instant::now();
        let mut w = RollingWindow::new(Duration::ZERO, 0, t0);
        assert_eq!(w.record_failure(t0).failures, 1);
        assert_eq!(w.counts(t0 + Duration::from_nanos(1)).failures, 0);
    }
}
