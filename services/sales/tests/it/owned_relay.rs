//! The writer's fast path against the real SNS/SQS API (LocalStack): a running relay
//! publishes the rows its process wrote from their notifications — even rows another
//! transaction holds locked, which no claim could take — and marks them SENT in batches;
//! a row too large for its notification is read by id; a row whose owner is gone waits
//! for the takeover delay, then any claim publishes it; a broker outage on the fast path
//! charges nothing and the claim path delivers afterwards.

use std::{collections::HashSet, sync::Arc, time::Duration};

use chrono::Utc;
use messaging::{ConsumerConfig, QueueSpec, handler_fn};
use platform::config::Env;
use resilience::{BreakerConfig, CircuitBreaker};
use sales::outbox::relay::Relay;
use serde_json::json;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use testkit::proxy::Proxy;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Stack;

fn localstack() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

fn upstream() -> std::net::SocketAddr {
    let url = localstack();
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    authority.replace("localhost", "127.0.0.1").parse().unwrap()
}

/// A topic of this test's own with one queue subscribed; returns (topic, queue URL).
async fn topic_and_queue() -> (String, String) {
    let sdk = messaging::aws::emulator_sdk_config(&localstack()).await;
    let name = format!("owned-it-{}", Uuid::new_v4().simple());
    let topology = messaging::Topology {
        topic_name: name.clone(),
        queues: vec![QueueSpec {
            name: name.clone(),
            event_types: Vec::new(),
            excluded_statuses: Vec::new(),
            max_receive_count: 5,
            visibility_timeout_secs: 30,
        }],
    };
    let provisioned = messaging::provision(&sdk, &topology).await.unwrap();
    (provisioned.topic_arn, provisioned.queue_urls[&name].clone())
}

/// A relay with the shipped outbox settings (takeover 10 s, marks every 1 s), publishing
/// through `proxy`. Its breaker resets after 200 ms instead of 30 s (a short test).
async fn relay(pool: &PgPool, proxy: &Proxy, topic: String) -> Relay {
    let config = sales::Config::from(&Env::from_map("SALES_", Default::default()))
        .unwrap()
        .outbox;
    let sdk =
        messaging::aws::emulator_sdk_config(&format!("http://127.0.0.1:{}", proxy.port)).await;
    let breaker = CircuitBreaker::new(BreakerConfig::new(
        "broker",
        50,
        Duration::from_millis(200),
        5,
        Duration::from_secs(5),
    ));
    Relay {
        pool: pool.clone(),
        publisher: messaging::Publisher::new(&sdk, topic, config.max_in_flight),
        breaker,
        config,
        pause_before_mark: Duration::ZERO,
        flight: Default::default(),
    }
}

