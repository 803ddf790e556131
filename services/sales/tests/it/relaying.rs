//! The outbox relay against the real SNS API (LocalStack, through a proxy that cuts it),
//! with the shipped outbox defaults and a chosen clock: a broker outage, however many
//! half-open trials it lasts, makes no dead letter; an event the broker itself refuses
//! becomes one after its own refusals and age, and raises `OUTBOX_DEAD_LETTERS`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use platform::config::Env;
use resilience::{BreakerConfig, CircuitBreaker};
use sales::outbox::relay::Relay;
use serde_json::{Value, json};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use testkit::{expect_json, proxy::Proxy};
use uuid::Uuid;

use crate::Stack;

fn localstack() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

/// A topic of this test's own, created straight on the emulator.
async fn topic() -> String {
    let sdk = messaging::aws::emulator_sdk_config(&localstack()).await;
    let topology = messaging::Topology {
        topic_name: format!("relay-it-{}", Uuid::new_v4().simple()),
        queues: Vec::new(),
    };
    messaging::provision(&sdk, &topology)
        .await
        .unwrap()
        .topic_arn
}

/// A relay with the shipped outbox settings, publishing through `proxy`, behind `breaker`.
async fn relay(pool: &PgPool, proxy: &Proxy, breaker: CircuitBreaker) -> Relay {
    let config = sales::Config::from(&Env::from_map("SALES_", Default::default()))
        .unwrap()
        .outbox;
    let sdk =
        messaging::aws::emulator_sdk_config(&format!("http://127.0.0.1:{}", proxy.port)).await;
    Relay {
        pool: pool.clone(),
        publisher: messaging::Publisher::new(&sdk, topic().await, config.max_in_flight),
        breaker,
        config,
        pause_before_mark: Duration::ZERO,
        flight: Default::default(),
    }
}

