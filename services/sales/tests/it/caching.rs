//! The order cache against the real Redis (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`), each test under its own key prefix: hits, misses
//! and self-healing, a corrupt entry replaced by the database's order, status
//! changes (cancellation, staff decision, reconciliation) visible through the
//! cache at once, the stale re-populate race refused by the version check, and
//! Redis unreachable (refusing, or hanging) or lost during a change: requests
//! still succeed, quickly, and no older status is served once it is back.

use std::time::{Duration, Instant};

use contracts::orders::{Order, OrderStatus};
use redis::aio::MultiplexedConnection;
use reqwest::Method;
use sales::{cache::Redis, config::CacheConfig};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::expect_json;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::{Peers, Stack, closed_port, order_body};

/// The shared Redis of the tests.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("test:{}:", Uuid::new_v4().simple())
}

pub async fn redis_conn() -> MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn get_raw(conn: &mut MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

async fn set_raw(conn: &mut MultiplexedConnection, key: &str, value: &str) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("EX")
        .arg(60)
        .query_async::<()>(conn)
        .await
        .unwrap();
}

/// A sales stack caching in Redis at `url` under `prefix`.
async fn cached_stack(options: PgConnectOptions, peers: Peers, url: &str, prefix: &str) -> Stack {
    Stack::start_configured(
        options,
        peers,
        &[
            ("SALES_REDIS_URL", url),
            ("SALES_REDIS_KEY_PREFIX", prefix),
            ("SALES_REDIS_ORDER_TTL_SECS", "120"),
            ("SALES_REDIS_TIMEOUT_MS", "100"),
        ],
    )
    .await
}

fn key(prefix: &str, id: Uuid) -> String {
    format!("{prefix}order:{id}")
}

