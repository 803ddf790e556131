//! The order cache with real processes: sales caching in the shared Redis
//! (through a TCP proxy the test cuts), under a steady read load of existing
//! orders. The hit rate from sales' own `/metrics` stays above 90 %; with Redis
//! cut, reads and writes still answer 200/201 at database speed and
//! `cache_available` says 0; once Redis is back, reads hit again and no older
//! status is served for an order cancelled meanwhile.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use contracts::orders::{Order, OrderStatus};
use prometheus_parse::{Scrape, Value};
use system_tests::{SalesClient, Stack, StackOptions, order_request, proxy::Proxy};
use uuid::Uuid;

fn redis_addr() -> std::net::SocketAddr {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    url.trim_start_matches("redis://")
        .trim_end_matches('/')
        .replace("localhost", "127.0.0.1")
        .parse()
        .unwrap()
}

async fn scrape(sales: &SalesClient) -> Scrape {
    let text = sales.metrics().await;
    // prometheus-parse ends labels at the first `}`: drop the lines whose label
    // values hold one (route templates), none of which are read here.
    let lines = text
        .lines()
        .filter(|l| l.starts_with('#') || !l.contains("/{"))
        .map(|l| Ok(l.to_owned()));
    Scrape::parse(lines).unwrap()
}

fn metric(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Cache lookups by result since the scrape `before`.
fn lookups(before: &Scrape, after: &Scrape) -> [f64; 4] {
    ["hit", "miss", "error", "corrupt"].map(|result| {
        let labels = [("cache", "orders"), ("result", result)];
        metric(after, "cache_requests_total", &labels)
            - metric(before, "cache_requests_total", &labels)
    })
}

async fn place(sales: &SalesClient, customer: &str) -> Order {
    sales
        .place(&order_request(customer, &[("SKU-MOUSE", 1)]))
        .await
}

/// `rounds` reads of every order in turn; the hit rate of those reads.
async fn steady_reads(sales: &SalesClient, ids: &[Uuid], rounds: usize) -> f64 {
    let before = scrape(sales).await;
    for _ in 0..rounds {
        for id in ids {
            sales.get_order(*id).await;
        }
    }
    let [hit, miss, error, corrupt] = lookups(&before, &scrape(sales).await);
    let total = hit + miss + error + corrupt;
    assert_eq!(
        total as usize,
        rounds * ids.len(),
        "every read looked in the cache"
    );
    hit / total
}

#[tokio::test]
async fn the_cache_serves_steady_reads_and_survives_redis_being_cut() {
    let proxy = Proxy::start(redis_addr()).await;
    let prefix = format!("systest:{}:", Uuid::new_v4().simple());
    let stack = Stack::start_with(StackOptions {
        sales_env: vec![
            (
                "SALES_REDIS_URL",
                format!("redis://127.0.0.1:{}", proxy.port),
            ),
            ("SALES_REDIS_KEY_PREFIX", prefix),
            ("SALES_REDIS_TIMEOUT_MS", "100".into()),
            // This test reads as fast as it can from one address.
            ("SALES_RATE_LIMIT_PER_SECOND", "0".into()),
        ],
        ..StackOptions::default()
    })
    .await;
    let sales = stack.sales_api();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(place(&sales, &format!("cache-{i}")).await.id);
    }

    let rate = steady_reads(&sales, &ids, 20).await;
    println!(
        "cache hit rate under steady reads of 10 orders: {:.1} %",
        rate * 100.0
    );
    assert!(rate > 0.9, "hit rate {rate}");
    assert_eq!(metric(&scrape(&sales).await, "cache_available", &[]), 1.0);

    // Redis cut: everything still answers, at database speed.
    proxy.set_down(true);
    let started = Instant::now();
    let placed = place(&sales, "cache-during-cut").await;
    sales.cancel(ids[0]).await;
    for id in ids.iter().chain([&placed.id]) {
        sales.get_order(*id).await;
    }
    let elapsed = started.elapsed();
    println!("Redis cut: 1 order placed, 1 cancelled, 11 reads in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(sales.get_order(ids[0]).await.status, OrderStatus::Cancelled);
    let down = scrape(&sales).await;
    assert_eq!(metric(&down, "cache_available", &[]), 0.0);
    assert!(metric(&down, "cache_requests_total", &[("result", "error")]) >= 1.0);

    // Back: the cancelled order is never read older, and reads hit again.
    proxy.set_down(false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sales.get_order(ids[0]).await.status, OrderStatus::Cancelled);
    ids.push(placed.id);
    // The first round refills what the cut left out.
    steady_reads(&sales, &ids, 1).await;
    let rate = steady_reads(&sales, &ids, 10).await;
    println!(
        "cache hit rate after Redis came back: {:.1} %",
        rate * 100.0
    );
    assert!(rate > 0.9, "hit rate {rate}");
    assert_eq!(sales.get_order(ids[0]).await.status, OrderStatus::Cancelled);
    assert_eq!(metric(&scrape(&sales).await, "cache_available", &[]), 1.0);
    assert!(stack.shutdown().await, "stopped cleanly");
}
