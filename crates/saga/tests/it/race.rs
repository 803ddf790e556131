//! Leases: two orchestrators never run one saga at the same time.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use saga::{
    Error, Orchestrator, Recoverable, SagaDefinition, SagaEnd, SagaStatus, Step, StepInput, store,
};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::common::*;

/// Steps that take a while and count their invocations across all sagas.
fn counted(calls: &Arc<[AtomicUsize; 3]>) -> SagaDefinition<Ctx> {
    let step = |i: usize, name: &'static str| {
        let calls = calls.clone();
        Step::new(name, move |input: StepInput<Ctx>| {
            let calls = calls.clone();
            async move {
                calls[i].fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(15)).await;
                Ok(input.context)
            }
        })
    };
    SagaDefinition::new("counted")
        .step(step(0, "a"))
        .step(step(1, "b"))
        .step(step(2, "c"))
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn two_orchestrators_racing_recovery_run_each_step_once(pool: PgPool) {
    let calls: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let definition = counted(&calls);
    const SAGAS: usize = 8;
    let mut ids = Vec::new();
    for n in 0..SAGAS {
        let id = Uuid::now_v7();
        let mut conn = pool.acquire().await.unwrap();
        store::create(&mut conn, &definition, id, &Ctx::default())
            .await
            .unwrap();
        if n % 2 == 0 {
            // Half were left by a crashed owner, half never had one.
            sqlx::query(
                "UPDATE saga_instances SET locked_by = 'dead', locked_until = now() - interval '1 second' \
                 WHERE id = $1",
            )
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        }
        ids.push(id);
    }
    let (one, two) = (orchestrator(&pool, "one"), orchestrator(&pool, "two"));

    // Both sweeps treat every lease up to an hour from now as expired, and still do not take
    // a saga from each other.
    let now = lease_expired();
    let definitions: [&dyn Recoverable; 1] = [&definition];
    let (r1, r2) = tokio::join!(
        one.recover(&definitions, now),
        two.recover(&definitions, now)
    );
    let (r1, r2) = (r1.unwrap(), r2.unwrap());

    for (i, c) in calls.iter().enumerate() {
        assert_eq!(
            c.load(Ordering::SeqCst),
            SAGAS,
            "step {i} ran once per saga"
        );
    }
    let recovered: Vec<Uuid> = r1
        .recovered
        .iter()
        .chain(&r2.recovered)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(recovered.len(), SAGAS, "{r1:?} {r2:?}");
    assert_eq!(
        recovered.iter().collect::<HashSet<_>>(),
        ids.iter().collect::<HashSet<_>>()
    );
    assert!(r1.errors.is_empty() && r2.errors.is_empty());
    for id in ids {
        assert_eq!(view(&pool, id).await.status, SagaStatus::Completed);
    }
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_renewed_lease_keeps_other_orchestrators_out(pool: PgPool) {
    let calls = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Notify::new());
    let (c, s) = (calls.clone(), started.clone());
    // One step outlasting the lease several times.
    let definition = SagaDefinition::new("long").step(
        Step::new("long", move |input: StepInput<Ctx>| {
            let (c, s) = (c.clone(), s.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                s.notify_one();
                tokio::time::sleep(Duration::from_millis(1_000)).await;
                Ok(input.context)
            }
        })
        .timeout(Duration::from_secs(10)),
    );
    let holder = Orchestrator::new(pool.clone(), "holder", Duration::from_millis(300));
    let other = Orchestrator::new(pool.clone(), "other", Duration::from_millis(300));
    let id = Uuid::now_v7();

    let run = holder.start_with_id(&definition, id, Ctx::default());
    let contender = async {
        started.notified().await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let report = other.recover(&[&definition], Utc::now()).await.unwrap();
        let resumed = other.resume(&definition, id).await;
        let cancelled = other.compensate(&definition, id, "nope").await;
        (report, resumed, cancelled)
    };
    let (outcome, (report, resumed, cancelled)) = tokio::join!(run, contender);

    assert_eq!(outcome.unwrap().end, SagaEnd::Completed);
    assert_eq!(report.found, 0, "the lease was renewed past its 300 ms");
    assert!(matches!(resumed, Err(Error::Busy(_))), "{resumed:?}");
    assert!(matches!(cancelled, Err(Error::Busy(_))), "{cancelled:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn one_orchestrator_does_not_run_a_saga_twice_at_once(pool: PgPool) {
    let calls: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let definition = counted(&calls);
    let id = Uuid::now_v7();
    let mut conn = pool.acquire().await.unwrap();
    store::create(&mut conn, &definition, id, &Ctx::default())
        .await
        .unwrap();
    let orchestrator = orchestrator(&pool, "same");

    let (first, second) = tokio::join!(
        orchestrator.resume(&definition, id),
        orchestrator.resume(&definition, id)
    );

    let (ok, busy) = if first.is_ok() {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(ok.unwrap().end, SagaEnd::Completed);
    assert!(matches!(busy, Err(Error::Busy(_))), "{busy:?}");
    for c in calls.iter() {
        assert_eq!(c.load(Ordering::SeqCst), 1);
    }
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_run_whose_lease_was_taken_stops_without_writing(pool: PgPool) {
    let started = Arc::new(Notify::new());
    let s = started.clone();
    let definition =
        SagaDefinition::new("stolen").step(Step::new("slow", move |input: StepInput<Ctx>| {
            let s = s.clone();
            async move {
                s.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(input.context)
            }
        }));
    let id = Uuid::now_v7();
    let holder = orchestrator(&pool, "holder");
    let run = holder.start_with_id(&definition, id, Ctx::default());
    let thief = async {
        started.notified().await;
        sqlx::query("UPDATE saga_instances SET locked_by = 'thief' WHERE id = $1")
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    };
    let (outcome, ()) = tokio::join!(run, thief);

    assert!(matches!(outcome, Err(Error::LeaseLost(_))), "{outcome:?}");
    let view = view(&pool, id).await;
    assert_eq!(view.locked_by.as_deref(), Some("thief"));
    assert_eq!(
        view.steps[0].status,
        saga::StepStatus::Running,
        "nothing written after the loss"
    );
}