/// The cached order under `key`, waiting for a background write to land.
async fn cached(conn: &mut MultiplexedConnection, key: &str, id: Uuid) -> Order {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(raw) = get_raw(conn, key).await
            && let Some(order) = sales::cache::orders::decode(&raw, id)
        {
            return order;
        }
        assert!(Instant::now() < deadline, "no entry under {key}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The cached order once its version is `version` (bounded wait), or the last one seen.
async fn settled(conn: &mut MultiplexedConnection, key: &str, id: Uuid, version: i32) -> Order {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let order = cached(conn, key, id).await;
        if order.version == version || Instant::now() > deadline {
            return order;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read(stack: &Stack, id: Uuid) -> Order {
    expect_json(stack.api().get(&format!("/orders/{id}")).await, 200).await
}

#[sqlx::test(migrations = false)]
async fn reads_hit_the_cache_and_misses_heal_it(_pool: PgPoolOptions, options: PgConnectOptions) {
    let prefix = unique_prefix();
    let stack = cached_stack(options, Peers::Both, &redis_url(), &prefix).await;
    let mut redis = redis_conn().await;
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    let key = key(&prefix, order.id);
    // Written after the commit, off the request's path.
    assert_eq!(cached(&mut redis, &key, order.id).await, order);
    assert_eq!(read(&stack, order.id).await, order);

    // A hit is served from Redis: an entry saying otherwise is what the API answers.
    let mut doctored = order.clone();
    doctored.customer_id = "from-the-cache".into();
    set_raw(&mut redis, &key, &sales::cache::orders::encode(&doctored)).await;
    assert_eq!(read(&stack, order.id).await.customer_id, "from-the-cache");

    // Evicted: the read goes to the database and puts the order back.
    redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    assert_eq!(read(&stack, order.id).await, order);
    assert_eq!(
        get_raw(&mut redis, &key).await,
        Some(sales::cache::orders::encode(&order)),
        "self-healed"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        0 < ttl && ttl <= 120_000,
        "expires per SALES_REDIS_ORDER_TTL_SECS: {ttl}"
    );

    // An unknown order is a 404 and caches nothing.
    let unknown = Uuid::now_v7();
    let response = stack.api().get(&format!("/orders/{unknown}")).await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        get_raw(&mut redis, &self::key(&prefix, unknown)).await,
        None
    );
}

#[sqlx::test(migrations = false)]
async fn a_corrupt_entry_is_logged_and_replaced_by_the_database_value(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let prefix = unique_prefix();
    let stack = cached_stack(options, Peers::Both, &redis_url(), &prefix).await;
    let mut redis = redis_conn().await;
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    let key = key(&prefix, order.id);
    cached(&mut redis, &key, order.id).await;
    // Undecodable JSON, even behind a version newer than the database's, a
    // value without a version, another order's entry: all replaced.
    let other = Order {
        id: Uuid::now_v7(),
        ..order.clone()
    };
    for corrupt in [
        "999:{\"id\": truncated".to_owned(),
        "not an entry at all".to_owned(),
        sales::cache::orders::encode(&other),
    ] {
        set_raw(&mut redis, &key, &corrupt).await;
        assert_eq!(read(&stack, order.id).await, order, "the database's order");
        assert_eq!(
            get_raw(&mut redis, &key).await,
            Some(sales::cache::orders::encode(&order)),
            "the entry was rewritten after {corrupt:?}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn status_changes_are_visible_through_the_cache_at_once(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let prefix = unique_prefix();
    let stack = cached_stack(options, Peers::Both, &redis_url(), &prefix).await;
    let mut redis = redis_conn().await;

    // Cancellation.
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    cached(&mut redis, &key(&prefix, order.id), order.id).await;
    assert_eq!(
        read(&stack, order.id).await.status,
        OrderStatus::PendingShipment
    );
    let cancelled: Order = expect_json(
        stack
            .api()
            .post(&format!("/orders/{}/cancel", order.id), &json!({}))
            .await,
        200,
    )
    .await;
    let seen = read(&stack, order.id).await;
    assert_eq!(seen.status, OrderStatus::Cancelled);
    assert_eq!(seen, cancelled);
    let entry = get_raw(&mut redis, &key(&prefix, order.id)).await.unwrap();
    assert!(
        entry.starts_with(&format!("{}:", cancelled.version)),
        "updated in place, not just dropped: {entry}"
    );

    // Reconciliation with delivery's status.
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    cached(&mut redis, &key(&prefix, order.id), order.id).await;
    assert_eq!(
        read(&stack, order.id).await.status,
        OrderStatus::PendingShipment
    );
    stack
        .courier(
            order.delivery_id.unwrap(),
            &["PICKED_UP", "IN_TRANSIT", "DELIVERED"],
        )
        .await;
    stack
        .reconciliation
        .run_once(chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(read(&stack, order.id).await.status, OrderStatus::Delivered);
}

#[sqlx::test(migrations = false)]
async fn a_staff_decision_is_visible_through_the_cache_at_once(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let prefix = unique_prefix();
    let stack = cached_stack(options, Peers::ProductDown, &redis_url(), &prefix).await;
    let (approved, rejected) = (
        expect_json::<Order>(
            stack.place(&order_body("a", &[("SKU-A", 1)]), None).await,
            201,
        )
        .await,
        expect_json::<Order>(
            stack.place(&order_body("b", &[("SKU-A", 1)]), None).await,
            201,
        )
        .await,
    );
    for order in [&approved, &rejected] {
        assert!(read(&stack, order.id).await.requires_manual_review);
    }
    let decide = |id: Uuid, decision: &'static str| {
        stack
            .api()
            .request(Method::POST, &format!("/review/orders/{id}/{decision}"))
            .bearer_auth(testkit::STAFF_TOKEN)
            .json(&json!({"note": "checked by hand"}))
            .send()
    };
    assert_eq!(decide(approved.id, "approve").await.unwrap().status(), 200);
    let seen = read(&stack, approved.id).await;
    assert!(
        !seen.requires_manual_review,
        "the flag cleared, as the database says"
    );
    assert!(seen.version > approved.version);
    assert_eq!(decide(rejected.id, "reject").await.unwrap().status(), 200);
    assert_eq!(
        read(&stack, rejected.id).await.status,
        OrderStatus::Cancelled
    );
}

#[sqlx::test(migrations = false)]
async fn a_late_repopulate_with_an_older_version_is_refused(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    // The race: a reader loads version n, a writer commits n+1 and caches it,
    // then the reader puts n. Played here with the cache API itself.
    let prefix = unique_prefix();
    let stack = cached_stack(options, Peers::Both, &redis_url(), &prefix).await;
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    let config = CacheConfig {
        url: Some(redis_url()),
        key_prefix: prefix.clone(),
        order_ttl: Duration::from_secs(60),
        timeout: Duration::from_millis(500),
    };
    let cache = sales::cache::OrderCache::new(
        Redis::connect(&config, 128).await.unwrap(),
        config.order_ttl,
    );
    let mut redis = redis_conn().await;
    let key = key(&prefix, order.id);
    let old = order.clone();
    let mut newer = order.clone();
    newer.version += 1;
    newer.status = OrderStatus::Cancelled;

    redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let writer = cache.clone();
    let newer_for_writer = newer.clone();
    // The reader misses, and its database read returns the old row only after
    // the writer has cached the newer one.
    let read = cache
        .read(order.id, async move {
            writer.updated(&newer_for_writer).await;
            Ok::<_, ()>(Some(old))
        })
        .await
        .unwrap();
    assert_eq!(
        read.unwrap().version,
        order.version,
        "the reader answers what it read"
    );
    // On a loaded machine the writer's first attempt may time out and its retry
    // land later: the entry must end as the newer order either way, and reads
    // meanwhile must not answer the older one.
    let read_now = cache
        .read(order.id, async { Ok::<_, ()>(Some(newer.clone())) })
        .await
        .unwrap();
    assert_eq!(read_now.map(|o| o.version), Some(newer.version));
    assert_eq!(
        settled(&mut redis, &key, order.id, newer.version).await,
        newer,
        "but the newer entry stays"
    );
    // Equal or newer versions are written.
    let mut newest = newer.clone();
    newest.version += 1;
    cache.updated(&newest).await;
    assert_eq!(
        settled(&mut redis, &key, order.id, newest.version).await,
        newest
    );
    cache.updated(&order).await;
    assert_eq!(
        cached(&mut redis, &key, order.id).await,
        newest,
        "older: refused"
    );
}

#[sqlx::test(migrations = false)]
async fn with_redis_refusing_connections_orders_work_at_database_speed(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let refusing = closed_port();
    let url = format!("redis://127.0.0.1:{}", refusing.port);
    let stack = cached_stack(options, Peers::Both, &url, &unique_prefix()).await;
    let started = Instant::now();
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    for _ in 0..10 {
        assert_eq!(read(&stack, order.id).await, order);
    }
    let cancelled: Order = expect_json(
        stack
            .api()
            .post(&format!("/orders/{}/cancel", order.id), &json!({}))
            .await,
        200,
    )
    .await;
    assert_eq!(read(&stack, order.id).await, cancelled);
    let elapsed = started.elapsed();
    println!("13 requests with Redis refusing connections: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

/// Accepts connections and never answers: a hung Redis.
async fn black_hole() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

#[sqlx::test(migrations = false)]
async fn a_hanging_redis_costs_one_timeout_per_pause_not_one_per_request(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let (port, hole) = black_hole().await;
    let url = format!("redis://127.0.0.1:{port}");
    // SALES_REDIS_TIMEOUT_MS is 100 here: without the pause, 20 reads would wait ≥ 4 s.
    let stack = cached_stack(options, Peers::Both, &url, &unique_prefix()).await;
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(read(&stack, order.id).await, order);
    }
    let elapsed = started.elapsed();
    println!("20 reads with Redis hanging: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    hole.abort();
}

#[sqlx::test(migrations = false)]
async fn a_change_made_while_redis_was_away_is_never_read_older_once_it_is_back(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let prefix = unique_prefix();
    let upstream = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = testkit::proxy::Proxy::start(upstream.parse().unwrap()).await;
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    let stack = cached_stack(options, Peers::Both, &url, &prefix).await;
    let mut redis = redis_conn().await;
    let order: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    let key = key(&prefix, order.id);
    assert_eq!(
        cached(&mut redis, &key, order.id).await.status,
        OrderStatus::PendingShipment
    );

    // Redis is cut off: the cancellation commits, its cache update fails, and
    // Redis keeps the PENDING_SHIPMENT entry.
    proxy.set_down(true);
    let started = Instant::now();
    let cancelled: Order = expect_json(
        stack
            .api()
            .post(&format!("/orders/{}/cancel", order.id), &json!({}))
            .await,
        200,
    )
    .await;
    assert_eq!(read(&stack, order.id).await, cancelled, "from the database");
    let placed: Order = expect_json(
        stack.place(&order_body("c", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let stale = get_raw(&mut redis, &key).await.unwrap();
    assert!(stale.starts_with(&format!("{}:", order.version)), "{stale}");
    // Past the retries (100 + 200 + 400 ms): they failed too.
    tokio::time::sleep(Duration::from_millis(900)).await;

    // Back: with no read on this instance, the stale entry is dropped by itself
    // (another instance could read it) and the cache fills again.
    proxy.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match get_raw(&mut redis, &key).await {
            None => break,
            Some(raw) if !raw.starts_with(&format!("{}:", order.version)) => break,
            Some(_) => {}
        }
        assert!(Instant::now() < deadline, "the stale entry is still there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(read(&stack, order.id).await, cancelled);
    assert_eq!(cached(&mut redis, &key, order.id).await, cancelled);
    assert_eq!(read(&stack, placed.id).await, placed);
    assert_eq!(
        cached(&mut redis, &self::key(&prefix, placed.id), placed.id).await,
        placed
    );
}
