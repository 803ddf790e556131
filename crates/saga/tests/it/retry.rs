//! Retries, timeouts and their records.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use saga::{SagaDefinition, SagaEnd, Step, StepError, StepInput, StepKind::*, StepStatus::*};
use sqlx::PgPool;

use crate::common::*;

/// A step whose action fails retryably `failures` times, then succeeds; records the attempt
/// numbers it was given.
fn flaky(failures: u32, seen: Arc<Mutex<Vec<u32>>>) -> Step<Ctx> {
    let calls = Arc::new(AtomicU32::new(0));
    Step::new("flaky", move |input: StepInput<Ctx>| {
        let (calls, seen) = (calls.clone(), seen.clone());
        async move {
            seen.lock().unwrap().push(input.attempt);
            if calls.fetch_add(1, Ordering::SeqCst) < failures {
                Err(StepError::retryable("503 from warehouse"))
            } else {
                Ok(input.context)
            }
        }
    })
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_retryable_failure_is_retried_until_it_succeeds(pool: PgPool) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let definition = SagaDefinition::new("retry").step(flaky(2, seen.clone()).retry(quick(3)));

    let outcome = orchestrator(&pool, "o1")
        .start(&definition, Ctx::default())
        .await
        .unwrap();

    assert_eq!(outcome.end, SagaEnd::Completed);
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
    let view = view(&pool, outcome.id).await;
    assert_eq!(
        rows(&view),
        vec![
            row("flaky", Action, 1, Failed),
            row("flaky", Action, 2, Failed),
            row("flaky", Action, 3, Succeeded),
        ]
    );
    assert_eq!(view.steps[0].error.as_deref(), Some("503 from warehouse"));
    assert_eq!(view.steps[2].error, None);
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn retries_run_out_then_the_saga_compensates(pool: PgPool) {
    let journal = Journal::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let definition = SagaDefinition::new("retry")
        .step(seq(&journal, "a"))
        .step(flaky(u32::MAX, seen.clone()).retry(quick(3)));

    let outcome = orchestrator(&pool, "o1")
        .start(&definition, Ctx::default())
        .await
        .unwrap();

    assert_eq!(
        outcome.end,
        SagaEnd::Compensated {
            failed_step: Some("flaky".into()),
            error: "503 from warehouse".into(),
            rejection: None,
        }
    );
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_eq!(journal.events(outcome.id), strings(&["do:a", "undo:a"]));
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_fatal_error_is_not_retried(pool: PgPool) {
    let journal = Journal::default();
    let definition = SagaDefinition::new("fatal").step(seq(&journal, "a").retry(quick(5)));

    let outcome = orchestrator(&pool, "o1")
        .start(&definition, Ctx::failing_at("a"))
        .await
        .unwrap();

    assert_eq!(outcome.end.status(), saga::SagaStatus::Compensated);
    assert_eq!(journal.events(outcome.id), strings(&["do:a"]));
    assert_eq!(
        rows(&view(&pool, outcome.id).await),
        vec![row("a", Action, 1, Failed)]
    );
}

/// How long the slow attempts of [`sluggish`] would take: longer than any test may run.
const FOREVER: Duration = Duration::from_secs(3600);

/// A step whose first `slow` attempts outlast any sensible timeout.
fn sluggish(slow: u32) -> Step<Ctx> {
    let calls = Arc::new(AtomicU32::new(0));
    Step::new("sluggish", move |input: StepInput<Ctx>| {
        let calls = calls.clone();
        async move {
            if calls.fetch_add(1, Ordering::SeqCst) < slow {
                tokio::time::sleep(FOREVER).await;
            }
            Ok(input.context)
        }
    })
    .timeout(Duration::from_millis(50))
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_timeout_is_a_failed_attempt(pool: PgPool) {
    let journal = Journal::default();
    let definition = SagaDefinition::new("timeout")
        .step(seq(&journal, "a"))
        .step(sluggish(u32::MAX).retry(quick(1)));
    let started = Instant::now();

    let outcome = orchestrator(&pool, "o1")
        .start(&definition, Ctx::default())
        .await
        .unwrap();

    // The attempt was cut short, not waited for (the bound leaves room for a loaded machine).
    assert!(started.elapsed() < FOREVER / 60, "{:?}", started.elapsed());
    assert_eq!(
        outcome.end,
        SagaEnd::Compensated {
            failed_step: Some("sluggish".into()),
            error: "timed out after 50ms".into(),
            rejection: None,
        }
    );
    assert_eq!(journal.events(outcome.id), strings(&["do:a", "undo:a"]));
    let view = view(&pool, outcome.id).await;
    assert_eq!(view.steps[1].status, Failed);
    assert_eq!(view.steps[1].error.as_deref(), Some("timed out after 50ms"));
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_timed_out_attempt_is_retried(pool: PgPool) {
    let definition = SagaDefinition::new("timeout").step(sluggish(1).retry(quick(2)));

    let outcome = orchestrator(&pool, "o1")
        .start(&definition, Ctx::default())
        .await
        .unwrap();

    assert_eq!(outcome.end, SagaEnd::Completed);
    assert_eq!(
        rows(&view(&pool, outcome.id).await),
        vec![
            row("sluggish", Action, 1, Failed),
            row("sluggish", Action, 2, Succeeded)
        ]
    );
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_compensation_is_retried_until_it_succeeds(pool: PgPool) {
    let journal = Journal::default();
    let calls = Arc::new(AtomicU32::new(0));
    let definition = SagaDefinition::new("comp-retry")
        .step(
            seq(&journal, "a")
                .compensate_with(move |_: StepInput<Ctx>| {
                    let calls = calls.clone();
                    async move {
                        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                            Err(StepError::retryable("busy"))
                        } else {
                            Ok(())
                        }
                    }
                })
                .compensation_retry(quick(3)),
        )
        .step(seq(&journal, "b"));

    let outcome = orchestrator(&pool, "o1")
        .start(&definition, Ctx::failing_at("b"))
        .await
        .unwrap();

    assert_eq!(outcome.end.status(), saga::SagaStatus::Compensated);
    assert_eq!(
        rows(&view(&pool, outcome.id).await),
        vec![
            row("a", Action, 1, Succeeded),
            row("b", Action, 1, Failed),
            row("a", Compensation, 1, Failed),
            row("a", Compensation, 2, Succeeded),
        ]
    );
}
