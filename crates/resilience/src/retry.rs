//! Retrying a fallible async call with exponential backoff and jitter (backon).

use std::{future::Future, time::Duration};

use backon::{ExponentialBuilder, Retryable};

use crate::CallError;

/// How often and how patiently to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (0 is treated as 1).
    pub max_attempts: u32,
    /// The delay before the first retry; each later delay doubles.
    pub min_delay: Duration,
    /// The largest delay before jitter. backon's jitter adds up to the same again, so one wait
    /// lies in `[delay, 2 × delay)`.
    pub max_delay: Duration,
}

/// Retries `f` with exponential backoff and jitter while `should_retry(&err)` is true, up to
/// max_attempts in total. Returns the first success, or the last error.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    should_retry: impl Fn(&E) -> bool,
    f: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let retries = usize::try_from(policy.max_attempts.saturating_sub(1)).unwrap_or(usize::MAX);
    let backoff = ExponentialBuilder::default()
        .with_factor(2.0)
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(retries)
        .with_jitter();
    f.retry(backoff)
        .when(|err| should_retry(err))
        .notify(|_, delay| tracing::debug!(?delay, "retrying after a retryable error"))
        .await
}

/// A should_retry for breaker calls: never retries a breaker rejection; retries timeouts and inner
/// errors for which `inner` says so.
pub fn retry_unless_rejected<E>(inner: impl Fn(&E) -> bool) -> impl Fn(&CallError<E>) -> bool {
    move |err| match err {
        CallError::Rejected(_) => false,
        CallError::Timeout(_) => true,
        CallError::Inner(e) => inner(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::time::Instant;

    use super::*;
    use crate::{BreakerConfig, CircuitBreaker, Outcome, Rejected};

    const MS: Duration = Duration::from_millis(1);

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            min_delay: 100 * MS,
            max_delay: 400 * MS,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success() {
        let attempts = AtomicU32::new(0);
        let start = Instant::now();
        let result = retry(
            &policy(5),
            |_: &&str| true,
            || async {
                match attempts.fetch_add(1, Ordering::SeqCst) {
                    0..=2 => Err("unavailable"),
                    n => Ok(n + 1),
                }
            },
        )
        .await;
        assert_eq!(result, Ok(4));
        assert_eq!(attempts.load(Ordering::SeqCst), 4);
        // Waits of 100, 200 and 400 ms, each with up to as much again in jitter.
        let waited = start.elapsed();
        assert!(waited >= 700 * MS && waited < 1_400 * MS, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_max_attempts_with_the_last_error() {
        let attempts = AtomicU32::new(0);
        let result: Result<(), u32> = retry(
            &policy(3),
            |_| true,
            || async { Err(attempts.fetch_add(1, Ordering::SeqCst) + 1) },
        )
        .await;
        assert_eq!(result, Err(3));
        assert_eq!(attempts.load(Ordering::SeqCst), 3);

        let attempts = AtomicU32::new(0);
        let result: Result<(), ()> = retry(
            &policy(0),
            |_| true,
            || async {
                attempts.fetch_add(1, Ordering::SeqCst);
                Err(())
            },
        )
        .await;
        assert_eq!(result, Err(()));
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "0 attempts means one");
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_what_should_retry_refuses() {
        let attempts = AtomicU32::new(0);
        let result: Result<(), u16> = retry(
            &policy(5),
            |status| *status >= 500,
            || async {
                attempts.fetch_add(1, Ordering::SeqCst);
                Err(404)
            },
        )
        .await;
        assert_eq!(result, Err(404));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn never_retries_a_breaker_rejection() {
        let cb = CircuitBreaker::new(BreakerConfig::new(
            "product",
            50,
            Duration::from_secs(30),
            1,
            Duration::from_secs(1),
        ));
        let attempts = AtomicU32::new(0);
        let result: Result<(), CallError<u16>> = retry(
            &policy(5),
            retry_unless_rejected(|status: &u16| *status >= 500),
            || {
                cb.call(
                    |r: &Result<(), u16>| match r {
                        Err(s) if *s >= 500 => Outcome::Failure,
                        _ => Outcome::Success,
                    },
                    || async {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        Err(503)
                    },
                )
            },
        )
        .await;
        // The first 503 trips the breaker (volume 1); the retry is rejected and not retried.
        assert!(result.expect_err("rejected").is_rejected());
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn retry_unless_rejected_classifies() {
        let should = retry_unless_rejected(|status: &u16| *status >= 500);
        let rejected = Rejected {
            breaker: "delivery".into(),
            retry_after: MS,
        };
        assert!(!should(&CallError::Rejected(rejected)));
        assert!(should(&CallError::Timeout(MS)));
        assert!(should(&CallError::Inner(503)));
        assert!(!should(&CallError::Inner(422)));
    }
}
