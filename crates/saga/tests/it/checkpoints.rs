//! Checkpoints ride in the steps' own transactions: a saga of remote → local → remote → local
//! steps commits twice, each local step's work in the transaction that records it; typed
//! rejections come back as values; a lazily started saga rejected before its first local step
//! leaves nothing behind.

use saga::{
    SagaDefinition, SagaEnd, SagaStatus, Step, StepError, StepInput, StepKind::*, StepStatus::*,
};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use crate::common::*;

/// Every transaction that writes the saga tables or a test effect, by id.
async fn record_transactions(pool: &PgPool) {
    sqlx::raw_sql(
        r#"
        CREATE TABLE saga_test_txids (txid BIGINT NOT NULL, what TEXT NOT NULL);
        CREATE FUNCTION saga_test_txid() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO saga_test_txids VALUES (txid_current(), TG_TABLE_NAME);
            RETURN NULL;
        END $$;
        CREATE TRIGGER txid_instances AFTER INSERT OR UPDATE ON saga_instances
            FOR EACH STATEMENT EXECUTE FUNCTION saga_test_txid();
        CREATE TRIGGER txid_steps AFTER INSERT OR UPDATE ON saga_steps
            FOR EACH STATEMENT EXECUTE FUNCTION saga_test_txid();
        CREATE TRIGGER txid_effects AFTER INSERT ON saga_test_effects
            FOR EACH STATEMENT EXECUTE FUNCTION saga_test_txid();
        "#,
    )
    .execute(pool)
    .await
    .unwrap();
}

/// The transactions recorded, oldest first, each with the tables it wrote.
async fn transactions(pool: &PgPool) -> Vec<Vec<String>> {
    let rows: Vec<(i64, Vec<String>)> = sqlx::query_as(
        "SELECT txid, array_agg(DISTINCT what ORDER BY what) FROM saga_test_txids GROUP BY txid ORDER BY txid",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().map(|(_, what)| what).collect()
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn two_local_steps_two_commits_each_with_its_checkpoint(pool: PgPool) {
    effects_table(&pool).await;
    record_transactions(&pool).await;
    let journal = Journal::default();
    let definition = SagaDefinition::new("order-like")
        .step(seq(&journal, "reserve"))
        .step(local(&journal, "record"))
        .step(seq(&journal, "deliver"))
        .step(local(&journal, "record_delivery"))
        .lazy_start();
    let outcome = orchestrator(&pool, "o1")
        .start(&definition, Ctx::default())
        .await
        .unwrap();
    assert_eq!(outcome.end, SagaEnd::Completed);
    assert!(outcome.persisted);
    let effect_and_checkpoint = vec![
        "saga_instances".to_owned(),
        "saga_steps".to_owned(),
        "saga_test_effects".to_owned(),
    ];
    assert_eq!(
        transactions(&pool).await,
        vec![effect_and_checkpoint.clone(), effect_and_checkpoint],
        "one commit per local step, the remote outcomes and the completion riding along"
    );
    let view = view(&pool, outcome.id).await;
    assert_eq!(view.status, SagaStatus::Completed);
    assert_eq!(view.locked_by, None);
    assert_eq!(
        rows(&view),
        vec![
            row("reserve", Action, 1, Succeeded),
            row("record", Action, 1, Succeeded),
            row("deliver", Action, 1, Succeeded),
            row("record_delivery", Action, 1, Succeeded),
        ]
    );
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn steps_skipped_after_the_last_local_step_complete_the_saga_in_its_transaction(
    pool: PgPool,
) {
    effects_table(&pool).await;
    record_transactions(&pool).await;
    let journal = Journal::default();
    let definition = SagaDefinition::new("held")
        .step(seq(&journal, "reserve"))
        .step(local(&journal, "record"))
        .step(seq(&journal, "deliver").when(|ctx: &Ctx| ctx.premium))
        .step(local(&journal, "record_delivery").when(|ctx: &Ctx| ctx.premium))
        .lazy_start();
    let outcome = orchestrator(&pool, "o1")
        .start(&definition, Ctx::default())
        .await
        .unwrap();
    assert_eq!(outcome.end, SagaEnd::Completed);
    assert_eq!(transactions(&pool).await.len(), 1, "one commit in all");
    assert_eq!(
        rows(&view(&pool, outcome.id).await),
        vec![
            row("reserve", Action, 1, Succeeded),
            row("record", Action, 1, Succeeded),
            row("deliver", Action, 0, Skipped),
            row("record_delivery", Action, 0, Skipped),
        ]
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Refusal {
    OutOfStock { short: u32 },
}

fn refusing(journal: &Journal, at_local: bool) -> SagaDefinition<Ctx, Refusal> {
    let (j, k) = (journal.clone(), journal.clone());
    let reserve = Step::new("reserve", move |input: StepInput<Ctx>| {
        let j = j.clone();
        async move {
            j.push(input.saga_id, "do:reserve".into());
            Ok(input.context)
        }
    })
    .compensate_with(move |input: StepInput<Ctx>| {
        let k = k.clone();
        async move {
            k.push(input.saga_id, "undo:reserve".into());
            Ok(())
        }
    });
    let refuse = |name| {
        Step::local(name, |_: StepInput<Ctx>, _: &mut PgConnection| {
            Box::pin(async { Err(StepError::Rejected(Refusal::OutOfStock { short: 2 })) })
        })
    };
    let check = Step::new("check", |_: StepInput<Ctx>| async {
        Err(StepError::Rejected(Refusal::OutOfStock { short: 2 }))
    });
    let definition = SagaDefinition::with_rejections("refusing").step(reserve);
    if at_local {
        definition.step(refuse("record")).lazy_start()
    } else {
        definition.step(check).step(refuse("record"))
    }
}

#[sqlx::test(migrations = "../../migrations/sales")]
async fn a_rejection_comes_back_typed_and_a_lazy_saga_rejected_early_leaves_nothing(pool: PgPool) {
    let journal = Journal::default();
    let lazy = orchestrator(&pool, "o1")
        .start(&refusing(&journal, true), Ctx::default())
        .await
        .unwrap();
    assert_eq!(
        lazy.end,
        SagaEnd::Compensated {
            failed_step: Some("record".into()),
            error: "rejected: OutOfStock { short: 2 }".into(),
            rejection: Some(Refusal::OutOfStock { short: 2 }),
        }
    );
    assert!(
        !lazy.persisted,
        "never written: its first local step rolled back"
    );
    assert!(saga::store::load(&pool, lazy.id).await.unwrap().is_none());
    assert_eq!(
        journal.events(lazy.id),
        strings(&["do:reserve", "undo:reserve"])
    );

    // A saga written from the start keeps its rejection, typed, in the database.
    let durable = orchestrator(&pool, "o1")
        .start(&refusing(&journal, false), Ctx::default())
        .await
        .unwrap();
    assert!(durable.persisted);
    let stored: Option<serde_json::Value> = sqlx::query_scalar!(
        "SELECT rejection FROM saga_instances WHERE id = $1",
        durable.id
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        Some(serde_json::json!({"OutOfStock": {"short": 2}}))
    );
    let again = orchestrator(&pool, "o2")
        .resume(&refusing(&journal, false), durable.id)
        .await
        .unwrap();
    assert_eq!(again.end, durable.end, "read back typed from the row");
}
