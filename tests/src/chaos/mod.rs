//! The chaos run (issue 8): the real services under a steady order load from
//! several concurrent clients while faults are injected on a schedule, then a
//! ledger of invariants checked against the three databases.
//!
//! One code path, two sizes: [`Size::from_env`] picks the CI size (a few
//! clients, each fault once, about a minute) or, with `CHAOS_FULL=1`, the full
//! run (more clients, every fault repeated, several minutes). Every random
//! choice (client actions, fault order and durations) comes from one seed,
//! printed at the start; `CHAOS_SEED=<n>` repeats a run's choices (timings on a
//! loaded machine still vary).
//!
//! # Layout
//! - [`load`]: the clients, their retries with the same `Idempotency-Key`, and
//!   the record of every attempt.
//! - [`faults`]: the schedule, the injection (SIGKILL, proxies cut) and the
//!   recovery probes started at each fault's end.
//! - [`ledger`]: quiescence, then invariants 1–12 read from the databases.
//! - `courier`: moves deliveries along during the load, so orders follow them.

pub mod faults;
pub mod ledger;
pub mod load;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use contracts::delivery::DeliveryStatus;
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::{DeliveryClient, Stack, StackOptions, postgres_base};

/// How big a run is. Every field can be overridden from the environment.
#[derive(Debug, Clone)]
pub struct Size {
    /// `CI` or `full`.
    pub name: &'static str,
    /// Concurrent clients (`CHAOS_CLIENTS`).
    pub clients: usize,
    /// How many times every kind of fault is injected (`CHAOS_ROUNDS`).
    pub rounds: usize,
    /// Extra delivery kills on top of the rounds ("killed several times").
    pub extra_delivery_kills: usize,
    /// How long a fault lasts, drawn in this range.
    pub hold: (Duration, Duration),
    /// Healthy time between faults, drawn in this range.
    pub gap: (Duration, Duration),
    /// Load before the first fault and after the last one.
    pub warmup: Duration,
    /// Longest wait for the system to settle once the load stopped.
    pub quiescence: Duration,
    /// Pause of a client between two requests, drawn in `0..=think`.
    pub think: Duration,
}

impl Size {
    /// The CI size, or the full one when `CHAOS_FULL=1`; `CHAOS_CLIENTS` and
    /// `CHAOS_ROUNDS` override the number of clients and of rounds.
    pub fn from_env() -> Self {
        let full = std::env::var("CHAOS_FULL").is_ok_and(|v| v == "1" || v == "true");
        let mut size = if full {
            Self {
                name: "full",
                clients: 8,
                rounds: 3,
                extra_delivery_kills: 2,
                hold: (Duration::from_secs(5), Duration::from_secs(10)),
                gap: (Duration::from_secs(3), Duration::from_secs(6)),
                warmup: Duration::from_secs(5),
                quiescence: Duration::from_secs(180),
                think: Duration::from_millis(150),
            }
        } else {
            Self {
                name: "CI",
                clients: 4,
                rounds: 1,
                extra_delivery_kills: 1,
                hold: (Duration::from_secs(4), Duration::from_secs(6)),
                gap: (Duration::from_secs(2), Duration::from_secs(4)),
                warmup: Duration::from_secs(3),
                quiescence: Duration::from_secs(90),
                think: Duration::from_millis(150),
            }
        };
        if let Some(n) = env_number("CHAOS_CLIENTS") {
            size.clients = n.max(1) as usize;
        }
        if let Some(n) = env_number("CHAOS_ROUNDS") {
            size.rounds = n as usize;
        }
        size
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}")),
    )
}

/// The seed of this run: `CHAOS_SEED`, else a fresh one.
pub fn seed_from_env() -> u64 {
    env_number("CHAOS_SEED").unwrap_or_else(|| fastrand::u64(..))
}

/// The broker breaker's reset in a run (the default is 30 s).
pub const BROKER_RESET: Duration = Duration::from_secs(2);
/// A LocalStack cut lasts at least this many broker resets: as many failed half-open
/// trials as a few minutes' outage makes with the defaults.
pub const BROKER_OUTAGE_RESETS: u32 = 6;

