//! Order placement benchmark: prints figures, never fails on time.
//!
//! With the three release binaries running as processes (and the outbox relayed
//! to LocalStack), closed-loop clients place orders through `POST /orders` at
//! several concurrencies. For each concurrency:
//!
//! 1. **Orders**: orders/s and latency p50/p95/p99 of the whole placement
//!    (reservation at product, the order transaction, delivery at delivery).
//! 2. **Ceiling**: `pgbench` runs `bench/pgbench/place_order.sql`, the same
//!    transaction sales commits for an order (order, items, history, outbox row,
//!    delivery retry, idempotency key), with the same number of clients against a
//!    database migrated like sales' on the same PostgreSQL. The ratio says what
//!    share of the database's own ceiling an order through the system reaches.
//!
//! 3. **Whole-order ceiling**: `pgbench` runs `bench/pgbench/whole_order.sql`, the five
//!    transactions an order needs across the three services' schemas (reserve, record,
//!    create the delivery, store its id, commit the reservation with the events marked
//!    SENT), in one database holding the three schemas, same clients, same products.
//!
//! While the orders run, the **CPU they keep busy**: cores used by each process group (the
//! same groups as below) and by the whole machine (`/proc/stat`), summed over the runs of a
//! concurrency, with the same groups' CPU per order under that load. It tells whether the
//! load is bound by the cores and whose share of them it is. Work that trails the orders (a
//! consumer's backlog, the relay's last batch) falls partly after the window.
//!
//! Then **the cost of one order**: once the events the load left behind are published and
//! consumed (their work is neither idle rate nor order cost), 500 sequential orders, with the transactions each
//! database committed per order (`pg_stat_database.xact_commit`, read-only ones included,
//! the background workers' idle rate subtracted) and the CPU seconds per order of each
//! process (sales, product, delivery, PostgreSQL's backends of those databases and its
//! background processes, LocalStack), from `/proc`, and the requests the three services
//! made to the broker per order (their `broker_requests_total`, by operation).
//!
//! Then **fail-fast**: product hung (SIGSTOP) with its breaker open, the same load
//! at one concurrency; orders are accepted with the availability flag, and the
//! p99 is compared with the all-up run.
//!
//! Run: `cargo build --release --bins && cargo bench -p system-tests --bench orders`
//! (LocalStack up and the AWS variables exported, as `scripts/test` does), or
//! `scripts/bench` for every benchmark and a results table.
//! Knobs: BENCH_CONCURRENCY (`1,8,32`), BENCH_SECS (8), BENCH_RUNS (3),
//! BENCH_FAILFAST_CONCURRENCY (8), BENCH_BROKER (`on`; `off`: no relay and no consumer, the
//! events wait in the outbox — to see the order path without the emulator's CPU),
//! BENCH_MARKDOWN (append a markdown section to this file).
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sqlx::{Connection, PgConnection};
use system_tests::{
    SalesClient, Stack, StackOptions,
    bench::{knob, markdown_file, markdown_table},
    order_request, postgres_base,
};
use uuid::Uuid;

const PRODUCTS: [&str; 3] = ["SKU-KEYBOARD", "SKU-MOUSE", "SKU-DOCK"];

fn concurrencies() -> Vec<usize> {
    std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,8,32".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect()
}

/// Latency percentiles and throughput of one run.
#[derive(Clone, Copy, Debug)]
struct Figures {
    per_second: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn percentile(sorted_micros: &[u64], p: f64) -> f64 {
    if sorted_micros.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted_micros.len() - 1) as f64).round() as usize;
    sorted_micros[rank] as f64 / 1000.0
}

fn figures(mut micros: Vec<u64>, elapsed: Duration, errors: u64) -> Figures {
    micros.sort_unstable();
    Figures {
        per_second: micros.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&micros, 50.0),
        p95_ms: percentile(&micros, 95.0),
        p99_ms: percentile(&micros, 99.0),
        errors,
    }
}

