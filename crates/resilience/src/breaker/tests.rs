//! Breaker behaviour under a frozen clock (`failsafe::clock::freeze`) and paused tokio time.

use std::{
    sync::{
        Barrier,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use failsafe::clock::{self, MockClock};

use super::*;

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn breaker(
    error_threshold_percentage: u32,
    volume_threshold: u32,
    reset: Duration,
) -> CircuitBreaker {
    CircuitBreaker::new(BreakerConfig::new(
        "delivery",
        error_threshold_percentage,
        reset,
        volume_threshold,
        SEC,
    ))
}

fn acquire(cb: &CircuitBreaker) -> Permit {
    cb.try_acquire()
        .expect("the breaker should let the call through")
}

fn succeed(cb: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        acquire(cb).success();
    }
}

fn fail(cb: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        acquire(cb).failure();
    }
}

fn rejected(cb: &CircuitBreaker) -> Rejected {
    cb.try_acquire()
        .expect_err("the breaker should refuse the call")
}

/// Trips a breaker with volume threshold 1 and returns it open.
fn tripped(reset: Duration) -> CircuitBreaker {
    let cb = breaker(50, 1, reset);
    fail(&cb, 1);
    assert_eq!(cb.state(), BreakerState::Open);
    cb
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

#[test]
fn failures_below_the_volume_threshold_never_trip() {
    clock::freeze(|_| {
        let cb = breaker(50, 10, 30 * SEC);
        fail(&cb, 9);
        assert_eq!(cb.state(), BreakerState::Closed, "9 calls < volume 10");
        fail(&cb, 1);
        assert_eq!(cb.state(), BreakerState::Open);
        let snapshot = cb.snapshot();
        assert_eq!((snapshot.successes, snapshot.failures), (0, 10));
        assert_eq!(snapshot.opened_total, 1);
    });
}

#[test]
fn exactly_the_threshold_does_not_trip_above_it_does() {
    clock::freeze(|_| {
        let cb = breaker(50, 10, 30 * SEC);
        succeed(&cb, 5);
        fail(&cb, 5);
        assert_eq!(cb.state(), BreakerState::Closed, "50 % is not above 50 %");
        fail(&cb, 1);
        assert_eq!(cb.state(), BreakerState::Open, "6/11 = 54.5 % is");

        let cb = breaker(50, 100, 30 * SEC);
        succeed(&cb, 49);
        fail(&cb, 51);
        assert_eq!(cb.state(), BreakerState::Open, "51 % is above 50 %");
    });
}

#[test]
fn successes_never_trip() {
    clock::freeze(|_| {
        let cb = breaker(0, 1, 30 * SEC);
        succeed(&cb, 100);
        assert_eq!(cb.state(), BreakerState::Closed);
    });
}

#[test]
fn the_rolling_window_forgets_old_failures() {
    clock::freeze(|clock| {
        let cb = breaker(50, 5, 30 * SEC);
        fail(&cb, 4);
        clock.advance(10 * SEC);
        assert_eq!(
            cb.snapshot().failures,
            0,
            "the failures left the 10 s window"
        );
        fail(&cb, 1);
        assert_eq!(cb.state(), BreakerState::Closed, "1 call < volume 5");

        // Within the window the same sequence trips.
        let cb = breaker(50, 5, 30 * SEC);
        fail(&cb, 4);
        clock.advance(5 * SEC);
        fail(&cb, 1);
        assert_eq!(cb.state(), BreakerState::Open);
    });
}

#[test]
fn open_rejects_until_the_reset_timeout_then_lets_one_trial_through() {
    clock::freeze(|clock| {
        let cb = tripped(30 * SEC);
        let r = rejected(&cb);
        assert_eq!(r.breaker, "delivery");
        assert_eq!(r.retry_after, 30 * SEC);
        assert_eq!(r.to_string(), "circuit breaker delivery is open");

        clock.advance(29 * SEC);
        assert_eq!(rejected(&cb).retry_after, SEC);
        clock.advance(SEC);
        // Due, but failsafe turns half-open only once the deadline has passed.
        assert_eq!(rejected(&cb).retry_after, MS);
        assert_eq!(cb.snapshot().rejected_total, 3);

        clock.advance(MS);
        let trial = acquire(&cb);
        assert!(trial.is_trial());
        assert_eq!(cb.state(), BreakerState::HalfOpen);
        let busy = rejected(&cb);
        assert_eq!(busy.retry_after, HALF_OPEN_BUSY_RETRY_AFTER);
        assert_eq!(cb.snapshot().rejected_total, 4);
        drop(trial);
    });
}

#[test]
fn concurrent_acquires_in_half_open_get_a_single_permit() {
    const THREADS: usize = 8;
    let cb = breaker(50, 1, 30 * SEC);
    clock::freeze(|_| fail(&cb, 1));
    assert_eq!(cb.state(), BreakerState::Open);

    // Each thread has its own frozen clock, all past the reset timeout, and they race to be the
    // one that turns the breaker half-open.
    let barrier = Barrier::new(THREADS);
    let results: Vec<Result<Permit, Rejected>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    clock::freeze(|clock| {
                        clock.advance(31 * SEC);
                        barrier.wait();
                        cb.try_acquire()
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let permits: Vec<&Permit> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(permits.len(), 1);
    assert!(permits[0].is_trial());
    assert_eq!(cb.state(), BreakerState::HalfOpen);
    assert_eq!(cb.snapshot().rejected_total, (THREADS - 1) as u64);
}

#[test]
fn dropping_the_trial_permit_frees_the_slot() {
    clock::freeze(|clock| {
        let cb = tripped(30 * SEC);
        clock.advance(31 * SEC);
        let trial = acquire(&cb);
        rejected(&cb);
        drop(trial);
        assert_eq!(
            cb.state(),
            BreakerState::HalfOpen,
            "an abandoned trial decides nothing"
        );
        let trial = acquire(&cb);
        assert!(trial.is_trial());
        trial.success();
        assert_eq!(cb.state(), BreakerState::Closed);
    });
}

#[test]
fn a_cancelled_trial_call_frees_the_slot() {
    clock::freeze(|clock| {
        let cb = tripped(30 * SEC);
        clock.advance(31 * SEC);
        paused_runtime().block_on(async {
            let slow = cb.call(
                |_: &Result<(), ()>| Outcome::Success,
                std::future::pending::<Result<(), ()>>,
            );
            tokio::select! {
                biased;
                _ = slow => panic!("the trial call never finishes"),
                () = async {
                    tokio::task::yield_now().await;
                    assert!(cb.try_acquire().is_err(), "the trial is in flight");
                } => {}
            }
        });
        assert_eq!(cb.state(), BreakerState::HalfOpen);
        assert!(acquire(&cb).is_trial());
    });
}

#[test]
fn trial_success_closes_and_resets_the_counts() {
    clock::freeze(|clock| {
        let cb = breaker(40, 2, 30 * SEC);
        succeed(&cb, 1);
        fail(&cb, 1);
        assert_eq!(cb.state(), BreakerState::Open);
        clock.advance(31 * SEC);
        acquire(&cb).success();
        assert_eq!(cb.state(), BreakerState::Closed);
        let snapshot = cb.snapshot();
        assert_eq!(snapshot.failures, 0);
        assert_eq!(snapshot.successes, 1, "only the trial, in a fresh window");
        assert_eq!(cb.remaining_open(), None);
        succeed(&cb, 3);
        assert_eq!(cb.state(), BreakerState::Closed);
    });
}

#[test]
fn trial_failure_reopens_for_a_full_reset_timeout() {
    clock::freeze(|clock| {
        let cb = tripped(30 * SEC);
        clock.advance(31 * SEC);
        let trial = acquire(&cb);
        clock.advance(5 * SEC); // the trial call takes a while
        trial.failure();
        assert_eq!(cb.state(), BreakerState::Open);
        assert_eq!(cb.remaining_open(), Some(30 * SEC));
        assert_eq!(cb.snapshot().opened_total, 2);

        clock.advance(30 * SEC);
        rejected(&cb);
        clock.advance(MS);
        assert!(acquire(&cb).is_trial());
    });
}

#[test]
fn late_non_trial_outcomes_do_not_change_the_state() {
    clock::freeze(|clock| {
        // A reset timeout shorter than the 10 s window, so the window still holds the failures.
        let cb = breaker(50, 3, 5 * SEC);
        let late_success = acquire(&cb);
        let late_failure = acquire(&cb);
        let while_open = acquire(&cb);
        let after_reclose = acquire(&cb);
        fail(&cb, 3);
        assert_eq!(cb.state(), BreakerState::Open);

        while_open.failure();
        assert_eq!(cb.snapshot().failures, 3, "outcomes while open are ignored");

        clock.advance(6 * SEC);
        let trial = acquire(&cb);
        late_success.success();
        assert_eq!(
            cb.state(),
            BreakerState::HalfOpen,
            "only the trial may close"
        );
        late_failure.failure();
        assert_eq!(
            cb.state(),
            BreakerState::HalfOpen,
            "only the trial may re-open"
        );
        assert_eq!(cb.snapshot().failures, 3);

        trial.success();
        assert_eq!(cb.state(), BreakerState::Closed);
        after_reclose.failure();
        assert_eq!(
            cb.snapshot().failures,
            0,
            "a call from before the trip is stale"
        );
    });
}

#[test]
fn remaining_open_counts_down_with_the_clock() {
    clock::freeze(|clock: &mut MockClock| {
        let cb = breaker(50, 1, 30 * SEC);
        assert_eq!(cb.remaining_open(), None, "closed");
        fail(&cb, 1);
        assert_eq!(cb.remaining_open(), Some(30 * SEC));
        clock.advance(10 * SEC);
        assert_eq!(cb.remaining_open(), Some(20 * SEC));
        clock.advance(20 * SEC);
        assert_eq!(cb.remaining_open(), None, "due");
        assert_eq!(cb.state(), BreakerState::Open, "until the next attempt");
        clock.advance(MS);
        let _trial = acquire(&cb);
        assert_eq!(cb.remaining_open(), None, "half-open");
    });
}

#[tokio::test(start_paused = true)]
async fn a_failure_classified_error_trips() {
    let cb = breaker(50, 1, 30 * SEC);
    let result = cb
        .call(
            |r: &Result<(), u16>| match r {
                Err(status) if *status >= 500 => Outcome::Failure,
                _ => Outcome::Success,
            },
            || async { Err::<(), u16>(503) },
        )
        .await;
    assert!(matches!(result, Err(CallError::Inner(503))));
    assert_eq!(cb.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_success_classified_error_does_not_trip() {
    let cb = breaker(0, 1, 30 * SEC);
    for _ in 0..5 {
        let result = cb
            .call(
                |r: &Result<(), &str>| match r {
                    Err("insufficient stock") => Outcome::Success,
                    Err(_) => Outcome::Failure,
                    Ok(()) => Outcome::Success,
                },
                || async { Err::<(), &str>("insufficient stock") },
            )
            .await;
        assert!(matches!(
            result,
            Err(CallError::Inner("insufficient stock"))
        ));
    }
    assert_eq!(cb.state(), BreakerState::Closed);
    assert_eq!(cb.snapshot().successes, 5);
    let value = cb
        .call(|_: &Result<u32, ()>| Outcome::Success, || async { Ok(7) })
        .await
        .expect("closed breaker runs the call");
    assert_eq!(value, 7);
}

#[tokio::test(start_paused = true)]
async fn a_call_timeout_is_a_failure() {
    let cb = breaker(50, 1, 30 * SEC);
    let classified = AtomicBool::new(false);
    let start = tokio::time::Instant::now();
    let result = cb
        .call(
            |_: &Result<(), ()>| {
                classified.store(true, Ordering::SeqCst);
                Outcome::Success
            },
            || async {
                tokio::time::sleep(5 * SEC).await;
                Ok(())
            },
        )
        .await;
    assert!(matches!(result, Err(CallError::Timeout(d)) if d == SEC));
    assert_eq!(start.elapsed(), SEC);
    assert!(
        !classified.load(Ordering::SeqCst),
        "the classifier sees no result"
    );
    assert_eq!(cb.state(), BreakerState::Open);
    assert_eq!(cb.snapshot().failures, 1);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_rejects_calls_without_running_them() {
    let cb = tripped(30 * SEC);
    let runs = AtomicUsize::new(0);
    let result = cb
        .call(
            |_: &Result<(), String>| Outcome::Success,
            || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
        )
        .await;
    let err = result.expect_err("rejected");
    assert!(err.is_rejected());
    assert!(matches!(&err, CallError::Rejected(r) if r.breaker == "delivery"));
    assert_eq!(err.to_string(), "circuit breaker delivery is open");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(cb.snapshot().rejected_total, 1);
}

#[test]
fn clones_share_state_and_permits_are_send() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CircuitBreaker>();
    assert_send_sync::<Permit>();
    assert_send_sync::<Registry>();

    let cb = breaker(50, 1, 30 * SEC);
    let clone = cb.clone();
    fail(&clone, 1);
    assert_eq!(cb.state(), BreakerState::Open);
    assert_eq!(cb.name(), "delivery");
    assert_eq!(cb.config().volume_threshold, 1);
    assert_eq!(BreakerState::HalfOpen.as_str(), "HALF_OPEN");
}

/// The value of `name{…labels…}` in a Prometheus text rendering.
fn series(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn state_and_calls_by_outcome_are_exported_as_metrics() {
    use metrics_exporter_prometheus::PrometheusBuilder;

    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // The breaker takes its metric handles when built; they keep recording into this recorder.
    clock::freeze(|clock| {
        let cb = metrics::with_local_recorder(&recorder, || breaker(50, 2, 30 * SEC));
        let state = || {
            series(
                &handle.render(),
                "circuit_breaker_state",
                &[r#"breaker="delivery""#],
            )
        };
        let calls = |outcome: &str| {
            series(
                &handle.render(),
                "circuit_breaker_calls_total",
                &[r#"breaker="delivery""#, &format!(r#"outcome="{outcome}""#)],
            )
        };
        assert_eq!(state(), Some(0.0), "closed from the start");
        succeed(&cb, 1);
        fail(&cb, 2);
        assert_eq!(cb.state(), BreakerState::Open);
        assert_eq!(state(), Some(1.0));
        rejected(&cb);
        rejected(&cb);
        clock.advance(30 * SEC + MS);
        let trial = acquire(&cb);
        assert_eq!(state(), Some(2.0), "half-open");
        rejected(&cb); // the trial is still running
        trial.success();
        assert_eq!(state(), Some(0.0), "closed again");
        assert_eq!(calls("success"), Some(2.0));
        assert_eq!(calls("failure"), Some(2.0));
        assert_eq!(calls("rejected"), Some(3.0));
    });
}