async fn enqueue(pool: &PgPool, payload: &Value) -> Uuid {
    let mut tx = pool.begin().await.unwrap();
    let id = sales::outbox::enqueue(&mut tx, Uuid::now_v7(), 1, "ORDER_CREATED", payload)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn rows(pool: &PgPool) -> Vec<(String, i32, Option<String>)> {
    sqlx::query_as("SELECT status, retry_count, last_error FROM outbox_events ORDER BY created_at")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn upstream() -> std::net::SocketAddr {
    let url = localstack();
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    authority.replace("localhost", "127.0.0.1").parse().unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_broker_outage_of_any_length_makes_no_dead_letter(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let pool = &stack.sales_db;
    for i in 0..30 {
        enqueue(pool, &json!({"n": i})).await;
    }
    let proxy = Proxy::start(upstream()).await;
    // The shipped breaker numbers, but a 50 ms reset instead of 30 s: the half-open trials
    // of a ten-minute outage (20) happen in about a second.
    let reset = Duration::from_millis(50);
    let breaker = CircuitBreaker::new(BreakerConfig::new(
        "broker",
        50,
        reset,
        5,
        Duration::from_secs(5),
    ));
    let relay = relay(pool, &proxy, breaker.clone()).await;
    proxy.set_down(true);

    // The clock the rows are scheduled by moves 30 s per step: 25 trials are 12.5 minutes.
    let mut now: DateTime<Utc> = Utc::now();
    let (mut trials, mut steps) = (0, 0);
    while trials < 25 {
        now += chrono::Duration::seconds(30);
        let report = relay.run_once(now).await.unwrap();
        assert_eq!((report.sent, report.dead), (0, 0), "{report:?}");
        if report.trial {
            trials += 1;
            assert!(
                report.claimed <= sales::outbox::relay::TRIAL_BATCH as usize,
                "a trial risks one PublishBatch: {report:?}"
            );
        }
        steps += 1;
        tokio::time::sleep(reset + Duration::from_millis(10)).await;
    }
    assert!(
        breaker.snapshot().opened_total >= 25,
        "{:?}",
        breaker.snapshot()
    );
    let during = rows(pool).await;
    assert_eq!(during.len(), 30);
    for (status, refusals, error) in &during {
        assert_eq!(
            (status.as_str(), *refusals),
            ("PENDING", 0),
            "after {steps} steps"
        );
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("PublishBatch failed"))
                || error.is_none()
        );
    }

    // The broker is back: everything is published on the next trial and the steps after it,
    // with no staff action.
    proxy.set_down(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        now += chrono::Duration::seconds(30);
        relay.run_once(now).await.unwrap();
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status <> 'SENT'")
                .fetch_one(pool)
                .await
                .unwrap();
        if left == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{left} rows not sent");
        tokio::time::sleep(reset + Duration::from_millis(10)).await;
    }
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status = 'FAILED'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(failed, 0);
}

#[sqlx::test(migrations = false)]
async fn an_event_the_broker_refuses_dead_letters_after_its_own_refusals_and_raises_the_alert(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let stack = Stack::start(options).await;
    let pool = &stack.sales_db;
    let good = enqueue(pool, &json!({"ok": true})).await;
    // Over SNS's 256 KiB: the broker refuses this entry, whenever it is sent.
    let poison = enqueue(pool, &json!({"blob": "x".repeat(300_000)})).await;
    let proxy = Proxy::start(upstream()).await;
    let config = sales::Config::from(&Env::from_map("SALES_", Default::default()))
        .unwrap()
        .breakers
        .broker;
    let relay = relay(pool, &proxy, CircuitBreaker::new(config)).await;
    assert_eq!(
        (relay.config.max_attempts, relay.config.dead_letter_min_age),
        (5, Duration::from_secs(300)),
        "the shipped dead-letter budget"
    );
    let status = |id: Uuid| async move {
        sqlx::query_as::<_, (String, i32)>(
            "SELECT status, retry_count FROM outbox_events WHERE id = $1",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
    };

    // Five refusals within the first quarter minute (backoff 1, 2, 4, 8 s): not yet a dead
    // letter, its first refusal is younger than five minutes.
    let t0 = Utc::now();
    for (i, at) in [0, 1, 3, 7, 15].into_iter().enumerate() {
        let report = relay
            .run_once(t0 + chrono::Duration::seconds(at))
            .await
            .unwrap();
        assert_eq!(
            (report.refused, report.dead),
            (1, 0),
            "step {i}: {report:?}"
        );
    }
    assert_eq!(
        status(good).await,
        ("SENT".into(), 0),
        "its neighbour went out"
    );
    assert_eq!(status(poison).await, ("PENDING".into(), 5));
    let alerts = stack
        .alerts
        .run_once(t0 + chrono::Duration::seconds(20))
        .await;
    assert!(
        alerts
            .iter()
            .all(|t| t.alert.as_str() != "OUTBOX_DEAD_LETTERS"),
        "{alerts:?}"
    );

    // Refused again once its first refusal is five minutes old: now a dead letter.
    let report = relay
        .run_once(t0 + chrono::Duration::seconds(300))
        .await
        .unwrap();
    assert_eq!(report.dead, 1, "{report:?}");
    assert_eq!(status(poison).await, ("FAILED".into(), 6));
    let raised = stack.alerts.run_once(Utc::now()).await;
    let alert = raised
        .iter()
        .find(|t| t.alert.as_str() == "OUTBOX_DEAD_LETTERS")
        .expect("OUTBOX_DEAD_LETTERS raised");
    assert_eq!(alert.value, 1.0);
    let health: Value = expect_json(stack.api().get("/health/reliability").await, 200).await;
    assert_eq!(health["failedEventCount"], 1);
    assert!(health["oldestFailedAgeSeconds"].as_f64().is_some());
    assert!(
        health["activeAlerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["alert"] == "OUTBOX_DEAD_LETTERS"),
        "{health}"
    );
}
