//! Order of steps, reverse compensation, conditions, compensation failure, cancel, errors.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use saga::{
    Error, SagaDefinition, SagaEnd, SagaStatus, Step, StepError, StepInput, StepKind::*,
    StepStatus::*, store,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::common::*;

fn abc(journal: &Journal) -> SagaDefinition<Ctx> {
    SagaDefinition::new("abc")
        .step(seq(journal, "a"))
        .step(seq(journal, "b"))
        .step(seq(journal, "c"))
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn steps_run_in_order_and_every_change_is_persisted(pool: PgPool) {
    let journal = Journal::default();
    let orchestrator = orchestrator(&pool, "o1");

    let outcome = orchestrator
        .start(&abc(&journal), Ctx::default())
        .await
        .unwrap();

    assert_eq!(outcome.end, SagaEnd::Completed);
    assert_eq!(outcome.context.trail, strings(&["a", "b", "c"]));
    assert_eq!(
        journal.events(outcome.id),
        strings(&["do:a", "do:b", "do:c"])
    );

    let view = view(&pool, outcome.id).await;
    assert_eq!(view.saga_type, "abc");
    assert_eq!(view.status, SagaStatus::Completed);
    assert_eq!(view.context["trail"], serde_json::json!(["a", "b", "c"]));
    assert_eq!(view.locked_by, None, "the lease is released at the end");
    assert_eq!(view.locked_until, None);
    assert!(view.completed_at.is_some());
    assert_eq!(view.current_step, None);
    assert_eq!(
        rows(&view),
        vec![
            row("a", Action, 1, Succeeded),
            row("b", Action, 1, Succeeded),
            row("c", Action, 1, Succeeded),
        ]
    );
    assert_eq!(
        view.steps[1].result.as_ref().unwrap()["trail"],
        serde_json::json!(["a", "b"]),
        "a sequential step's result is the context it returned"
    );
    assert!(view.steps.iter().all(|s| s.finished_at.is_some()));
    // The view is what `GET /sagas/{id}` serves.
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(json["status"], "COMPLETED");
    assert_eq!(json["steps"][0]["kind"], "ACTION");
    assert_eq!(json["steps"][0]["status"], "SUCCEEDED");
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_failing_step_compensates_the_completed_steps_in_reverse(pool: PgPool) {
    let journal = Journal::default();
    let j = journal.clone();
    // `notify` has no compensation; `d` is never reached.
    let definition = SagaDefinition::new("abcd")
        .step(seq(&journal, "a"))
        .step(Step::new("notify", move |input: StepInput<Ctx>| {
            let j = j.clone();
            async move {
                j.push(input.saga_id, "do:notify".into());
                Ok(input.context)
            }
        }))
        .step(seq(&journal, "b"))
        .step(seq(&journal, "c"))
        .step(seq(&journal, "d"));

    let outcome = orchestrator(&pool, "o1")
        .start(&definition, Ctx::failing_at("c"))
        .await
        .unwrap();

    assert_eq!(
        outcome.end,
        SagaEnd::Compensated {
            failed_step: Some("c".into()),
            error: "c failed".into(),
            rejection: None,
        }
    );
    assert!(!outcome.needs_manual_review());
    assert_eq!(
        journal.events(outcome.id),
        strings(&["do:a", "do:notify", "do:b", "do:c", "undo:b", "undo:a"])
    );
    let view = view(&pool, outcome.id).await;
    assert_eq!(view.status, SagaStatus::Compensated);
    assert_eq!(view.failed_step.as_deref(), Some("c"));
    assert_eq!(view.error.as_deref(), Some("c failed"));
    assert_eq!(view.locked_by, None);
    assert_eq!(
        rows(&view),
        vec![
            row("a", Action, 1, Succeeded),
            row("notify", Action, 1, Succeeded),
            row("b", Action, 1, Succeeded),
            row("c", Action, 1, Failed),
            row("b", Compensation, 1, Succeeded),
            row("a", Compensation, 1, Succeeded),
        ]
    );
    assert_eq!(view.steps[3].error.as_deref(), Some("c failed"));
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_false_condition_skips_the_step_and_its_compensation(pool: PgPool) {
    let journal = Journal::default();
    let definition = SagaDefinition::new("discount")
        .step(seq(&journal, "a"))
        .step(seq(&journal, "discount").when(|ctx: &Ctx| ctx.premium))
        .step(seq(&journal, "c"));
    let orchestrator = orchestrator(&pool, "o1");

    let skipped = orchestrator
        .start(&definition, Ctx::default())
        .await
        .unwrap();
    assert_eq!(skipped.end, SagaEnd::Completed);
    assert_eq!(journal.events(skipped.id), strings(&["do:a", "do:c"]));
    assert_eq!(
        rows(&view(&pool, skipped.id).await),
        vec![
            row("a", Action, 1, Succeeded),
            row("discount", Action, 0, Skipped),
            row("c", Action, 1, Succeeded),
        ]
    );

    let premium = orchestrator
        .start(
            &definition,
            Ctx {
                premium: true,
                ..Ctx::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        journal.events(premium.id),
        strings(&["do:a", "do:discount", "do:c"])
    );

    // A skipped step is not compensated.
    let failed = orchestrator
        .start(&definition, Ctx::failing_at("c"))
        .await
        .unwrap();
    assert_eq!(failed.status(), SagaStatus::Compensated);
    assert_eq!(
        journal.events(failed.id),
        strings(&["do:a", "do:c", "undo:a"])
    );
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_compensation_that_keeps_failing_ends_failed_for_manual_review(pool: PgPool) {
    let journal = Journal::default();
    let repaired = Arc::new(AtomicBool::new(false));
    let (j, fixed) = (journal.clone(), repaired.clone());
    let definition = SagaDefinition::new("stuck")
        .step(seq(&journal, "a"))
        .step(
            seq(&journal, "b")
                .compensate_with(move |input: StepInput<Ctx>| {
                    let (j, fixed) = (j.clone(), fixed.clone());
                    async move {
                        j.push(input.saga_id, "undo:b".into());
                        if fixed.load(Ordering::SeqCst) {
                            Ok(())
                        } else {
                            Err(StepError::retryable("warehouse unreachable"))
                        }
                    }
                })
                .compensation_retry(quick(2)),
        )
        .step(seq(&journal, "c"));
    let orchestrator = orchestrator(&pool, "o1");

    let outcome = orchestrator
        .start(&definition, Ctx::failing_at("c"))
        .await
        .unwrap();

    assert!(outcome.needs_manual_review());
    assert_eq!(
        outcome.end,
        SagaEnd::Failed {
            failed_step: Some("c".into()),
            error: "c failed".into(),
            compensation_step: "b".into(),
            compensation_error: "warehouse unreachable".into(),
        }
    );
    assert_eq!(
        journal.events(outcome.id),
        strings(&["do:a", "do:b", "do:c", "undo:b", "undo:b"]),
        "retried per its policy, and a is not compensated before b"
    );
    let view = view(&pool, outcome.id).await;
    assert_eq!(view.status, SagaStatus::Failed);
    assert_eq!(view.current_step.as_deref(), Some("b"));
    assert_eq!(
        view.compensation_error.as_deref(),
        Some("warehouse unreachable")
    );
    assert_eq!(view.failed_step.as_deref(), Some("c"));
    assert_eq!(view.error.as_deref(), Some("c failed"));
    assert_eq!(view.locked_by, None);
    let last = view.steps.last().unwrap();
    assert_eq!(
        (last.step.as_str(), last.kind, last.attempt, last.status),
        ("b", Compensation, 2, Failed)
    );
    assert_eq!(last.error.as_deref(), Some("warehouse unreachable"));

    // Recovery leaves a FAILED saga alone; a person resumes it once the cause is fixed.
    let report = orchestrator
        .recover(&[&definition], lease_expired())
        .await
        .unwrap();
    assert_eq!(report.found, 0);
    repaired.store(true, Ordering::SeqCst);
    let resumed = orchestrator.resume(&definition, outcome.id).await.unwrap();
    assert_eq!(
        resumed.end,
        SagaEnd::Compensated {
            failed_step: Some("c".into()),
            error: "c failed".into(),
            rejection: None,
        }
    );
    assert_eq!(
        journal.events(outcome.id)[5..],
        strings(&["undo:b", "undo:a"])
    );
    let view = crate::common::view(&pool, outcome.id).await;
    assert_eq!(view.status, SagaStatus::Compensated);
    assert_eq!(view.compensation_error, None);
    assert_eq!(view.steps.last().map(|s| s.attempt), Some(1));
    assert_eq!(
        view.steps[view.steps.len() - 2].attempt,
        3,
        "b's attempts go on"
    );
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn compensate_cancels_a_completed_saga_once(pool: PgPool) {
    let journal = Journal::default();
    let definition = abc(&journal);
    let orchestrator = orchestrator(&pool, "o1");
    let done = orchestrator
        .start(&definition, Ctx::default())
        .await
        .unwrap();

    let cancelled = orchestrator
        .compensate(&definition, done.id, "customer cancelled")
        .await
        .unwrap();
    let expected = SagaEnd::Compensated {
        failed_step: None,
        error: "customer cancelled".into(),
        rejection: None,
    };
    assert_eq!(cancelled.end, expected);
    assert_eq!(
        journal.events(done.id)[3..],
        strings(&["undo:c", "undo:b", "undo:a"])
    );
    assert_eq!(cancelled.context.trail, strings(&["a", "b", "c"]));

    let again = orchestrator
        .compensate(&definition, done.id, "clicked twice")
        .await
        .unwrap();
    assert_eq!(again.end, expected, "the stored outcome");
    assert_eq!(journal.events(done.id).len(), 6, "nothing runs twice");
    let resumed = orchestrator.resume(&definition, done.id).await.unwrap();
    assert_eq!(resumed.end, expected);
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn misuse_is_reported(pool: PgPool) {
    let journal = Journal::default();
    let definition = abc(&journal);
    let orchestrator = orchestrator(&pool, "o1");

    let missing = Uuid::now_v7();
    assert!(matches!(
        orchestrator.resume(&definition, missing).await,
        Err(Error::NotFound(id)) if id == missing
    ));

    let id = Uuid::now_v7();
    orchestrator
        .start_with_id(&definition, id, Ctx::default())
        .await
        .unwrap();
    assert!(matches!(
        orchestrator
            .start_with_id(&definition, id, Ctx::default())
            .await,
        Err(Error::AlreadyExists(_))
    ));
    assert_eq!(journal.events(id).len(), 3);

    let other = SagaDefinition::new("other").step(seq(&journal, "x"));
    assert!(matches!(
        orchestrator.resume(&other, id).await,
        Err(Error::WrongType { found, .. }) if found == "abc"
    ));
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_saga_created_in_the_callers_transaction_runs_on_resume(pool: PgPool) {
    let journal = Journal::default();
    let definition = abc(&journal);
    let orchestrator = orchestrator(&pool, "o1");

    let rolled_back = Uuid::now_v7();
    let mut tx = pool.begin().await.unwrap();
    store::create(&mut tx, &definition, rolled_back, &Ctx::default())
        .await
        .unwrap();
    drop(tx);
    assert!(store::load(&pool, rolled_back).await.unwrap().is_none());

    let id = Uuid::now_v7();
    let mut tx = pool.begin().await.unwrap();
    store::create(&mut tx, &definition, id, &Ctx::default())
        .await
        .unwrap();
    assert!(matches!(
        store::create(&mut tx, &definition, id, &Ctx::default()).await,
        Err(Error::AlreadyExists(_))
    ));
    tx.commit().await.unwrap();
    let created = view(&pool, id).await;
    assert_eq!(
        (created.status, created.locked_by),
        (SagaStatus::Running, None)
    );

    let outcome = orchestrator.resume(&definition, id).await.unwrap();
    assert_eq!(outcome.end, SagaEnd::Completed);
    assert_eq!(journal.events(id), strings(&["do:a", "do:b", "do:c"]));
}
