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

use contracts::{delivery::DeliveryStatus, orders::OrderStatus};
use system_tests::{
    Stack, StackOptions,
    bench::{knob, percentile},
    order_request,
};

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
    let (api, courier) = (stack.sales_api(), stack.delivery_api());
    let (sales, delivery) = (stack.db("sales").await, stack.db("delivery").await);

    let mut placed = Vec::with_capacity(orders);
    for i in 0..orders {
        let order = order_request(&format!("lag{i}"), &[("SKU-MOUSE", 1)]);
        placed.push(api.place(&order).await.id);
    }
    let mut deliveries = Vec::with_capacity(orders);
    for id in &placed {
        let delivery_id = api.wait_for_delivery(*id, Duration::from_secs(30)).await;
        deliveries.push((*id, delivery_id));
    }

    let mut seen = Vec::with_capacity(orders);
    for (order_id, delivery_id) in &deliveries {
        let started = Instant::now();
        courier
            .set_status(*delivery_id, DeliveryStatus::PickedUp)
            .await;
        loop {
            if api.get_order(*order_id).await.status == OrderStatus::Shipped {
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
