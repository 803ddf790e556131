//! Park: WAITING without compensation, resumed explicitly.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use saga::{
    SagaDefinition, SagaEnd, SagaStatus, Step, StepError, StepInput, StepKind::*, StepStatus::*,
};
use sqlx::PgPool;

use crate::common::*;

/// a → deliver (parks while the courier is down) → c.
fn delivery_saga(journal: &Journal, courier_up: Arc<AtomicBool>) -> SagaDefinition<Ctx> {
    let j = journal.clone();
    SagaDefinition::new("delivery")
        .step(seq(journal, "a"))
        .step(
            Step::new("deliver", move |input: StepInput<Ctx>| {
                let (j, up) = (j.clone(), courier_up.clone());
                async move {
                    j.push(input.saga_id, "do:deliver".into());
                    if !up.load(Ordering::SeqCst) {
                        return Err(StepError::park("courier unavailable; retry worker resumes"));
                    }
                    let mut ctx = input.context;
                    ctx.trail.push("deliver".into());
                    Ok(ctx)
                }
            })
            .retry(quick(3)),
        )
        .step(seq(journal, "c"))
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn park_waits_without_compensating_and_resume_carries_on(pool: PgPool) {
    let journal = Journal::default();
    let courier_up = Arc::new(AtomicBool::new(false));
    let definition = delivery_saga(&journal, courier_up.clone());
    let orchestrator = orchestrator(&pool, "o1");

    let outcome = orchestrator
        .start(&definition, Ctx::default())
        .await
        .unwrap();

    assert_eq!(
        outcome.end,
        SagaEnd::Waiting {
            step: "deliver".into(),
            reason: "courier unavailable; retry worker resumes".into()
        }
    );
    assert_eq!(
        journal.events(outcome.id),
        strings(&["do:a", "do:deliver"]),
        "no retry, no compensation"
    );
    let waiting = view(&pool, outcome.id).await;
    assert_eq!(waiting.status, SagaStatus::Waiting);
    assert_eq!(waiting.current_step.as_deref(), Some("deliver"));
    assert_eq!(
        waiting.error.as_deref(),
        Some("courier unavailable; retry worker resumes")
    );
    assert_eq!(waiting.locked_by, None, "a waiting saga holds no lease");

    // Recovery does not touch a waiting saga: only an explicit resume does.
    let report = orchestrator
        .recover(&[&definition], lease_expired())
        .await
        .unwrap();
    assert_eq!(report.found, 0);

    courier_up.store(true, Ordering::SeqCst);
    let resumed = orchestrator.resume(&definition, outcome.id).await.unwrap();
    assert_eq!(resumed.end, SagaEnd::Completed);
    assert_eq!(resumed.context.trail, strings(&["a", "deliver", "c"]));
    assert_eq!(
        journal.events(outcome.id),
        strings(&["do:a", "do:deliver", "do:deliver", "do:c"])
    );
    let done = view(&pool, outcome.id).await;
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(done.error, None);
    assert_eq!(
        rows(&done),
        vec![
            row("a", Action, 1, Succeeded),
            row("deliver", Action, 1, Parked),
            row("deliver", Action, 2, Succeeded),
            row("c", Action, 1, Succeeded),
        ]
    );
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_waiting_saga_can_park_again_or_be_cancelled(pool: PgPool) {
    let journal = Journal::default();
    let definition = delivery_saga(&journal, Arc::new(AtomicBool::new(false)));
    let orchestrator = orchestrator(&pool, "o1");
    let outcome = orchestrator
        .start(&definition, Ctx::default())
        .await
        .unwrap();

    let again = orchestrator.resume(&definition, outcome.id).await.unwrap();
    assert_eq!(again.status(), SagaStatus::Waiting);

    let cancelled = orchestrator
        .compensate(&definition, outcome.id, "customer cancelled")
        .await
        .unwrap();
    assert_eq!(
        cancelled.end,
        SagaEnd::Compensated {
            failed_step: None,
            error: "customer cancelled".into(),
            rejection: None,
        }
    );
    assert_eq!(
        journal.events(outcome.id),
        strings(&["do:a", "do:deliver", "do:deliver", "undo:a"]),
        "the parked step never succeeded, so only a is compensated"
    );
}
