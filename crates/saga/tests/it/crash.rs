//! Resuming after a crash at every checkpoint.
//!
//! A crash leaves the tables as the last committed transaction left them. The snapshot test
//! records the saga's rows after every commit of a normal run (a deferred trigger copies them
//! at commit time; a saga's writes are serial, each a state a crash can leave), then restores
//! each copy as a new saga whose owner's lease has expired and lets a second orchestrator
//! recover it. The saga mixes local steps (their work and checkpoint commit together: never
//! run twice) and remote ones (recorded with the next checkpoint: run again when a crash came
//! first).

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use saga::{SagaDefinition, SagaStatus, Step, StepInput, StepKind::*, StepStatus::*};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::common::*;

const STEPS: [&str; 5] = ["a", "b1", "b2", "c", "d"];

/// a (local) → {b1 ∥ b2} (remote) → c (local) → d (remote), every step compensable.
fn five_steps(journal: &Journal) -> SagaDefinition<Ctx> {
    SagaDefinition::new("five")
        .step(local(journal, "a"))
        .step(par(journal, "b1", "g", Duration::from_millis(5)))
        .step(par(journal, "b2", "g", Duration::ZERO))
        .step(local(journal, "c"))
        .step(seq(journal, "d"))
}

async fn record_snapshots(pool: &PgPool) {
    sqlx::raw_sql(
        r#"
        CREATE TABLE saga_snapshots (
            seq      BIGSERIAL PRIMARY KEY,
            saga_id  UUID NOT NULL,
            instance JSONB NOT NULL,
            steps    JSONB NOT NULL
        );
        CREATE FUNCTION saga_snapshot() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE sid UUID;
        BEGIN
            IF TG_TABLE_NAME = 'saga_instances' THEN sid := NEW.id; ELSE sid := NEW.saga_id; END IF;
            INSERT INTO saga_snapshots (saga_id, instance, steps)
            SELECT i.id, to_jsonb(i),
                   COALESCE((SELECT jsonb_agg(to_jsonb(s) ORDER BY s.id) FROM saga_steps s
                             WHERE s.saga_id = i.id), '[]'::jsonb)
            FROM saga_instances i WHERE i.id = sid;
            RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER snapshot_instances AFTER INSERT OR UPDATE ON saga_instances
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION saga_snapshot();
        CREATE CONSTRAINT TRIGGER snapshot_steps AFTER INSERT OR UPDATE ON saga_steps
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION saga_snapshot();
        "#,
    )
    .execute(pool)
    .await
    .unwrap();
}