/// Settings that make a run fit in minutes: short retry intervals, breaker
/// resets, re-check and recovery periods. The budgets that decide when
/// something is given up (the outbox's dead-letter rule, SQS receives, timeouts)
/// are the shipped ones: a run passes only with the settings users get.
fn stack_options() -> StackOptions {
    let sales = [
        ("SALES_REQUEST_TIMEOUT_MS", "8000"),
        ("SALES_DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
        ("SALES_BREAKER_DATABASE_RESET_TIMEOUT_MS", "1000"),
        ("SALES_BREAKER_PRODUCT_RESET_TIMEOUT_MS", "1000"),
        ("SALES_BREAKER_DELIVERY_RESET_TIMEOUT_MS", "1000"),
        ("SALES_BREAKER_BROKER_RESET_TIMEOUT_MS", "2000"), // BROKER_RESET
        ("SALES_HTTP_CONNECT_TIMEOUT_MS", "500"),
        ("SALES_DELIVERY_RETRY_FIRST_DELAY_MS", "200"),
        ("SALES_DELIVERY_RETRY_MAX_DELAY_MS", "1000"),
        ("SALES_DELIVERY_RETRY_POLL_INTERVAL_MS", "100"),
        ("SALES_DELIVERY_RETRY_LEASE_MS", "3000"),
        ("SALES_AVAILABILITY_RECHECK_INTERVAL_MS", "250"),
        ("SALES_AVAILABILITY_RECHECK_BATCH", "100"),
        ("SALES_RECONCILIATION_INTERVAL_MS", "1000"),
        ("SALES_SAGA_LEASE_MS", "2000"),
        ("SALES_SAGA_RECOVERY_INTERVAL_MS", "500"),
        // Small batches: a backlog takes a while to relay, so a kill lands mid-relay.
        ("SALES_OUTBOX_BATCH_SIZE", "10"),
        ("SALES_OUTBOX_RETRY_BASE_MS", "200"),
        ("SALES_OUTBOX_RETRY_MAX_MS", "1000"),
    ];
    let product = [
        ("PRODUCT_EXPIRY_SWEEP_INTERVAL_MS", "1000"),
        // The service's default; the harness lowers it for its poison-message test.
        ("PRODUCT_BROKER_MAX_RECEIVE_COUNT", "5"),
    ];
    let owned = |pairs: &[(&'static str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (*k, (*v).to_owned()))
            .collect::<Vec<_>>()
    };
    StackOptions {
        sales_env: owned(&sales),
        product_env: owned(&product),
        delivery_env: Vec::new(),
        sales_db_proxy: true,
        broker: true,
        broker_proxy: true,
        product_broker_proxy: true,
        delivery_events: true,
        delivery_broker_proxy: false,
    }
}

/// Stock set at the start: plenty, except the headset, so that an oversized
/// order (10 000 headsets) is refused with 409 whenever product can be asked.
pub const STOCK: &[(&str, i32)] = &[
    ("SKU-KEYBOARD", 200_000),
    ("SKU-MOUSE", 200_000),
    ("SKU-MONITOR", 200_000),
    ("SKU-DOCK", 200_000),
    ("SKU-HEADSET", 9_000),
];

/// A pool on one of the stack's databases, straight to PostgreSQL (never
/// through the proxy the faults cut).
pub async fn pool(stack: &Stack, service: &str, connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(connections)
        .connect(&format!("{}/{}", postgres_base(), stack.databases[service]))
        .await
        .unwrap()
}

/// Starts the stack, drives the load through the fault schedule, waits for
/// quiescence and returns the ledger (printed as it is built). The stack is
/// shut down (databases dropped) when every invariant held; otherwise its
/// logs and databases are kept and named for inspection.
pub async fn run(size: Size, seed: u64) -> ledger::Ledger {
    println!(
        "chaos run: seed {seed} (repeat with CHAOS_SEED={seed}), size {}: {} clients, {} round(s) of faults",
        size.name, size.clients, size.rounds
    );
    let started = Instant::now();
    let mut stack = Stack::start_with(stack_options()).await;
    set_stock(&stack).await;
    let dbs = ledger::Dbs {
        sales: pool(&stack, "sales", 4).await,
        product: pool(&stack, "product", 3).await,
        delivery: pool(&stack, "delivery", 2).await,
    };
    let initial = ledger::stock(&dbs.product).await;
    let plan = faults::plan(&size, seed);
    println!(
        "plan: {}",
        plan.iter()
            .map(|f| format!("{} {:.1}s", f.kind.label(), f.hold.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let run_tag = stack.databases["sales"]
        .rsplit('_')
        .next()
        .unwrap_or("run")
        .to_owned();
    let load = load::start(
        load::LoadConfig {
            base_url: stack.sales.base_url(),
            clients: size.clients,
            seed,
            run_tag,
            think: size.think,
            t0,
        },
        stop.clone(),
    );
    let courier = tokio::spawn(courier(
        stack.delivery_api(),
        dbs.delivery.clone(),
        seed,
        stop.clone(),
    ));
    tokio::time::sleep(size.warmup).await;
    let mut injected = Vec::new();
    for planned in &plan {
        tokio::time::sleep(planned.gap_before).await;
        let fault = faults::inject(&mut stack, &dbs, planned, t0, size.quiescence).await;
        println!(
            "[{:6.1}s] {} #{} over at {:.1}s ({})",
            fault.start.as_secs_f64(),
            fault.kind.label(),
            fault.ordinal,
            fault.end.as_secs_f64(),
            fault.note
        );
        injected.push(fault);
    }
    tokio::time::sleep(size.warmup).await;
    stop.store(true, Ordering::SeqCst);
    let records = load.finish().await;
    let moved = courier.await.unwrap_or_default();
    let load_end = t0.elapsed();
    println!(
        "[{:6.1}s] load stopped: {} requests, {moved} courier status updates",
        load_end.as_secs_f64(),
        records.len()
    );

    let quiet = ledger::wait_for_quiescence(&dbs, size.quiescence).await;
    let ledger = ledger::check(ledger::Inputs {
        seed,
        size: &size,
        dbs: &dbs,
        initial: &initial,
        records: &records,
        faults: injected,
        quiescence: quiet,
        load_end,
    })
    .await;
    println!("{ledger}");
    println!("wall time {:.1}s", started.elapsed().as_secs_f64());

    dbs.sales.close().await;
    dbs.product.close().await;
    dbs.delivery.close().await;
    if ledger.passed() {
        stack.shutdown().await;
    } else {
        println!(
            "kept for inspection: logs in {}, databases {:?}",
            stack.log_dir.display(),
            stack.databases.values().collect::<Vec<_>>()
        );
        stack.sales.stop().await;
        stack.delivery.stop().await;
        stack.product.stop().await;
    }
    ledger
}

/// A courier moving deliveries along while the load runs, so orders follow their
/// deliveries through delivery's events (whatever the faults do to them): every 200 ms a
/// few deliveries, drawn at random among those not finished, go one step along
/// CREATED → PICKED_UP → IN_TRANSIT → DELIVERED through delivery's staff API. A refused or
/// failed update (delivery down, the delivery cancelled meanwhile) is simply not counted.
/// Returns how many updates delivery accepted.
async fn courier(api: DeliveryClient, delivery: PgPool, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xc0de);
    let mut moved = 0;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(candidates) = sqlx::query_as::<_, (uuid::Uuid, String)>(
            "SELECT id, status FROM deliveries WHERE status IN ('CREATED', 'PICKED_UP', 'IN_TRANSIT')
             ORDER BY random() LIMIT 4",
        )
        .fetch_all(&delivery)
        .await
        else {
            continue;
        };
        for (id, status) in candidates {
            // Not every parcel moves at once: some stay put for a while.
            if rng.bool() {
                continue;
            }
            let next = match status.as_str() {
                "CREATED" => DeliveryStatus::PickedUp,
                "PICKED_UP" => DeliveryStatus::InTransit,
                _ => DeliveryStatus::Delivered,
            };
            let sent = api.set_status_raw(id, next, Duration::from_secs(2)).await;
            if sent.is_ok_and(|r| r.status() == 200) {
                moved += 1;
            }
        }
    }
    moved
}

/// Sets the stock of [`STOCK`] through product's staff API.
async fn set_stock(stack: &Stack) {
    let product = stack.product_api();
    for (id, units) in STOCK {
        product.set_stock(id, *units).await;
    }
}