/// The median run by throughput; percentiles are medians of the runs' percentiles.
fn median(runs: &[Figures]) -> Figures {
    let med = |f: fn(&Figures) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Figures {
        per_second: med(|f| f.per_second),
        p50_ms: med(|f| f.p50_ms),
        p95_ms: med(|f| f.p95_ms),
        p99_ms: med(|f| f.p99_ms),
        errors: runs.iter().map(|f| f.errors).sum(),
    }
}

/// `concurrency` closed-loop clients placing orders for `secs`.
async fn order_load(sales: &str, concurrency: usize, secs: u64) -> Figures {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|client| {
            let http = http.clone();
            let url = format!("{sales}/orders");
            tokio::spawn(async move {
                let (mut micros, mut errors) = (Vec::new(), 0u64);
                let mut n = 0usize;
                while Instant::now() < until {
                    n += 1;
                    let body = order_request(
                        &format!("bench-{client}"),
                        &[(PRODUCTS[(client + n) % PRODUCTS.len()], 1)],
                    );
                    let sent = Instant::now();
                    let response = http
                        .post(&url)
                        .header("Idempotency-Key", Uuid::new_v4().to_string())
                        .header("X-API-Key", format!("bench-{client}"))
                        .json(&body)
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status() == 201 => {
                            let _ = r.bytes().await;
                            micros.push(sent.elapsed().as_micros() as u64);
                        }
                        _ => errors += 1,
                    }
                }
                (micros, errors)
            })
        })
        .collect();
    let (mut micros, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (m, e) = task.await.unwrap();
        micros.extend(m);
        errors += e;
    }
    figures(micros, start.elapsed(), errors)
}

/// A new empty database named `{prefix}_<random>`; its name.
async fn create_database(prefix: &str) -> String {
    let name = format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let mut admin = PgConnection::connect(&format!("{}/postgres", postgres_base()))
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    name
}

/// A fresh database holding the three services' schemas (`sales`, `product`, `delivery`),
/// each migrated as the service migrates its own database, with the bench's products.
async fn whole_order_database() -> String {
    let name = create_database("bench_whole").await;
    for schema in ["sales", "product", "delivery"] {
        let mut conn = PgConnection::connect(&format!(
            "{}/{name}?options=-c%20search_path%3D{schema}",
            postgres_base()
        ))
        .await
        .unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let migrations =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../migrations/{schema}"));
        sqlx::migrate::Migrator::new(migrations)
            .await
            .unwrap()
            .run(&mut conn)
            .await
            .unwrap();
    }
    let mut conn = PgConnection::connect(&format!("{}/{name}", postgres_base()))
        .await
        .unwrap();
    for product in PRODUCTS {
        sqlx::query(
            "INSERT INTO product.products (id, name, price_cents, stock_on_hand) VALUES ($1, $1, 100, 100000000)",
        )
        .bind(product)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    name
}

/// A fresh database with sales' schema, for pgbench.
async fn ceiling_database() -> String {
    let name = create_database("bench_ceiling").await;
    let mut conn = PgConnection::connect(&format!("{}/{name}", postgres_base()))
        .await
        .unwrap();
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sales");
    sqlx::migrate::Migrator::new(migrations)
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    name
}

async fn drop_database(name: &str) {
    let mut admin = PgConnection::connect(&format!("{}/postgres", postgres_base()))
        .await
        .unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
}

/// `pgbench` with `script` (under `bench/pgbench/`); latencies from its per-run log.
fn pgbench(database: &str, script: &str, concurrency: usize, secs: u64, dir: &Path) -> Figures {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bench/pgbench")
        .join(script);
    let prefix = dir.join(format!("pgbench-{concurrency}-{}", Uuid::new_v4().simple()));
    let url = format!("{}/{database}", postgres_base());
    let output = Command::new("pgbench")
        .args(["--no-vacuum", "--protocol=prepared", "--log"])
        .arg(format!("--log-prefix={}", prefix.display()))
        .arg(format!("--client={concurrency}"))
        .arg(format!("--jobs={}", concurrency.min(2)))
        .arg(format!("--time={secs}"))
        .arg(format!("--file={}", script.display()))
        .arg(&url)
        .output()
        .expect("pgbench is installed (postgresql-client / postgresql-contrib)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pgbench failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let failed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // Log lines: client_id transaction_no time_us script_no time_epoch time_us_part
    let mut micros = Vec::new();
    let (mut first, mut last) = (f64::MAX, 0f64);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&*prefix.file_name().unwrap().to_string_lossy())
        {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 6 {
                continue;
            }
            let latency: u64 = fields[2].parse().unwrap_or(0);
            let end = fields[4].parse::<f64>().unwrap_or(0.0)
                + fields[5].parse::<f64>().unwrap_or(0.0) / 1e6;
            first = first.min(end - latency as f64 / 1e6);
            last = last.max(end);
            micros.push(latency);
        }
        let _ = std::fs::remove_file(&path);
    }
    let elapsed = Duration::from_secs_f64((last - first).max(1e-3));
    figures(micros, elapsed, failed)
}

