//! The loop around a background worker's single step: run the step, run it
//! again at once while it says there is more to do, else wait the interval (or
//! until woken: [`run_every_or_woken`]); stop when the token is cancelled
//! (between steps, never in the middle of one).

use std::{fmt::Display, future::Future, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What a step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// More is due right now (e.g. a full batch): step again without waiting.
    Again,
    /// Nothing more for now: wait the interval.
    Wait,
    /// Wait this long instead of the interval (e.g. until a breaker lets a trial through).
    After(Duration),
}

/// When the first step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Immediately,
    /// After one interval (for jobs whose first run should not race start-up).
    AfterInterval,
}

/// Runs `step` until `token` is cancelled; a failed step is logged and retried after the interval.
pub async fn run_every<F, Fut, E>(
    name: &'static str,
    interval: Duration,
    start: Start,
    token: CancellationToken,
    step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Next, E>>,
    E: Display,
{
    run_every_or_woken(name, interval, start, token, &Notify::new(), step).await;
}

/// [`run_every`], whose wait also ends when `wake` is notified (someone made work for it).
pub async fn run_every_or_woken<F, Fut, E>(
    name: &'static str,
    interval: Duration,
    start: Start,
    token: CancellationToken,
    wake: &Notify,
    mut step: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Next, E>>,
    E: Display,
{
    let mut wait = (start == Start::AfterInterval).then_some(interval);
    loop {
        if let Some(wait) = wait {
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
                () = wake.notified() => {}
            }
        }
        if token.is_cancelled() {
            break;
        }
        wait = match step().await {
            Ok(Next::Again) => None,
            Ok(Next::Wait) => Some(interval),
            Ok(Next::After(d)) => Some(d),
            Err(e) => {
                tracing::warn!(worker = name, error = %e, "worker step failed");
                Some(interval)
            }
        };
    }
    tracing::info!(worker = name, "worker stopped");
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn steps_again_while_there_is_more_and_stops_when_cancelled() {
        let token = CancellationToken::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let (c, t) = (calls.clone(), token.clone());
        let worker = tokio::spawn(run_every(
            "test",
            Duration::from_secs(60),
            Start::Immediately,
            token.clone(),
            move || {
                let n = c.fetch_add(1, Ordering::SeqCst);
                let t = t.clone();
                async move {
                    if n == 4 {
                        t.cancel();
                    }
                    Ok::<_, std::convert::Infallible>(if n < 2 { Next::Again } else { Next::Wait })
                }
            },
        ));
        worker.await.expect("worker ends");
        // 3 steps back to back, then one per (auto-advanced) interval until the 5th cancels.
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_token_stops_a_worker_waiting_to_start() {
        let token = CancellationToken::new();
        token.cancel();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        run_every(
            "test",
            Duration::from_secs(60),
            Start::AfterInterval,
            token,
            move || {
                c.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, std::convert::Infallible>(Next::Wait) }
            },
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_may_choose_its_own_wait() {
        let token = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let times = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (t, seen) = (token.clone(), times.clone());
        run_every(
            "test",
            Duration::from_secs(60),
            Start::Immediately,
            token,
            move || {
                let mut seen = seen.lock().expect("not poisoned");
                seen.push(started.elapsed());
                if seen.len() == 3 {
                    t.cancel();
                }
                async { Ok::<_, std::convert::Infallible>(Next::After(Duration::from_secs(2))) }
            },
        )
        .await;
        assert_eq!(
            *times.lock().expect("not poisoned"),
            vec![
                Duration::ZERO,
                Duration::from_secs(2),
                Duration::from_secs(4)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_notified_worker_steps_before_its_interval() {
        let token = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let started = tokio::time::Instant::now();
        let (c, t, w) = (calls.clone(), token.clone(), wake.clone());
        let worker = tokio::spawn(async move {
            run_every_or_woken(
                "test",
                Duration::from_secs(60),
                Start::AfterInterval,
                t,
                &w,
                move || {
                    c.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, std::convert::Infallible>(Next::Wait) }
                },
            )
            .await;
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "waiting its first interval"
        );
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "woken at 5 s");
        assert!(started.elapsed() < Duration::from_secs(6));
        token.cancel();
        worker.await.expect("worker ends");
    }
}