async fn enqueue(pool: &PgPool, payload: &serde_json::Value) -> Uuid {
    let mut tx = pool.begin().await.unwrap();
    let id = sales::outbox::enqueue(&mut tx, Uuid::now_v7(), 1, "ORDER_CREATED", payload)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn count(pool: &PgPool, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status = $1")
        .bind(status)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Event ids received on `queue` until `want` distinct ones arrived (or 20 s passed).
async fn received(queue: &str, want: usize) -> HashSet<Uuid> {
    let sdk = messaging::aws::emulator_sdk_config(&localstack()).await;
    let mut config = ConsumerConfig::new(queue);
    config.wait_time_secs = 1;
    let consumer = messaging::Consumer::new(&sdk, config);
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.lock().await.len() < want && std::time::Instant::now() < deadline {
        let seen = seen.clone();
        consumer
            .poll_once(&handler_fn(move |e: messaging::Envelope| {
                let seen = seen.clone();
                async move {
                    seen.lock().await.insert(e.event_id);
                    Ok(())
                }
            }))
            .await
            .unwrap();
    }
    seen.lock().await.clone()
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn the_writer_publishes_its_rows_from_their_notifications_without_claiming_them(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let pool = stack.sales_db.clone();
    let (topic, queue) = topic_and_queue().await;
    let proxy = Proxy::start(upstream()).await;
    let relay = relay(&pool, &proxy, topic).await;
    let token = CancellationToken::new();
    let running = tokio::spawn(relay.clone().run(token.clone()));
    wait_until("the relay owns", async || {
        sales::outbox::owned::owner().is_some()
    })
    .await;

    let mut ids = HashSet::new();
    for i in 0..25 {
        ids.insert(enqueue(&pool, &json!({"n": i})).await);
    }
    // Too large for a notification (8000 bytes): announced by id and read.
    ids.insert(enqueue(&pool, &json!({"blob": "x".repeat(20_000)})).await);
    // Every row locked by another transaction: a claim (SKIP LOCKED) could take none.
    let mut lock = pool.begin().await.unwrap();
    let locked: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM outbox_events WHERE id <> (SELECT id FROM outbox_events ORDER BY octet_length(payload::text) DESC LIMIT 1) FOR UPDATE",
    )
    .fetch_all(&mut *lock)
    .await
    .unwrap();
    assert_eq!(locked.len(), 25);

    let got = received(&queue, ids.len()).await;
    assert_eq!(got, ids, "every event published once the writer saw it");
    lock.commit().await.unwrap();
    wait_until("all marked SENT", async || count(&pool, "SENT").await == 26).await;
    assert_eq!(relay.flight.held(), Vec::<Uuid>::new());

    token.cancel();
    running.await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_row_whose_owner_is_gone_is_claimed_after_the_takeover_delay(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let pool = stack.sales_db.clone();
    let (topic, queue) = topic_and_queue().await;
    let proxy = Proxy::start(upstream()).await;
    let relay = relay(&pool, &proxy, topic).await;
    // Written by an instance that crashed before publishing.
    let dead_owner = Uuid::now_v7();
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO outbox_events (id, aggregate_type, aggregate_id, aggregate_version, event_type, payload, owner)
         VALUES ($1, 'order', $2, 1, 'ORDER_CREATED', '{}', $3) RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(Uuid::now_v7())
    .bind(dead_owner)
    .fetch_one(&pool)
    .await
    .unwrap();

    let now = Utc::now();
    let early = relay.run_once(now).await.unwrap();
    assert_eq!(
        early.claimed, 0,
        "its owner may still publish it: {early:?}"
    );
    let takeover = chrono::Duration::from_std(relay.config.takeover).unwrap();
    let late = relay
        .run_once(now + takeover + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!((late.claimed, late.sent), (1, 1), "{late:?}");
    assert_eq!(received(&queue, 1).await, HashSet::from([id]));
    assert_eq!(count(&pool, "SENT").await, 1);
}

#[sqlx::test(migrations = false)]
async fn a_broker_outage_on_the_fast_path_charges_nothing_and_the_claim_path_delivers(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let pool = stack.sales_db.clone();
    let (topic, queue) = topic_and_queue().await;
    let proxy = Proxy::start(upstream()).await;
    let relay = relay(&pool, &proxy, topic).await;
    let token = CancellationToken::new();
    let running = tokio::spawn(relay.clone().run(token.clone()));
    wait_until("the relay owns", async || {
        sales::outbox::owned::owner().is_some()
    })
    .await;

    proxy.set_down(true);
    let mut ids = HashSet::new();
    for i in 0..5 {
        ids.insert(enqueue(&pool, &json!({"n": i})).await);
    }
    wait_until("the fast path gave the rows up", async || {
        relay.flight.held().is_empty()
    })
    .await;
    let charged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox_events WHERE retry_count > 0 OR status <> 'PENDING'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(charged, 0, "an outage is not the events' fault");
    token.cancel();
    running.await.unwrap();

    // The broker is back; past the takeover delay any claim publishes them.
    proxy.set_down(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = Utc::now() + chrono::Duration::from_std(relay.config.takeover).unwrap();
    let report = relay.drain_at(later).await.unwrap();
    assert_eq!(report.sent, 5, "{report:?}");
    assert_eq!(received(&queue, 5).await, ids);
    assert_eq!(count(&pool, "SENT").await, 5);
}

#[sqlx::test(migrations = false)]
async fn marks_ride_in_a_callers_transaction_and_come_back_when_it_rolls_back(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let pool = stack.sales_db.clone();
    let (topic, queue) = topic_and_queue().await;
    let proxy = Proxy::start(upstream()).await;
    let relay = relay(&pool, &proxy, topic).await;
    let token = CancellationToken::new();
    let running = tokio::spawn(relay.clone().run(token.clone()));
    wait_until("the relay owns", async || {
        sales::outbox::owned::owner().is_some()
    })
    .await;
    let ids: HashSet<Uuid> = [
        enqueue(&pool, &json!({"n": 1})).await,
        enqueue(&pool, &json!({"n": 2})).await,
    ]
    .into();
    assert_eq!(received(&queue, 2).await, ids);
    wait_until("published, waiting for a mark", async || {
        relay.flight.unmarked() == 2
    })
    .await;

    // A transaction carries the marks, then rolls back: they wait for the next mark.
    let mut tx = pool.begin().await.unwrap();
    let marks = sales::outbox::owned::ride(&relay.flight, &mut tx)
        .await
        .unwrap()
        .expect("marks to carry");
    assert_eq!(relay.flight.unmarked(), 0);
    tx.rollback().await.unwrap();
    drop(marks);
    assert_eq!(relay.flight.unmarked(), 2);
    assert_eq!(count(&pool, "SENT").await, 0);

    // Another commits them.
    let mut tx = pool.begin().await.unwrap();
    let marks = sales::outbox::owned::ride(&relay.flight, &mut tx)
        .await
        .unwrap()
        .expect("marks to carry");
    tx.commit().await.unwrap();
    marks.confirm();
    assert_eq!(count(&pool, "SENT").await, 2);
    assert!(relay.flight.held().is_empty());
    token.cancel();
    running.await.unwrap();
}
