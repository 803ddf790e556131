//! Per-client rate limits of the customer endpoints: 429 problem+json with a
//! `Retry-After` derived from the bucket once the burst is spent, per client
//! (API key, else address), health/metrics/staff endpoints never limited; in
//! process without Redis, shared by two instances through Redis, falling back
//! to local limits when Redis is unreachable; and the Redis GCRA script on a
//! controlled clock, step for step the same as governor's.

use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use reqwest::{Method, Response};
use sales::{
    cache::Redis,
    config::{CacheConfig, RateLimitConfig},
    rate_limit::{self, Decision, Local, SharedLimiter},
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{Api, Running, expect_problem};

use crate::{
    Peers, Stack,
    caching::{redis_conn, redis_url, unique_prefix},
    closed_port,
};

async fn orders(api: &Api, key: Option<&str>) -> Response {
    let mut request = api.request(Method::GET, "/orders?customer_id=rl");
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    request.send().await.unwrap()
}

fn retry_after(response: &Response) -> u64 {
    response
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Spends a client's burst of `burst`, then checks the 429 and its `Retry-After`
/// (one request per `period`, `first` the time of the first request).
async fn spend(api: &Api, key: Option<&str>, burst: u32, period: Duration) {
    let first = Instant::now();
    for i in 0..burst {
        assert_eq!(
            orders(api, key).await.status(),
            200,
            "request {i} of the burst"
        );
    }
    let limited = orders(api, key).await;
    let elapsed = first.elapsed();
    let secs = retry_after(&limited);
    // The next request conforms `period` after the first one was counted.
    let expected = period.saturating_sub(elapsed).as_secs_f64().ceil().max(1.0) as u64;
    assert!(
        secs == expected || secs == expected + 1,
        "Retry-After {secs}, expected {expected} ({elapsed:?} after the first request)"
    );
    let problem = expect_problem(limited, 429).await;
    assert_eq!(problem.kind, "/problems/rate-limited");
}

#[sqlx::test(migrations = false)]
async fn over_the_burst_a_client_gets_429_with_retry_after_and_others_do_not(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    // One request per 5 s, bursts of 3: the wait is long enough to see it counted down.
    let stack = Stack::start_configured(
        options,
        Peers::Both,
        &[
            ("SALES_RATE_LIMIT_PER_SECOND", "0.2"),
            ("SALES_RATE_LIMIT_BURST", "3"),
        ],
    )
    .await;
    let api = stack.api();
    spend(api, None, 3, Duration::from_secs(5)).await;
    // Every customer endpoint counts for the same client.
    let order_path = format!("/orders/{}", uuid::Uuid::now_v7());
    assert_eq!(api.get(&order_path).await.status(), 429);
    assert_eq!(
        api.post("/orders", &crate::order_body("c", &[("SKU-A", 1)]))
            .await
            .status(),
        429
    );
    assert_eq!(
        api.post(&format!("{order_path}/cancel"), &serde_json::json!({}))
            .await
            .status(),
        429
    );

    // Another API key is another client, with its own burst.
    spend(api, Some("key-one"), 3, Duration::from_secs(5)).await;
    assert_eq!(orders(api, Some("key-two")).await.status(), 200);

    // Health, metrics, OpenAPI and staff endpoints are not limited.
    for path in [
        "/health/live",
        "/health/ready",
        "/health/reliability",
        "/openapi.json",
        "/metrics",
    ] {
        for _ in 0..5 {
            assert_eq!(api.get(path).await.status(), 200, "{path}");
        }
    }
    for _ in 0..5 {
        let staff = api.staff(Method::GET, "/review/orders", None).await;
        assert_eq!(staff.status(), 200);
    }
    let metrics = api.get("/metrics").await.text().await.unwrap();
    let rejected = metrics
        .lines()
        .find(|l| l.starts_with("rate_limit_rejected_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(rejected.is_some_and(|n| n >= 5.0), "{rejected:?}");
}

/// A second sales instance on the same database and Redis settings.
async fn another_instance(stack: &Stack, vars: &[(&str, &str)]) -> Running {
    let mut map: std::collections::HashMap<String, String> = [
        ("SALES_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        (
            "SALES_PRODUCT_URL",
            format!("http://127.0.0.1:{}", stack.product_port),
        ),
        (
            "SALES_DELIVERY_URL",
            format!("http://127.0.0.1:{}", stack.delivery_port),
        ),
        (
            "SALES_PRODUCT_SERVICE_TOKEN",
            testkit::SERVICE_TOKEN.to_owned(),
        ),
        (
            "SALES_DELIVERY_SERVICE_TOKEN",
            testkit::SERVICE_TOKEN.to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in vars {
        map.insert((*k).to_owned(), (*v).to_owned());
    }
    let config = sales::Config::from(&platform::config::Env::from_map("SALES_", map)).unwrap();
    let app = sales::Application::with_pool(config, stack.sales_db.clone())
        .await
        .unwrap();
    let port = app.port();
    Running::spawn(port, |t| app.run(t))
}

#[sqlx::test(migrations = false)]
async fn two_instances_share_one_bucket_per_client_through_redis(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let prefix = unique_prefix();
    let url = redis_url();
    let vars = [
        ("SALES_REDIS_URL", url.as_str()),
        ("SALES_REDIS_KEY_PREFIX", prefix.as_str()),
        ("SALES_RATE_LIMIT_PER_SECOND", "0.2"),
        ("SALES_RATE_LIMIT_BURST", "4"),
    ];
    let stack = Stack::start_configured(options, Peers::Both, &vars).await;
    let other = another_instance(&stack, &vars).await;
    let (a, b) = (stack.api(), &other.api);
    for api in [a, b, a, b] {
        assert_eq!(orders(api, Some("shared")).await.status(), 200);
    }
    // Four spent across the two: both refuse the fifth.
    for api in [a, b] {
        let limited = orders(api, Some("shared")).await;
        assert!((1..=5).contains(&retry_after(&limited)));
        expect_problem(limited, 429).await;
    }
    assert_eq!(orders(b, Some("another")).await.status(), 200);
    let mut redis = redis_conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}ratelimit:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "one bucket per client: {keys:?}");
    assert!(
        keys.iter()
            .all(|k| !k.contains("shared") && !k.contains("another")),
        "API keys are stored as digests: {keys:?}"
    );
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(
            0 < ttl && ttl <= 21_000,
            "a bucket expires once full again: {ttl}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn without_redis_limits_fall_back_to_the_instance(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let refusing = closed_port();
    let url = format!("redis://127.0.0.1:{}", refusing.port);
    let stack = Stack::start_configured(
        options,
        Peers::Both,
        &[
            ("SALES_REDIS_URL", url.as_str()),
            ("SALES_REDIS_KEY_PREFIX", unique_prefix().as_str()),
            ("SALES_RATE_LIMIT_PER_SECOND", "0.2"),
            ("SALES_RATE_LIMIT_BURST", "2"),
        ],
    )
    .await;
    spend(stack.api(), None, 2, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_redis_gcra_matches_governor_on_a_controlled_clock() {
    let limits = RateLimitConfig {
        per_second: 4.0, // one every 250 ms
        burst: 3,
        trusted_proxy_hops: 0,
    };
    let config = CacheConfig {
        url: Some(redis_url()),
        key_prefix: unique_prefix(),
        order_ttl: Duration::from_secs(60),
        timeout: Duration::from_millis(500),
    };
    let redis = Redis::connect(&config, 128).await.unwrap().unwrap();
    let shared = SharedLimiter::new(redis, &limits);
    let clock = FakeRelativeClock::default();
    let local = Local::new(rate_limit::quota(&limits).unwrap(), clock.clone());
    // Redis's time scale: any fixed origin in µs.
    let origin_us: u64 = 1_000_000_000;
    let mut now_ms: u64 = 0;
    // (ms to advance, client): bursts, waits, partial refills, idle refills, two clients.
    let steps: &[(u64, &str)] = &[
        (0, "a"),
        (0, "a"),
        (0, "a"),
        (0, "a"),
        (0, "b"),
        (100, "a"),
        (150, "a"),
        (0, "a"),
        (10, "a"),
        (240, "a"),
        (1000, "a"),
        (0, "a"),
        (0, "a"),
        (0, "a"),
        (0, "a"),
        (60, "b"),
        (0, "b"),
        (0, "b"),
        (0, "b"),
        (400, "b"),
        (0, "b"),
    ];
    let mut limited = 0;
    for (i, (advance, client)) in steps.iter().enumerate() {
        now_ms += advance;
        clock.advance(Duration::from_millis(*advance));
        let in_redis = shared
            .check_at(client, Some(origin_us + now_ms * 1000))
            .await
            .unwrap();
        let in_process = local.check(client);
        assert_eq!(in_redis, in_process, "step {i} at {now_ms} ms for {client}");
        if let Decision::Limited { wait } = in_redis {
            limited += 1;
            assert!(
                wait > Duration::ZERO && wait <= Duration::from_millis(250),
                "{wait:?}"
            );
        }
    }
    assert!(limited >= 4, "the schedule hits the limit: {limited}");
    // The first refusal waits for one emission interval after the burst.
    let fresh = unique_prefix();
    let redis = Redis::connect(
        &CacheConfig {
            key_prefix: fresh,
            ..config
        },
        128,
    )
    .await
    .unwrap()
    .unwrap();
    let shared = SharedLimiter::new(redis, &limits);
    for _ in 0..3 {
        assert_eq!(
            shared.check_at("c", Some(origin_us)).await.unwrap(),
            Decision::Allowed
        );
    }
    assert_eq!(
        shared
            .check_at("c", Some(origin_us + 50_000))
            .await
            .unwrap(),
        Decision::Limited {
            wait: Duration::from_millis(200)
        }
    );
    // Redis's own clock (no `now`) works too.
    assert_eq!(shared.check_at("d", None).await.unwrap(), Decision::Allowed);
}
