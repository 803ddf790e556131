//! A test saga whose steps record what they do in a [`Journal`].

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use saga::{
    Orchestrator, RetryPolicy, SagaView, Step, StepError, StepInput, StepKind, StepStatus, store,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The test saga's context: a trail of the sequential steps done, and switches steps obey.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ctx {
    pub trail: Vec<String>,
    pub premium: bool,
    /// The step whose action fails fatally.
    pub fail_at: Option<String>,
}

impl Ctx {
    pub fn failing_at(step: &str) -> Self {
        Self {
            fail_at: Some(step.to_owned()),
            ..Self::default()
        }
    }
}

/// What the steps did, per saga, in order: `do:<step>` for an action invocation, `undo:<step>`
/// for a compensation invocation.
#[derive(Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<(Uuid, String)>>>);

impl Journal {
    pub fn push(&self, saga: Uuid, event: String) {
        self.0.lock().unwrap().push((saga, event));
    }

    pub fn events(&self, saga: Uuid) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| *id == saga)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

/// Fast retries for tests.
pub fn quick(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::new(
        max_attempts,
        Duration::from_millis(1),
        Duration::from_millis(5),
    )
}

/// A sequential step that appends its name to the trail (fails fatally if `fail_at` names it),
/// compensated by journaling `undo:<name>`.
pub fn seq(journal: &Journal, name: &'static str) -> Step<Ctx> {
    let (j, k) = (journal.clone(), journal.clone());
    Step::new(name, move |input: StepInput<Ctx>| {
        let j = j.clone();
        async move {
            j.push(input.saga_id, format!("do:{name}"));
            let mut ctx = input.context;
            if ctx.fail_at.as_deref() == Some(name) {
                return Err(StepError::fatal(format!("{name} failed")));
            }
            ctx.trail.push(name.to_owned());
            Ok(ctx)
        }
    })
    .compensate_with(move |input: StepInput<Ctx>| {
        let k = k.clone();
        async move {
            k.push(input.saga_id, format!("undo:{name}"));
            Ok(())
        }
    })
    .retry(quick(1))
    .compensation_retry(quick(1))
}

/// The table local test steps write their effects to (created once per test database).
pub async fn effects_table(pool: &PgPool) {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS saga_test_effects (saga_id UUID NOT NULL, step TEXT NOT NULL)",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// The local steps whose effect saga `id` holds, in name order.
pub async fn effects(pool: &PgPool, id: Uuid) -> Vec<String> {
    sqlx::query_scalar("SELECT step FROM saga_test_effects WHERE saga_id = $1 ORDER BY step")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// A local step (needs [`effects_table`]): in the orchestrator's transaction it writes its
/// effect row and appends its name to the trail (fails fatally if `fail_at` names it, before
/// writing); its local compensation deletes the row and journals `undo:<name>`.
pub fn local(journal: &Journal, name: &'static str) -> Step<Ctx> {
    let (j, k) = (journal.clone(), journal.clone());
    Step::local(
        name,
        move |input: StepInput<Ctx>, conn: &mut PgConnection| {
            let j = j.clone();
            Box::pin(async move {
                j.push(input.saga_id, format!("do:{name}"));
                let mut ctx = input.context;
                if ctx.fail_at.as_deref() == Some(name) {
                    return Err(StepError::fatal(format!("{name} failed")));
                }
                sqlx::query("INSERT INTO saga_test_effects (saga_id, step) VALUES ($1, $2)")
                    .bind(input.saga_id)
                    .bind(name)
                    .execute(&mut *conn)
                    .await
                    .map_err(StepError::retryable)?;
                ctx.trail.push(name.to_owned());
                Ok(ctx)
            })
        },
    )
    .compensate_locally(move |input: StepInput<Ctx>, conn: &mut PgConnection| {
        let k = k.clone();
        Box::pin(async move {
            k.push(input.saga_id, format!("undo:{name}"));
            sqlx::query("DELETE FROM saga_test_effects WHERE saga_id = $1 AND step = $2")
                .bind(input.saga_id)
                .bind(name)
                .execute(&mut *conn)
                .await
                .map_err(StepError::retryable)?;
            Ok(())
        })
    })
    .retry(quick(1))
    .compensation_retry(quick(1))
}

/// A parallel step of `group` that outputs `{"by": name}` after `delay` (fails fatally if
/// `fail_at` names it, without waiting), compensated by journaling `undo:<name>`.
pub fn par(
    journal: &Journal,
    name: &'static str,
    group: &'static str,
    delay: Duration,
) -> Step<Ctx> {
    let (j, k) = (journal.clone(), journal.clone());
    Step::parallel(name, group, move |input: StepInput<Ctx>| {
        let j = j.clone();
        async move {
            j.push(input.saga_id, format!("do:{name}"));
            if input.context.fail_at.as_deref() == Some(name) {
                return Err(StepError::fatal(format!("{name} failed")));
            }
            tokio::time::sleep(delay).await;
            Ok(json!({ "by": name }))
        }
    })
    .compensate_with(move |input: StepInput<Ctx>| {
        let k = k.clone();
        async move {
            assert!(
                input.outputs.contains_key(name),
                "a compensation sees its step's output"
            );
            k.push(input.saga_id, format!("undo:{name}"));
            Ok(())
        }
    })
    .retry(quick(1))
    .compensation_retry(quick(1))
}

/// The lease of [`orchestrator`]s: long enough that no lease runs out by itself during a test,
/// however loaded the machine. Tests of expiry pass a later `now` to `recover`
/// ([`lease_expired`]) or write `locked_until`; tests of renewal choose their own lease.
pub const LEASE: Duration = Duration::from_secs(600);

pub fn orchestrator(pool: &PgPool, owner: &str) -> Orchestrator {
    Orchestrator::new(pool.clone(), owner, LEASE)
}

pub async fn view(pool: &PgPool, id: Uuid) -> SagaView {
    store::load(pool, id).await.unwrap().expect("saga exists")
}

/// The step executions of a saga as (step, kind, attempt, status).
pub fn rows(view: &SagaView) -> Vec<(String, StepKind, u32, StepStatus)> {
    view.steps
        .iter()
        .map(|s| (s.step.clone(), s.kind, s.attempt, s.status))
        .collect()
}

pub fn row(
    step: &str,
    kind: StepKind,
    attempt: u32,
    status: StepStatus,
) -> (String, StepKind, u32, StepStatus) {
    (step.to_owned(), kind, attempt, status)
}

/// A recovery clock far enough ahead that every lease counts as expired (well past [`LEASE`]).
pub fn lease_expired() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::hours(1)
}

/// Waits for `condition` on saga `id`'s view, checking every 10 ms; panics with `what` after
/// a minute (a bound that only a hang reaches, not a slow machine).
pub async fn eventually(
    pool: &PgPool,
    id: Uuid,
    what: &str,
    condition: impl Fn(&SagaView) -> bool,
) -> SagaView {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let view = view(pool, id).await;
        if condition(&view) {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}
