//! Leases: two orchestrators never run one saga at the same time.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::future::join_all;
use saga::{
    Error, Orchestrator, Recoverable, SagaDefinition, SagaEnd, SagaStatus, Step, StepError,
    StepInput, store,
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
            sqlx::query!("UPDATE saga_instances SET locked_by = 'dead', locked_until = now() - interval '1 second' \
                 WHERE id = $1", id)
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
    let (started, finish) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (c, s, f) = (calls.clone(), started.clone(), finish.clone());
    // One step that runs until the contender is done: it outlasts the lease as long as needed.
    let definition = SagaDefinition::new("long").step(
        Step::new("long", move |input: StepInput<Ctx>| {
            let (c, s, f) = (c.clone(), s.clone(), f.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                s.notify_one();
                f.notified().await;
                Ok(input.context)
            }
        })
        .timeout(LEASE),
    );
    // Renewed every 2 s while the step runs. The other owner's calls below come right after a
    // renewal, so the lease they meet is held even if the machine stalls for seconds.
    let lease = Duration::from_secs(6);
    let holder = Orchestrator::new(pool.clone(), "holder", lease);
    let other = Orchestrator::new(pool.clone(), "other", lease);
    let id = Uuid::now_v7();

    let run = holder.start_with_id(&definition, id, Ctx::default());
    let contender = async {
        started.notified().await;
        let first = view(&pool, id).await.locked_until.unwrap();
        let renewed = eventually(&pool, id, "the holder renews its lease", |v| {
            v.locked_until > Some(first)
        })
        .await;
        assert_eq!(renewed.locked_by.as_deref(), Some("holder"));
        // A sweep whose clock is past the lease the step started with.
        let report = other
            .recover(&[&definition], first + chrono::Duration::milliseconds(1))
            .await
            .unwrap();
        let resumed = other.resume(&definition, id).await;
        let cancelled = other.compensate(&definition, id, "nope").await;
        finish.notify_one();
        (report, resumed, cancelled)
    };
    let (outcome, (report, resumed, cancelled)) = tokio::join!(run, contender);

    assert_eq!(outcome.unwrap().end, SagaEnd::Completed);
    assert_eq!(report.found, 0, "the lease was renewed past its first end");
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
    let (started, stolen) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (s, t) = (started.clone(), stolen.clone());
    // The step ends only once its lease was taken.
    let definition =
        SagaDefinition::new("stolen").step(Step::new("slow", move |input: StepInput<Ctx>| {
            let (s, t) = (s.clone(), t.clone());
            async move {
                s.notify_one();
                t.notified().await;
                Ok(input.context)
            }
        }));
    let id = Uuid::now_v7();
    let holder = orchestrator(&pool, "holder");
    let run = holder.start_with_id(&definition, id, Ctx::default());
    let thief = async {
        started.notified().await;
        sqlx::query!(
            "UPDATE saga_instances SET locked_by = 'thief' WHERE id = $1",
            id
        )
        .execute(&pool)
        .await
        .unwrap();
        stolen.notify_one();
    };
    let (outcome, ()) = tokio::join!(run, thief);

    assert!(matches!(outcome, Err(Error::LeaseLost(_))), "{outcome:?}");
    let view = view(&pool, id).await;
    assert_eq!(view.locked_by.as_deref(), Some("thief"));
    assert!(
        view.steps.is_empty(),
        "nothing written after the loss: {:?}",
        view.steps
    );
    assert_eq!(view.status, saga::SagaStatus::Running);
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_run_whose_lease_is_taken_mid_step_stops_without_waiting_for_the_step(pool: PgPool) {
    let started = Arc::new(Notify::new());
    let s = started.clone();
    // A step that never ends, nor times out during the test: only the lease keeper can notice
    // the loss.
    let definition = SagaDefinition::new("stuck").step(
        Step::new("stuck", move |_: StepInput<Ctx>| {
            let s = s.clone();
            async move {
                s.notify_one();
                std::future::pending::<Result<Ctx, StepError>>().await
            }
        })
        .timeout(LEASE),
    );
    let id = Uuid::now_v7();
    // Renewed every 100 ms; the renewal after the theft finds the lease gone.
    let holder = Orchestrator::new(pool.clone(), "holder", Duration::from_millis(300));
    let run = holder.start_with_id(&definition, id, Ctx::default());
    let thief = async {
        started.notified().await;
        sqlx::query!(
            "UPDATE saga_instances SET locked_by = 'thief' WHERE id = $1",
            id
        )
        .execute(&pool)
        .await
        .unwrap();
    };
    let (outcome, ()) = tokio::join!(tokio::time::timeout(Duration::from_secs(60), run), thief);

    let outcome = outcome.expect("the run stops once a renewal finds the lease taken");
    assert!(matches!(outcome, Err(Error::LeaseLost(_))), "{outcome:?}");
    let view = view(&pool, id).await;
    assert_eq!(view.locked_by.as_deref(), Some("thief"));
    assert!(view.steps.is_empty(), "{:?}", view.steps);
}

/// Regression: a renewal that ran just after the run's final write had released the lease found
/// it gone and was taken for a loss, so a saga that was `COMPLETED` had its run return
/// `LeaseLost` (and `recover` report an error). It takes a renewal sent while the final commit
/// is visible but its answer not yet read; PostgreSQL answers a commit late when the
/// transaction dropped tables (their files are removed after the commit is visible), so a
/// trigger on completion does that here. Before the fix, about a third of these runs failed.
#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_run_that_released_its_lease_itself_has_not_lost_it(pool: PgPool) {
    sqlx::raw_sql(
        r#"
        CREATE FUNCTION slow_commit_answer() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            FOR i IN 1..10 LOOP
                EXECUTE format('CREATE TABLE scratch_%s (x int)', i);
                EXECUTE format('DROP TABLE scratch_%s', i);
            END LOOP;
            RETURN NULL;
        END $$;
        CREATE TRIGGER slow_commit_answer AFTER UPDATE ON saga_instances FOR EACH ROW
            WHEN (NEW.status = 'COMPLETED' AND OLD.status <> 'COMPLETED')
            EXECUTE FUNCTION slow_commit_answer();
        "#,
    )
    .execute(&pool)
    .await
    .unwrap();
    let definition = SagaDefinition::new("brief")
        .step(Step::new("a", |input: StepInput<Ctx>| async move {
            Ok(input.context)
        }));
    // Renewed every 10 ms, so renewals often meet the final commit.
    let orchestrator = Orchestrator::new(pool.clone(), "o1", Duration::from_millis(30));
    const SAGAS: usize = 40;
    const AT_ONCE: usize = 4;
    let mut errors = Vec::new();
    for _ in 0..SAGAS / AT_ONCE {
        let runs = (0..AT_ONCE).map(|_| orchestrator.start(&definition, Ctx::default()));
        for outcome in join_all(runs).await {
            match outcome {
                Ok(outcome) => assert_eq!(outcome.end, SagaEnd::Completed),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {SAGAS} runs failed: {errors:?}",
        errors.len()
    );
    let completed: i64 = sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM saga_instances WHERE status = 'COMPLETED' AND locked_by IS NULL"#)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(completed, SAGAS as i64);
}