async fn set_stock(stack: &Stack) {
    let product = stack.product_api();
    for id in PRODUCTS {
        product.set_stock(id, 100_000_000).await;
    }
}

async fn breaker_state(sales: &str, breaker: &str) -> String {
    let view = SalesClient::new(sales).reliability().await;
    view["circuitBreakerStates"][breaker]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Committed transactions of each of `databases` so far.
async fn xact_commits(databases: &[String]) -> Vec<i64> {
    let mut conn = PgConnection::connect(&format!("{}/postgres", postgres_base()))
        .await
        .unwrap();
    let mut out = Vec::new();
    for db in databases {
        let n: i64 =
            sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
                .bind(db)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        out.push(n);
    }
    out
}

/// CPU time (user + system) of a process so far, in seconds; 0 if it is gone.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// PostgreSQL's processes that work for `databases`: their backends and the background
/// processes (WAL writer, checkpointer, …).
async fn postgres_pids(databases: &[String]) -> Vec<u32> {
    let mut conn = PgConnection::connect(&format!("{}/postgres", postgres_base()))
        .await
        .unwrap();
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = ANY($1) OR backend_type NOT IN ('client backend', 'walsender')",
    )
    .bind(databases)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    pids.into_iter().map(|p| p as u32).collect()
}

/// The process listening on the AWS endpoint's port (LocalStack), if it can be found.
fn localstack_pid() -> Option<u32> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").ok()?;
    let port = endpoint.rsplit(':').next()?.trim_end_matches('/');
    let out = Command::new("ss")
        .args(["-ltnpH", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("pid=")? + 4;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// CPU seconds of each measured process group at one moment.
#[derive(Clone)]
struct CpuSample {
    by_group: Vec<(&'static str, f64)>,
    /// The whole machine's busy CPU seconds ([`machine_busy_seconds`]).
    machine: f64,
}

async fn cpu_sample(stack: &Stack, databases: &[String]) -> CpuSample {
    let pg: f64 = postgres_pids(databases)
        .await
        .into_iter()
        .map(cpu_seconds)
        .sum();
    let pid = |s: &system_tests::Service| s.pid().map_or(0.0, cpu_seconds);
    CpuSample {
        by_group: vec![
            ("sales", pid(&stack.sales)),
            ("product", pid(&stack.product)),
            ("delivery", pid(&stack.delivery)),
            ("PostgreSQL", pg),
            ("LocalStack", localstack_pid().map_or(0.0, cpu_seconds)),
        ],
        machine: machine_busy_seconds(),
    }
}

/// CPU seconds the whole machine spent busy so far (all cores; idle and iowait excluded).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (ticks.iter().sum::<f64>() - idle) / 100.0
}

/// CPU the order runs of one concurrency used, summed over its runs.
#[derive(Default)]
struct LoadCpu {
    seconds: f64,
    orders: f64,
    machine: f64,
    by_group: Vec<(&'static str, f64)>,
}

impl LoadCpu {
    fn add(&mut self, before: &CpuSample, after: &CpuSample, run: &Figures, secs: f64) {
        if self.by_group.is_empty() {
            self.by_group = before.by_group.iter().map(|(k, _)| (*k, 0.0)).collect();
        }
        for (i, (_, used)) in self.by_group.iter_mut().enumerate() {
            *used += (after.by_group[i].1 - before.by_group[i].1).max(0.0);
        }
        self.machine += (after.machine - before.machine).max(0.0);
        self.seconds += secs;
        self.orders += run.per_second * secs;
    }

    /// Cores each group kept busy, and the machine's.
    fn cores(&self) -> (Vec<(&'static str, f64)>, f64) {
        let per = |v: f64| v / self.seconds.max(f64::EPSILON);
        (
            self.by_group.iter().map(|(k, v)| (*k, per(*v))).collect(),
            per(self.machine),
        )
    }

    /// One markdown row: each group's cores (its CPU ms per order), then the machine's.
    fn markdown_row(&self, clients: usize) -> String {
        let (cores, machine) = self.cores();
        let groups: Vec<String> = cores
            .iter()
            .zip(self.ms_per_order())
            .map(|((_, cores), (_, ms))| format!("{cores:.2} ({ms:.2})"))
            .collect();
        format!("| {clients} | {} | {machine:.2} |", groups.join(" | "))
    }

    /// CPU ms per order of each group under this load.
    fn ms_per_order(&self) -> Vec<(&'static str, f64)> {
        self.by_group
            .iter()
            .map(|(k, v)| (*k, v * 1000.0 / self.orders.max(1.0)))
            .collect()
    }
}

/// What one order costs: transactions per database, CPU seconds per process and requests
/// to the broker.
struct Cost {
    orders: usize,
    tx_per_order: Vec<(&'static str, f64)>,
    cpu_ms_per_order: Vec<(&'static str, f64)>,
    broker_requests_per_order: Vec<(String, f64)>,
    /// How long the broker traffic the load phases left behind took to drain first.
    drained_after: Duration,
    /// Transactions per second each database committed while idle (what was subtracted).
    idle_tx_per_s: Vec<(&'static str, f64)>,
}

/// The three services' `broker_requests_total`, summed by operation.
async fn broker_requests(stack: &Stack) -> BTreeMap<String, f64> {
    let mut by_operation = BTreeMap::new();
    for service in [&stack.sales, &stack.product, &stack.delivery] {
        let text = reqwest::get(format!("{}/metrics", service.base_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("broker_requests_total{operation=\"") else {
                continue;
            };
            let (operation, value) = rest.split_once("\"}").unwrap();
            *by_operation.entry(operation.to_owned()).or_insert(0.0) +=
                value.trim().parse::<f64>().unwrap();
        }
    }
    by_operation
}

/// Rows of sales' outbox not yet published, and what they are (by event type, owned or
/// not, refused or not, due or not). Delivery's outbox is not relayed in this bench (its
/// stack is started without `delivery_events`: following a delivery is not part of placing
/// the order, and `status_lag` measures it), so delivery's status changes stay PENDING.
async fn outbox_pending(stack: &Stack) -> (i64, Vec<String>) {
    let (mut pending, mut kinds) = (0, Vec::new());
    for service in ["sales"] {
        let url = format!("{}/{}", postgres_base(), stack.databases[service]);
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let rows: Vec<(String, bool, bool, bool, i64)> = sqlx::query_as(
            "SELECT event_type, owner IS NOT NULL, retry_count > 0, next_attempt_at <= now(), count(*)
             FROM outbox_events WHERE status = 'PENDING' GROUP BY 1, 2, 3, 4",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for (event, owned, refused, due, n) in rows {
            pending += n;
            kinds.push(format!(
                "{service} {event} x{n} (owned {owned}, refused {refused}, due {due})"
            ));
        }
    }
    (pending, kinds)
}

/// Waits until the events the load left behind are published (sales' outbox holds no
/// PENDING row: a relay whose breaker opened under the load has not just paused) and
/// consumed (then no `PublishBatch` or `DeleteMessageBatch` for [`QUIET`]), at most 5
/// minutes, so that their work is not counted as the idle rate nor as the cost of the
/// measured orders; returns how long it took. With the broker off there is nothing to
/// wait for.
async fn drain_broker(stack: &Stack, broker: bool) -> Duration {
    const QUIET: Duration = Duration::from_secs(2);
    let started = Instant::now();
    if broker {
        let mut reported = Duration::ZERO;
        loop {
            let (pending, kinds) = outbox_pending(stack).await;
            if pending == 0 {
                break;
            }
            if started.elapsed() >= reported + Duration::from_secs(30) {
                reported = started.elapsed();
                eprintln!(
                    "drain: {pending} outbox rows still PENDING after {:.0} s: {}",
                    reported.as_secs_f64(),
                    kinds.join("; ")
                );
            }
            if started.elapsed() >= Duration::from_secs(300) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let moving = |at: &BTreeMap<String, f64>| {
        ["PublishBatch", "DeleteMessageBatch"]
            .iter()
            .map(|op| at.get(*op).copied().unwrap_or(0.0))
            .sum::<f64>()
    };
    let mut last = moving(&broker_requests(stack).await);
    while started.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(QUIET).await;
        let now = moving(&broker_requests(stack).await);
        if now == last {
            break;
        }
        last = now;
    }
    started.elapsed()
}

/// PostgreSQL reports a backend's counters at most once a second, and an idle backend's
/// only after 10 s: wait that long before reading them.
const STATS_SETTLE: Duration = Duration::from_secs(11);

/// How long the idle rates are measured. Sales' workers run every 5 to 30 s (delivery
/// retries, availability re-checks, alerts, saga recovery): a window shorter than the
/// longest period catches its round or misses it, and at 200 orders that alone moved
/// sales' figure by ±0.03 transactions per order between runs.
const IDLE_WINDOW: Duration = Duration::from_secs(30);

/// Orders in the cost phase: enough that the last order's events, marked SENT by a
/// transaction of the relay's own (the others ride on the next order's), and the idle
/// rate's rounding stay below 0.01 per order.
const COST_ORDERS: usize = 500;

/// `n` sequential orders: the transactions each database commits per order and the CPU
/// per order of each process, the idle rates (measured just before, once the load's
/// events have drained) subtracted.
/// The three services, in the order the cost tables show them.
const SERVICES: [&str; 3] = ["sales", "product", "delivery"];

/// The databases of the stack's three services, in [`SERVICES`] order.
fn service_databases(stack: &Stack) -> Vec<String> {
    SERVICES
        .iter()
        .map(|s| stack.databases[*s].clone())
        .collect()
}

async fn cost_of_orders(stack: &Stack, sales: &str, n: usize, broker: bool) -> Cost {
    let dbs = service_databases(stack);
    let drained_after = drain_broker(stack, broker).await;
    tokio::time::sleep(STATS_SETTLE).await;
    let (x0, c0, b0) = (
        xact_commits(&dbs).await,
        cpu_sample(stack, &dbs).await,
        broker_requests(stack).await,
    );
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle = IDLE_WINDOW;
    let (x1, c1, b1) = (
        xact_commits(&dbs).await,
        cpu_sample(stack, &dbs).await,
        broker_requests(stack).await,
    );
    let api = SalesClient::new(sales);
    let started = Instant::now();
    for i in 0..n {
        let order = order_request("bench-cost", &[(PRODUCTS[i % PRODUCTS.len()], 1)]);
        let key = Uuid::new_v4().to_string();
        let response = api.place_raw(&order, Some(&key)).await;
        assert_eq!(response.status(), 201);
    }
    let busy = started.elapsed();
    tokio::time::sleep(STATS_SETTLE).await;
    let (x2, c2, b2) = (
        xact_commits(&dbs).await,
        cpu_sample(stack, &dbs).await,
        broker_requests(stack).await,
    );
    let window = (busy + STATS_SETTLE).as_secs_f64();
    let idle_share = window / idle.as_secs_f64();
    let idle_tx_per_s = SERVICES
        .iter()
        .enumerate()
        .map(|(i, name)| (*name, (x1[i] - x0[i]) as f64 / idle.as_secs_f64()))
        .collect();
    let tx_per_order = SERVICES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let idle = (x1[i] - x0[i]) as f64 * idle_share;
            (*name, (((x2[i] - x1[i]) as f64) - idle).max(0.0) / n as f64)
        })
        .collect();
    let cpu_ms_per_order = c2
        .by_group
        .iter()
        .enumerate()
        .map(|(i, (name, at2))| {
            let (at0, at1) = (c0.by_group[i].1, c1.by_group[i].1);
            let idle = (at1 - at0).max(0.0) * idle_share;
            (*name, ((at2 - at1) - idle).max(0.0) * 1000.0 / n as f64)
        })
        .collect();
    let count = |at: &BTreeMap<String, f64>, op: &str| at.get(op).copied().unwrap_or(0.0);
    let broker_requests_per_order = b2
        .keys()
        .map(|op| {
            let idle = (count(&b1, op) - count(&b0, op)).max(0.0) * idle_share;
            let busy = count(&b2, op) - count(&b1, op);
            (op.clone(), (busy - idle).max(0.0) / n as f64)
        })
        .collect();
    Cost {
        orders: n,
        tx_per_order,
        cpu_ms_per_order,
        broker_requests_per_order,
        drained_after,
        idle_tx_per_s,
    }
}

/// `name value, name value, …` with `digits` decimals.
fn fmt_pairs(v: &[(&str, f64)], digits: usize) -> String {
    v.iter()
        .map(|(k, x)| format!("{k} {x:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn row(what: &str, c: usize, f: &Figures) -> String {
    format!(
        "| {what} | {c} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
        f.per_second, f.p50_ms, f.p95_ms, f.p99_ms, f.errors
    )
}

#[tokio::main]
async fn main() {
    let (secs, runs) = (knob("BENCH_SECS", 8), knob("BENCH_RUNS", 3).max(1) as usize);
    let failfast_c = knob("BENCH_FAILFAST_CONCURRENCY", 8) as usize;
    let broker = std::env::var("BENCH_BROKER").map_or(true, |v| v != "off");
    let stack = Stack::start_with(StackOptions {
        broker,
        sales_env: vec![
            // Measure the order path, not the limiter.
            ("SALES_RATE_LIMIT_PER_SECOND", "1000000".into()),
            ("SALES_RATE_LIMIT_BURST", "1000000".into()),
            ("SALES_BREAKER_PRODUCT_RESET_TIMEOUT_MS", "30000".into()),
        ],
        ..StackOptions::default()
    })
    .await;
    set_stock(&stack).await;
    let sales = stack.sales.base_url();
    let ceiling_db = ceiling_database().await;
    let whole_db = whole_order_database().await;
    let log_dir = PathBuf::from(&stack.log_dir);
    println!(
        "order benchmark: concurrency {:?}, {secs} s per run, {runs} runs (medians), broker {}",
        concurrencies(),
        if broker { "on" } else { "off" }
    );
    // Warm-up: connections, plans, caches.
    order_load(&sales, 4, 2).await;

    let mut lines = Vec::new();
    let mut load_cpu_at: Vec<(usize, LoadCpu)> = Vec::new();
    let dbs = service_databases(&stack);
    let cores_total = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut p99_at: Vec<(usize, f64)> = Vec::new();
    for c in concurrencies() {
        let (mut orders, mut ceiling, mut whole) = (Vec::new(), Vec::new(), Vec::new());
        let mut load_cpu = LoadCpu::default();
        for _ in 0..runs {
            let before = cpu_sample(&stack, &dbs).await;
            let started = Instant::now();
            let run = order_load(&sales, c, secs).await;
            let elapsed = started.elapsed().as_secs_f64();
            load_cpu.add(&before, &cpu_sample(&stack, &dbs).await, &run, elapsed);
            orders.push(run);
            ceiling.push(pgbench(&ceiling_db, "place_order.sql", c, secs, &log_dir));
            whole.push(pgbench(&whole_db, "whole_order.sql", c, secs, &log_dir));
        }
        let (o, p, w) = (median(&orders), median(&ceiling), median(&whole));
        println!(
            "c={c:>3}: orders {:.0}/s p50 {:.1} ms p95 {:.1} ms p99 {:.1} ms ({} errors) | whole-order pgbench {:.0}/s mean {:.2} ms p50 {:.2} ms | sales-tx pgbench {:.0} tx/s | ratio {:.3} of the whole order, {:.3} of the sales transaction",
            o.per_second,
            o.p50_ms,
            o.p95_ms,
            o.p99_ms,
            o.errors,
            w.per_second,
            c as f64 * 1000.0 / w.per_second,
            w.p50_ms,
            p.per_second,
            o.per_second / w.per_second,
            o.per_second / p.per_second
        );
        let (cores, machine) = load_cpu.cores();
        println!(
            "c={c:>3}: CPU while the orders ran: cores {} (machine {machine:.2} of {cores_total}) | CPU ms per order {}",
            fmt_pairs(&cores, 2),
            fmt_pairs(&load_cpu.ms_per_order(), 2),
        );
        load_cpu_at.push((c, load_cpu));
        lines.push(format!(
            "{} {:.3} | {:.3} |",
            row("orders via `POST /orders`", c, &o),
            o.per_second / w.per_second,
            o.per_second / p.per_second
        ));
        lines.push(format!(
            "{} 1 | {:.3} |",
            row("pgbench, the whole order's 5 transactions", c, &w),
            w.per_second / p.per_second
        ));
        lines.push(format!(
            "{} {:.3} | 1 |",
            row("pgbench, sales' record transaction alone", c, &p),
            p.per_second / w.per_second
        ));
        if c == 1 {
            lines.push(format!(
                "| (c=1: orders p50 {:.1} ms vs the whole order's mean latency {:.1} ms: ×{:.2}) | | | | | | | | |",
                o.p50_ms,
                1000.0 / w.per_second,
                o.p50_ms / (1000.0 / w.per_second)
            ));
        }
        p99_at.push((c, o.p99_ms));
    }

    let cost = cost_of_orders(&stack, &sales, COST_ORDERS, broker).await;
    let requests: Vec<(&str, f64)> = cost
        .broker_requests_per_order
        .iter()
        .map(|(op, n)| (op.as_str(), *n))
        .collect();
    let broker_line = if requests.is_empty() {
        "none (broker off)".to_owned()
    } else {
        let total: f64 = requests.iter().map(|(_, n)| n).sum();
        format!("{total:.2} ({})", fmt_pairs(&requests, 2))
    };
    println!(
        "cost of one order ({} sequential, once the load's events had drained, {:.0} s after the last run): transactions {} (idle tx/s subtracted: {}) | CPU ms {} | broker requests {broker_line}",
        cost.orders,
        cost.drained_after.as_secs_f64(),
        fmt_pairs(&cost.tx_per_order, 2),
        fmt_pairs(&cost.idle_tx_per_s, 2),
        fmt_pairs(&cost.cpu_ms_per_order, 2),
    );

    // Fail-fast: product hangs; once its breaker is open, orders are accepted at once.
    stack.product.pause();
    let opened = Instant::now();
    while breaker_state(&sales, "product-service").await != "OPEN" {
        assert!(
            opened.elapsed() < Duration::from_secs(120),
            "the product breaker did not open"
        );
        order_load(&sales, failfast_c, 1).await;
    }
    println!(
        "product hung; its breaker opened after {:.1} s of load",
        opened.elapsed().as_secs_f64()
    );
    let hung: Vec<Figures> = {
        let mut v = Vec::new();
        for _ in 0..runs {
            v.push(order_load(&sales, failfast_c, secs).await);
        }
        v
    };
    stack.product.resume();
    let hung = median(&hung);
    let all_up = match p99_at.iter().find(|(c, _)| *c == failfast_c) {
        Some((_, p99)) => *p99,
        None => median(&[order_load(&sales, failfast_c, secs).await]).p99_ms,
    };
    println!(
        "fail-fast (product hung, breaker open), c={failfast_c}: {:.0}/s p50 {:.1} ms p99 {:.1} ms; p99 vs all-up {:.1} ms: ratio {:.2}",
        hung.per_second,
        hung.p50_ms,
        hung.p99_ms,
        all_up,
        hung.p99_ms / all_up
    );
    lines.push(format!(
        "{} p99 ×{:.2} vs all-up |",
        row("orders, product hung (breaker open)", failfast_c, &hung),
        hung.p99_ms / all_up
    ));

    if let Some(mut file) = markdown_file() {
        writeln!(
            file,
            "## Orders and the database's ceilings (broker {})\n\n{secs} s per run, median of {runs} runs; \
             closed-loop clients, each order one item; all three services up, {}. \
             Ratios against the whole order's least database work (`bench/pgbench/whole_order.sql`) \
             and against sales' record transaction alone (`bench/pgbench/place_order.sql`).\n\n\
             | load | clients | per second | p50 ms | p95 ms | p99 ms | errors | vs whole order | vs sales tx |\n\
             |---|---|---|---|---|---|---|---|---|",
            if broker { "on" } else { "off" },
            if broker {
                "the outbox relayed to LocalStack and consumed by product"
            } else {
                "no broker: events wait in the outbox, product's consumer idle"
            },
        )
        .unwrap();
        for line in &lines {
            writeln!(file, "{line}").unwrap();
        }
        let labels: Vec<&str> = load_cpu_at
            .first()
            .map(|(_, l)| l.by_group.iter().map(|(k, _)| *k).collect())
            .unwrap_or_default();
        writeln!(
            file,
            "\n### CPU while the orders ran\n\nCores each process kept busy over the order runs \
             (in brackets: CPU ms per order at that load), and the whole machine's busy cores \
             (`/proc/stat`, everything on it) of {cores_total}. Work that trails the orders (a \
             consumer's backlog) falls partly after the window.\n\n\
             | clients | {} | machine |\n|---|{}---|",
            labels.join(" | "),
            "---|".repeat(labels.len()),
        )
        .unwrap();
        for (c, load_cpu) in &load_cpu_at {
            writeln!(file, "{}", load_cpu.markdown_row(*c)).unwrap();
        }
        let (tx_labels, tx_rule, tx_values) = markdown_table(&cost.tx_per_order, 2);
        let (cpu_labels, cpu_rule, cpu_values) = markdown_table(&cost.cpu_ms_per_order, 2);
        let broker_table = if requests.is_empty() {
            String::new()
        } else {
            let (labels, rule, values) = markdown_table(&requests, 2);
            format!(
                "\n| broker requests per order (all three services) | {labels} |\n|---|{rule}\n| | {values} |\n"
            )
        };
        writeln!(
            file,
            "\n### The cost of one order\n\n{} sequential orders, once the events the load left behind \
             had been published and consumed ({:.0} s after the last run); idle rates subtracted.\n\n\
             | | {tx_labels} |\n|---|{tx_rule}\n| transactions per order | {tx_values} |\n\n\
             | CPU ms per order | {cpu_labels} |\n|---|{cpu_rule}\n| | {cpu_values} |\n{broker_table}",
            cost.orders,
            cost.drained_after.as_secs_f64(),
        )
        .unwrap();
    }
    drop_database(&whole_db).await;
    drop_database(&ceiling_db).await;
    stack.shutdown().await;
}
