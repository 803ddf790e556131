//! Outbox relay benchmark against LocalStack: prints figures, never fails on time.
//!
//! 1. Lag: rows committed at a steady rate into a running sales' outbox (each
//!    commit notifies the relay); lag = `sent_at - created_at`, as percentiles.
//! 2. Drain: a backlog written while sales is stopped, drained when it starts;
//!    throughput from the first to the last `sent_at`.
//! 3. Ceiling: the same number of envelopes published straight with `PublishBatch`
//!    (10 per call, the relay's concurrency) from this process; the ratio says how
//!    much of the broker's speed the relay keeps.
//!
//! Run: `cargo build --release --bins && cargo bench -p system-tests --bench outbox_relay`
//! (with LocalStack up and the AWS variables exported, as `scripts/test` does).
//! Knobs: BENCH_RATE (rows/s, 200), BENCH_SECS (5), BENCH_DRAIN (2000), BENCH_RUNS (3),
//! BENCH_MARKDOWN (append a markdown section to this file; `scripts/bench` does).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use chrono::Utc;
use messaging::Envelope;
use serde_json::json;
use sqlx::PgPool;
use system_tests::{
    Stack, StackOptions,
    bench::{knob, markdown_file, percentile},
};
use uuid::Uuid;

fn payload() -> serde_json::Value {
    json!({
        "id": Uuid::new_v4(), "customer_id": "bench", "status": "PENDING_SHIPMENT",
        "items": [{"product_id": "SKU-KEYBOARD", "quantity": 1}, {"product_id": "SKU-MOUSE", "quantity": 2}],
        "shipping_address": {"recipient": "Bench", "line1": "1 Example Street", "city": "Berlin",
                             "postal_code": "10115", "country": "DE"},
        "requires_manual_review": false, "fallback_used": false, "delivery_id": null, "version": 1,
        "created_at": Utc::now(), "updated_at": Utc::now()
    })
}

async fn insert(pool: &PgPool, tag: &str) {
    sqlx::query(
        "INSERT INTO outbox_events (id, aggregate_type, aggregate_id, aggregate_version, event_type, payload)
         VALUES ($1, 'order', $2, 1, $3, $4)",
    )
    .bind(Uuid::now_v7())
    .bind(Uuid::new_v4())
    .bind(tag)
    .bind(payload())
    .execute(pool)
    .await
    .unwrap();
}

async fn wait_sent(pool: &PgPool, tag: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox_events WHERE event_type = $1 AND status <> 'SENT'",
        )
        .bind(tag)
        .fetch_one(pool)
        .await
        .unwrap();
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} rows of {tag} still unsent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let (rate, secs, drain, runs) = (
        knob("BENCH_RATE", 200),
        knob("BENCH_SECS", 5),
        knob("BENCH_DRAIN", 2000),
        knob("BENCH_RUNS", 3),
    );
    let mut stack = Stack::start_with(StackOptions {
        broker: true,
        ..StackOptions::default()
    })
    .await;
    let pool = stack.db("sales").await;
    let sdk = messaging::aws::sdk_config().await;
    let topic_arn = messaging::provision(
        &sdk,
        &messaging::Topology {
            topic_name: stack.topic_name.clone(),
            queues: vec![],
        },
    )
    .await
    .unwrap()
    .topic_arn;
    println!(
        "outbox relay benchmark: {rate} rows/s for {secs} s, drain of {drain}, {runs} runs (medians)"
    );

    let (mut p50s, mut p95s, mut p99s, mut maxs, mut drains, mut ceilings) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        // 1. Lag at a steady rate.
        let tag = format!("BENCH_LAG_{run}");
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let mut ticker = tokio::time::interval(interval);
        for _ in 0..rate * secs {
            ticker.tick().await;
            insert(&pool, &tag).await;
        }
        wait_sent(&pool, &tag, Duration::from_secs(120)).await;
        let mut lags: Vec<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM (sent_at - created_at))::float8 * 1000 FROM outbox_events WHERE event_type = $1",
        )
        .bind(&tag)
        .fetch_all(&pool)
        .await
        .unwrap();
        lags.sort_by(f64::total_cmp);
        p50s.push(percentile(&lags, 0.50));
        p95s.push(percentile(&lags, 0.95));
        p99s.push(percentile(&lags, 0.99));
        maxs.push(*lags.last().unwrap());

        // 2. Drain a backlog written while sales is down.
        stack.sales.stop().await;
        let tag = format!("BENCH_DRAIN_{run}");
        for _ in 0..drain {
            insert(&pool, &tag).await;
        }
        stack.sales.start().await;
        wait_sent(&pool, &tag, Duration::from_secs(300)).await;
        let span: f64 = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM (max(sent_at) - min(sent_at)))::float8 FROM outbox_events WHERE event_type = $1",
        )
        .bind(&tag)
        .fetch_one(&pool)
        .await
        .unwrap();
        drains.push(drain as f64 / span.max(0.001));

        // 3. Ceiling: the same volume straight to SNS, same concurrency.
        let publisher = messaging::Publisher::new(&sdk, topic_arn.clone(), 4);
        let envelopes: Vec<Envelope> = (0..drain)
            .map(|_| Envelope {
                event_id: Uuid::now_v7(),
                event_type: "BENCH_RAW".into(),
                aggregate_type: "order".into(),
                aggregate_id: Uuid::new_v4(),
                aggregate_version: 1,
                occurred_at: Utc::now(),
                schema_version: 1,
                payload: payload(),
                trace: Default::default(),
            })
            .collect();
        let started = Instant::now();
        let mut sent = 0;
        for chunk in envelopes.chunks(100) {
            sent += publisher
                .publish(chunk)
                .await
                .iter()
                .filter(|(_, r)| r.is_ok())
                .count();
        }
        ceilings.push(sent as f64 / started.elapsed().as_secs_f64());
        println!(
            "run {run}: lag p50 {:.1} ms p95 {:.1} ms p99 {:.1} ms max {:.1} ms; drain {:.0} events/s; raw PublishBatch {:.0} events/s",
            p50s[run as usize],
            p95s[run as usize],
            p99s[run as usize],
            maxs[run as usize],
            drains[run as usize],
            ceilings[run as usize]
        );
    }
    let (drain_m, ceiling_m) = (median(drains), median(ceilings));
    let (p50, p95, p99, max) = (median(p50s), median(p95s), median(p99s), median(maxs));
    println!("median lag: p50 {p50:.1} ms, p95 {p95:.1} ms, p99 {p99:.1} ms, max {max:.1} ms");
    println!(
        "median drain: {drain_m:.0} events/s; raw PublishBatch ceiling: {ceiling_m:.0} events/s; ratio {:.2}",
        drain_m / ceiling_m
    );
    if let Some(mut file) = markdown_file() {
        use std::io::Write;
        writeln!(
            file,
            "## Outbox relay\n\nMedian of {runs} runs; lag = commit to SNS publish at {rate} rows/s \
             for {secs} s; drain of a {drain}-row backlog vs a raw `PublishBatch` loop on the same LocalStack.\n\n\
             | figure | value |\n|---|---|\n\
             | lag p50 / p95 / p99 / max | {p50:.1} / {p95:.1} / {p99:.1} / {max:.1} ms |\n\
             | drain | {drain_m:.0} events/s |\n\
             | raw PublishBatch | {ceiling_m:.0} events/s |\n\
             | ratio drain / raw | {:.2} |\n",
            drain_m / ceiling_m
        )
        .unwrap();
    }
    pool.close().await;
    stack.shutdown().await;
}
