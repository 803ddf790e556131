//! The outbox crate against a real PostgreSQL database holding the outbox shape (delivery's
//! migrations create it, as sales' do): an event exists exactly when its transaction
//! commits, a commit wakes a listener on the channel, retention deletes only old SENT
//! rows, the backlog counts PENDING and FAILED rows, and dead letters are replayed (with a
//! wake-up) and discarded with an audit row each. The relay's publishing is tested against
//! LocalStack by the services (sales' `relaying`, delivery's `outbox`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::Utc;
use platform::config::Env;
use serde_json::json;
use sqlx::{PgPool, postgres::PgListener};
use uuid::Uuid;

async fn enqueue(pool: &PgPool, commit: bool) -> Uuid {
    let mut tx = pool.begin().await.unwrap();
    let id = outbox::enqueue(
        &mut tx,
        "thing",
        Uuid::new_v4(),
        1,
        "THING_HAPPENED",
        &json!({"status": "NEW"}),
    )
    .await
    .unwrap();
    if commit {
        tx.commit().await.unwrap();
    }
    id
}

async fn statuses(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar!("SELECT status FROM outbox_events ORDER BY created_at, id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn config() -> outbox::Config {
    outbox::Config::from_env(&Env::from_map("TEST_", Default::default()), "test-events").unwrap()
}

#[sqlx::test(migrations = "../../migrations/delivery")]
async fn an_event_exists_once_its_transaction_commits_and_wakes_the_relay(pool: PgPool) {
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(outbox::CHANNEL).await.unwrap();
    enqueue(&pool, false).await;
    assert!(statuses(&pool).await.is_empty(), "rolled back: no event");
    let quiet = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(quiet.is_err(), "a rolled-back insert notifies nobody");

    let id = enqueue(&pool, true).await;
    let woke = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(
        woke.is_ok_and(|n| n.is_ok()),
        "the commit notifies the channel"
    );
    let row = sqlx::query!(
        "SELECT status, aggregate_type, aggregate_version, payload FROM outbox_events WHERE id = $1",
        id
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (
            row.status,
            row.aggregate_type,
            row.aggregate_version,
            row.payload
        ),
        (
            "PENDING".to_owned(),
            "thing".to_owned(),
            1,
            json!({"status": "NEW"})
        )
    );
    let backlog = outbox::relay::backlog(&pool, Utc::now()).await.unwrap();
    assert_eq!((backlog.pending, backlog.failed), (1, 0));
    assert!(backlog.oldest_pending_age_seconds.unwrap() >= 0.0);
}

#[sqlx::test(migrations = "../../migrations/delivery")]
async fn retention_deletes_only_sent_rows_older_than_it(pool: PgPool) {
    for _ in 0..4 {
        enqueue(&pool, true).await;
    }
    let now = Utc::now();
    // Two sent long ago, one sent just now, one dead letter long ago.
    sqlx::query!(
        "UPDATE outbox_events SET status = 'SENT', sent_at = $1
         WHERE id IN (SELECT id FROM outbox_events ORDER BY id LIMIT 2)",
        now - chrono::Duration::days(8)
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query!(
        "UPDATE outbox_events SET status = 'SENT', sent_at = $1
         WHERE id IN (SELECT id FROM outbox_events WHERE status = 'PENDING' ORDER BY id LIMIT 1)",
        now
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query!(
        "UPDATE outbox_events SET status = 'FAILED', created_at = $1 WHERE status = 'PENDING'",
        now - chrono::Duration::days(30)
    )
    .execute(&pool)
    .await
    .unwrap();
    let deleted = outbox::cleanup::run_once(&pool, &config(), now)
        .await
        .unwrap();
    assert_eq!(deleted, 2, "only SENT rows older than the 7-day retention");
    let mut left = statuses(&pool).await;
    left.sort();
    assert_eq!(left, ["FAILED", "SENT"]);
}

#[sqlx::test(migrations = "../../migrations/delivery")]
async fn dead_letters_are_replayed_with_a_wake_up_and_discarded_with_a_reason(pool: PgPool) {
    let (a, b) = (enqueue(&pool, true).await, enqueue(&pool, true).await);
    sqlx::query!(
        "UPDATE outbox_events SET status = 'FAILED', retry_count = 5, first_refused_at = now(),
                last_error = 'refused'"
    )
    .execute(&pool)
    .await
    .unwrap();
    let failed = outbox::dead_letters::list(&pool).await.unwrap();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0].last_error.as_deref(), Some("refused"));
    let backlog = outbox::relay::backlog(&pool, Utc::now()).await.unwrap();
    assert_eq!((backlog.pending, backlog.failed), (0, 2));

    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen(outbox::CHANNEL).await.unwrap();
    assert_eq!(
        outbox::dead_letters::replay(&pool, Some(a), "ada")
            .await
            .unwrap(),
        [a]
    );
    let woke = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(woke.is_ok_and(|n| n.is_ok()), "a replay wakes the relay");
    let replayed = sqlx::query!(
        "SELECT status, retry_count, first_refused_at FROM outbox_events WHERE id = $1",
        a
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (
            replayed.status,
            replayed.retry_count,
            replayed.first_refused_at
        ),
        ("PENDING".to_owned(), 0, None),
        "its refusals forgotten"
    );

    assert!(
        !outbox::dead_letters::discard(&pool, a, "ada", "not failed")
            .await
            .unwrap()
    );
    assert!(
        outbox::dead_letters::discard(&pool, b, "grace", "a test event")
            .await
            .unwrap()
    );
    assert!(outbox::dead_letters::list(&pool).await.unwrap().is_empty());
    let audit: Vec<(Uuid, String, String, Option<String>)> =
        sqlx::query!("SELECT event_id, action, actor, reason FROM outbox_audit ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.event_id, r.action, r.actor, r.reason))
            .collect();
    assert_eq!(
        audit,
        [
            (a, "REPLAYED".to_owned(), "ada".to_owned(), None),
            (
                b,
                "DISCARDED".to_owned(),
                "grace".to_owned(),
                Some("a test event".to_owned())
            ),
        ]
    );
}