/// The distinct committed states of saga `id`, in commit order.
async fn snapshots(pool: &PgPool, id: Uuid) -> Vec<(Value, Value)> {
    let all: Vec<(Value, Value)> = sqlx::query_as(
        "SELECT instance, steps FROM saga_snapshots WHERE saga_id = $1 ORDER BY seq",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut distinct: Vec<(Value, Value)> = Vec::new();
    for (instance, steps) in all {
        let key = |i: &Value, s: &Value| {
            let mut i = i.clone();
            i["updated_at"] = Value::Null;
            i["locked_until"] = Value::Null;
            (i, s.clone())
        };
        if distinct.last().map(|(i, s)| key(i, s)) != Some(key(&instance, &steps)) {
            distinct.push((instance, steps));
        }
    }
    distinct
}

/// Writes a snapshot back as a new saga, its owner gone and its lease expired.
async fn restore(pool: &PgPool, mut instance: Value, steps: &Value) -> Uuid {
    let id = Uuid::now_v7();
    instance["id"] = json!(id);
    if instance["locked_by"] != Value::Null {
        instance["locked_by"] = json!("crashed-owner");
        instance["locked_until"] = json!("2000-01-01T00:00:00Z");
    }
    sqlx::query!(
        "INSERT INTO saga_instances SELECT * FROM jsonb_populate_record(NULL::saga_instances, $1)",
        &instance
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query!("INSERT INTO saga_steps (saga_id, step, kind, attempt, status, result, error, started_at, finished_at) \
         SELECT $2, step, kind, attempt, status, result, error, started_at, finished_at \
         FROM jsonb_populate_recordset(NULL::saga_steps, $1) ORDER BY id", steps, id)
    .execute(pool)
    .await
    .unwrap();
    id
}

/// Steps whose `kind` has a SUCCEEDED row in a snapshot's steps.
fn succeeded(steps: &Value, kind: &str) -> HashSet<String> {
    steps
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == kind && s["status"] == "SUCCEEDED")
        .map(|s| s["step"].as_str().unwrap().to_owned())
        .collect()
}

/// Runs the five-step saga once failing at `fail_at` (or not), then recovers it from every
/// state it committed on the way.
async fn recover_from_every_boundary(pool: PgPool, fail_at: Option<&str>, lazy: bool) {
    record_snapshots(&pool).await;
    effects_table(&pool).await;
    let journal = Journal::default();
    let definition = if lazy {
        five_steps(&journal).lazy_start()
    } else {
        five_steps(&journal)
    };
    let ctx = Ctx {
        fail_at: fail_at.map(str::to_owned),
        ..Ctx::default()
    };
    let original = orchestrator(&pool, "first")
        .start(&definition, ctx)
        .await
        .unwrap();
    let expected = if fail_at.is_some() {
        SagaStatus::Compensated
    } else {
        SagaStatus::Completed
    };
    assert_eq!(original.status(), expected);
    let states = snapshots(&pool, original.id).await;
    sqlx::raw_sql("DROP TRIGGER snapshot_instances ON saga_instances; DROP TRIGGER snapshot_steps ON saga_steps")
        .execute(&pool)
        .await
        .unwrap();
    // Checkpoints: the start (unless lazy), a, c with b1 and b2, the end with d; failing:
    // the start, a, compensating, a's local compensation, the end.
    let want = match (fail_at, lazy) {
        (None, false) => 4,
        (None, true) => 3,
        (_, false) => 5,
        (_, true) => 4,
    };
    assert_eq!(states.len(), want, "{} states", states.len());

    // The steps a run would still attempt, from a RUNNING state: those before the failing
    // unit, and the failing unit itself.
    let reachable: Vec<&str> = match fail_at {
        None => STEPS.to_vec(),
        Some("c") => vec!["a", "b1", "b2", "c"],
        Some("b2") => vec!["a", "b1", "b2"],
        Some(other) => panic!("no expectations for {other}"),
    };
    let recoverer = orchestrator(&pool, "second");
    for (n, (instance, steps)) in states.iter().enumerate() {
        let status = instance["status"].as_str().unwrap().to_owned();
        let done_before = succeeded(steps, "ACTION");
        let undone_before = succeeded(steps, "COMPENSATION");
        let id = restore(&pool, instance.clone(), steps).await;

        let report = recoverer.recover(&[&definition], Utc::now()).await.unwrap();

        let at = format!("state {n}: {status}, steps {steps}");
        let unfinished = status == "RUNNING" || status == "COMPENSATING";
        assert_eq!(
            report.recovered,
            if unfinished {
                vec![(id, expected)]
            } else {
                vec![]
            },
            "{at}"
        );
        let view = view(&pool, id).await;
        assert_eq!(view.status, expected, "{at}");
        assert_eq!(view.locked_by, None, "{at}");
        assert!(
            view.steps
                .iter()
                .all(|s| s.status != Running && s.status != Interrupted),
            "{at}"
        );

        let events = journal.events(id);
        let count = |e: String| events.iter().filter(|x| **x == e).count();
        for step in STEPS {
            let runs = count(format!("do:{step}"));
            let expected_runs = if done_before.contains(step)
                || status != "RUNNING"
                || !reachable.contains(&step)
            {
                0
            } else {
                1
            };
            assert_eq!(runs, expected_runs, "{at}: runs of {step}");
        }
        let done_after = succeeded(&serde_json::to_value(&view.steps).unwrap(), "ACTION");
        for step in STEPS {
            let undos = count(format!("undo:{step}"));
            let expected_total = usize::from(fail_at.is_some() && done_after.contains(step));
            assert_eq!(
                undos + usize::from(undone_before.contains(step)),
                expected_total,
                "{at}: compensations of {step}"
            );
        }
        let undo_order: Vec<usize> = events
            .iter()
            .filter_map(|e| e.strip_prefix("undo:"))
            .map(|s| STEPS.iter().position(|x| *x == s).unwrap())
            .collect();
        assert!(
            undo_order.windows(2).all(|w| w[0] > w[1]),
            "{at}: compensations in reverse, got {events:?}"
        );
        // A local step's effect commits with its checkpoint: the recovered saga holds the
        // effects of exactly the local steps it ran and did not undo.
        let ran_locally: Vec<String> = ["a", "c"]
            .into_iter()
            .filter(|s| count(format!("do:{s}")) == 1 && count(format!("undo:{s}")) == 0)
            .filter(|s| fail_at != Some(*s))
            .map(str::to_owned)
            .collect();
        assert_eq!(effects(&pool, id).await, ran_locally, "{at}");
        if fail_at.is_none() {
            assert_eq!(view.context["trail"], json!(["a", "c", "d"]), "{at}");
            assert_eq!(
                view.outputs,
                json!({"b1": {"by": "b1"}, "b2": {"by": "b2"}}),
                "{at}"
            );
        }
    }
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_crash_at_any_boundary_of_a_successful_saga_completes_it(pool: PgPool) {
    recover_from_every_boundary(pool, None, false).await;
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_crash_at_any_boundary_of_a_lazily_started_saga_completes_it(pool: PgPool) {
    recover_from_every_boundary(pool, None, true).await;
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_crash_at_any_boundary_of_a_failing_saga_compensates_it(pool: PgPool) {
    recover_from_every_boundary(pool, Some("c"), false).await;
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_crash_at_any_boundary_of_a_failing_lazy_saga_compensates_it(pool: PgPool) {
    recover_from_every_boundary(pool, Some("c"), true).await;
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_crash_at_any_boundary_of_a_failing_parallel_group_compensates_it(pool: PgPool) {
    recover_from_every_boundary(pool, Some("b2"), false).await;
}

/// a (local) → b (hangs on its first call) → c.
fn hanging(journal: &Journal, started: Arc<Notify>) -> SagaDefinition<Ctx> {
    let j = journal.clone();
    let first = Arc::new(AtomicBool::new(true));
    SagaDefinition::new("hanging")
        .step(local(journal, "a"))
        .step(Step::new("b", move |input: StepInput<Ctx>| {
            let (j, first, started) = (j.clone(), first.clone(), started.clone());
            async move {
                j.push(input.saga_id, "do:b".into());
                if first.swap(false, Ordering::SeqCst) {
                    started.notify_one();
                    std::future::pending::<()>().await;
                }
                Ok(input.context)
            }
        }))
        .step(seq(journal, "c"))
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_run_dropped_mid_step_is_recovered_once_its_lease_expires(pool: PgPool) {
    effects_table(&pool).await;
    let journal = Journal::default();
    let started = Arc::new(Notify::new());
    let definition = hanging(&journal, started.clone());
    let first = orchestrator(&pool, "first");
    let id = Uuid::now_v7();

    // The process "dies" while b runs: the run's future is dropped.
    tokio::select! {
        _ = first.start_with_id(&definition, id, Ctx::default()) => panic!("b hangs"),
        _ = started.notified() => {}
    }
    let crashed = view(&pool, id).await;
    assert_eq!(crashed.status, SagaStatus::Running);
    assert_eq!(crashed.locked_by.as_deref(), Some("first"));
    assert_eq!(crashed.current_step.as_deref(), Some("b"));
    // a's checkpoint; b's attempt was never recorded (a remote outcome waits for the next one).
    assert_eq!(rows(&crashed), vec![row("a", Action, 1, Succeeded)]);

    let second = orchestrator(&pool, "second");
    let report = second.recover(&[&definition], Utc::now()).await.unwrap();
    assert_eq!(report.found, 0, "the lease has not expired yet");

    let report = second
        .recover(&[&definition], lease_expired())
        .await
        .unwrap();
    assert_eq!(report.recovered, vec![(id, SagaStatus::Completed)]);
    assert_eq!(
        journal.events(id),
        strings(&["do:a", "do:b", "do:b", "do:c"]),
        "a is not run again; b, whose outcome was lost, is"
    );
    assert_eq!(
        rows(&view(&pool, id).await),
        vec![
            row("a", Action, 1, Succeeded),
            row("b", Action, 1, Succeeded),
            row("c", Action, 1, Succeeded),
        ]
    );
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_panicking_step_is_a_crash_not_a_failure(pool: PgPool) {
    effects_table(&pool).await;
    let journal = Journal::default();
    let j = journal.clone();
    let first_call = Arc::new(AtomicBool::new(true));
    let definition = Arc::new(
        SagaDefinition::new("panicky")
            .step(local(&journal, "a"))
            .step(Step::new("b", move |input: StepInput<Ctx>| {
                let (j, first_call) = (j.clone(), first_call.clone());
                async move {
                    j.push(input.saga_id, "do:b".into());
                    assert!(!first_call.swap(false, Ordering::SeqCst), "bug in b");
                    Ok(input.context)
                }
            }))
            .step(seq(&journal, "c")),
    );
    let id = Uuid::now_v7();
    let (first, def) = (orchestrator(&pool, "first"), definition.clone());
    let run = tokio::spawn(async move { first.start_with_id(&def, id, Ctx::default()).await });
    assert!(run.await.unwrap_err().is_panic());
    assert_eq!(view(&pool, id).await.status, SagaStatus::Running);

    let report = orchestrator(&pool, "second")
        .recover(&[definition.as_ref()], lease_expired())
        .await
        .unwrap();
    assert_eq!(report.recovered, vec![(id, SagaStatus::Completed)]);
    assert_eq!(
        journal.events(id),
        strings(&["do:a", "do:b", "do:b", "do:c"])
    );
    assert!(journal.events(id).iter().all(|e| !e.starts_with("undo")));
}
