//! Parallel groups: concurrency, outputs, and compensation when one branch fails.

use std::{sync::Arc, time::Duration};

use saga::{SagaDefinition, SagaEnd, SagaStatus, Step, StepInput, StepKind::*, StepStatus::*};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Barrier;

use crate::common::*;

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_parallel_group_runs_concurrently_and_stores_each_output(pool: PgPool) {
    let journal = Journal::default();
    // Each branch waits for the other at a barrier: the saga only gets through if both run at
    // the same time (run one after the other, the first would time out). The timeout is far
    // beyond any scheduling delay.
    let barrier = Arc::new(Barrier::new(2));
    let branch = |name: &'static str| {
        let barrier = barrier.clone();
        Step::parallel(name, "checks", move |_: StepInput<Ctx>| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                Ok(json!({ "checked_by": name }))
            }
        })
        .timeout(Duration::from_secs(60))
        .retry(quick(1))
    };
    let definition = SagaDefinition::new("parallel")
        .step(seq(&journal, "a"))
        .step(branch("customer"))
        .step(branch("inventory"))
        .step(Step::new("summary", |input: StepInput<Ctx>| async move {
            let customer: serde_json::Value = input.output("customer")?.expect("customer ran");
            let mut ctx = input.context;
            ctx.trail.push(format!(
                "summary after {}",
                customer["checked_by"].as_str().unwrap()
            ));
            Ok(ctx)
        }));

    let outcome = orchestrator(&pool, "o1")
        .start(&definition, Ctx::default())
        .await
        .unwrap();

    assert_eq!(outcome.end, SagaEnd::Completed);
    assert_eq!(
        outcome.outputs["customer"],
        json!({"checked_by": "customer"})
    );
    assert_eq!(
        outcome.outputs["inventory"],
        json!({"checked_by": "inventory"})
    );
    assert_eq!(
        outcome.context.trail,
        strings(&["a", "summary after customer"])
    );
    let view = view(&pool, outcome.id).await;
    assert_eq!(
        view.outputs,
        json!({"customer": {"checked_by": "customer"}, "inventory": {"checked_by": "inventory"}})
    );
    let customer = view.steps.iter().find(|s| s.step == "customer").unwrap();
    assert_eq!(customer.result, Some(json!({"checked_by": "customer"})));
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_failing_branch_compensates_every_completed_branch_and_earlier_steps_in_reverse(
    pool: PgPool,
) {
    let journal = Journal::default();
    let slow = Duration::from_millis(150);
    let definition = SagaDefinition::new("parallel")
        .step(seq(&journal, "a"))
        .step(par(&journal, "b1", "g", slow))
        .step(par(&journal, "b2", "g", Duration::ZERO))
        .step(par(&journal, "b3", "g", Duration::ZERO))
        .step(seq(&journal, "c"));

    let outcome = orchestrator(&pool, "o1")
        .start(&definition, Ctx::failing_at("b2"))
        .await
        .unwrap();

    assert_eq!(
        outcome.end,
        SagaEnd::Compensated {
            failed_step: Some("b2".into()),
            error: "b2 failed".into(),
            rejection: None,
        }
    );
    let events = journal.events(outcome.id);
    assert_eq!(events[0], "do:a");
    let mut group = events[1..4].to_vec();
    group.sort();
    assert_eq!(group, strings(&["do:b1", "do:b2", "do:b3"]));
    assert_eq!(
        events[4..],
        strings(&["undo:b3", "undo:b1", "undo:a"]),
        "the slow branch finished and is compensated too; c never ran"
    );

    let view = view(&pool, outcome.id).await;
    assert_eq!(view.status, SagaStatus::Compensated);
    let status_of = |step: &str, kind| {
        view.steps
            .iter()
            .filter(|s| s.step == step && s.kind == kind)
            .map(|s| s.status)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        status_of("b1", Action),
        vec![Succeeded],
        "the saga waited for b1"
    );
    assert_eq!(status_of("b2", Action), vec![Failed]);
    assert_eq!(status_of("b3", Action), vec![Succeeded]);
    assert_eq!(status_of("b2", Compensation), vec![]);
    assert_eq!(status_of("b1", Compensation), vec![Succeeded]);
    assert_eq!(status_of("c", Action), vec![]);
}
