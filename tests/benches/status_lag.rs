//! Status lag benchmark: how long after a courier's pickup the customer sees the order
//! SHIPPED, with the real binaries, PostgreSQL and LocalStack, reconciliation off (only
//! delivery's events can move the order). Prints figures, never fails on time.
//!
//! For each of `BENCH_ORDERS` orders (placed first, each waiting for its delivery): the
//! courier's `PICKED_UP` is posted to delivery, then `GET /orders/{id}` is polled every
//! `BENCH_POLL_MS` until it answers SHIPPED. Two figures per order:
//! - seen: from sending the pickup to the first read showing SHIPPED (what a customer
//!   polling would see, within the poll interval);
//! - committed: from delivery's history row of the pickup to sales' history row of
//!   SHIPPED (both `now()` of the one PostgreSQL server: no clock skew).
//!
//! Run: `cargo build --release --bins && cargo bench -p system-tests --bench status_lag`
//! (with LocalStack up and the AWS variables exported, as `scripts/test` does).
//! Knobs: BENCH_ORDERS (50), BENCH_POLL_MS (5).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use contracts::orders::{Order, OrderStatus};
use serde_json::json;
use system_tests::{STAFF_TOKEN, Stack, StackOptions};
use uuid::Uuid;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{name:>10}: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n = {})",
        percentile(&ms, 0.5),
        percentile(&ms, 0.9),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or_default(),
        ms.len()
    );
}

async fn order(http: &reqwest::Client, stack: &Stack, id: Uuid) -> Order {
    http.get(format!("{}/orders/{id}", stack.sales.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let orders = knob("BENCH_ORDERS", 50) as usize;
    let poll = Duration::from_millis(knob("BENCH_POLL_MS", 5));
    let stack = Stack::start_with(StackOptions {
        delivery_events: true,
        sales_env: vec![
            ("SALES_RECONCILIATION_ENABLED", "false".into()),
            // The bench's own load must not be refused by the per-client limit.
            ("SALES_RATE_LIMIT_PER_SECOND", "0".into()),
        ],
        ..StackOptions::default()
    })
    .await;
    let http = reqwest::Client::new();
    let (sales, delivery) = (stack.db("sales").await, stack.db("delivery").await);

    let mut placed = Vec::with_capacity(orders);
    for i in 0..orders {
        let response = http
            .post(format!("{}/orders", stack.sales.base_url()))
            .json(&system_tests::order_body(
                &format!("lag{i}"),
                &[("SKU-MOUSE", 1)],
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let o: Order = response.json().await.unwrap();
        placed.push(o.id);
    }
    let mut deliveries = Vec::with_capacity(orders);
    for id in &placed {
        let deadline = Instant::now() + Duration::from_secs(30);
        let delivery_id = loop {
            if let Some(d) = order(&http, &stack, *id).await.delivery_id {
                break d;
            }
            assert!(Instant::now() < deadline, "order {id} got no delivery");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        deliveries.push((*id, delivery_id));
    }

    let mut seen = Vec::with_capacity(orders);
    for (order_id, delivery_id) in &deliveries {
        let started = Instant::now();
        let response = http
            .post(format!(
                "{}/deliveries/{delivery_id}/status",
                stack.delivery.base_url()
            ))
            .bearer_auth(STAFF_TOKEN)
            .json(&json!({"status": "PICKED_UP"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        loop {
            if order(&http, &stack, *order_id).await.status == OrderStatus::Shipped {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "order {order_id} not SHIPPED"
            );
            tokio::time::sleep(poll).await;
        }
        seen.push(started.elapsed().as_secs_f64() * 1e3);
    }

    let mut committed = Vec::with_capacity(orders);
    for (order_id, delivery_id) in &deliveries {
        let picked: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
            "SELECT changed_at FROM delivery_status_history WHERE delivery_id = $1 AND to_status = 'PICKED_UP'",
        )
        .bind(delivery_id)
        .fetch_one(&delivery)
        .await
        .unwrap();
        let shipped: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
            "SELECT changed_at FROM order_status_history WHERE order_id = $1 AND to_status = 'SHIPPED'",
        )
        .bind(order_id)
        .fetch_one(&sales)
        .await
        .unwrap();
        committed.push((shipped - picked).num_microseconds().unwrap_or(0) as f64 / 1e3);
    }

    println!(
        "status lag, pickup → order SHIPPED ({orders} orders, one at a time, reads every {} ms):",
        poll.as_millis()
    );
    summary("seen", seen);
    summary("committed", committed);
    stack.shutdown().await;
}
