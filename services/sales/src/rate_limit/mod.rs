//! Per-client rate limits on the customer endpoints: `POST /orders`,
//! `GET /orders`, `GET /orders/{id}` and `POST /orders/{id}/cancel`. Health,
//! metrics, OpenAPI and staff endpoints are not limited.
//!
//! A client is its `X-API-Key` header when sent (kept only as a SHA-256 digest,
//! never in clear), else its remote address. Each client gets a GCRA bucket of
//! `SALES_RATE_LIMIT_BURST` requests refilled at `SALES_RATE_LIMIT_PER_SECOND`
//! (default 50/s, burst 100; `0` turns limiting off). Over the limit: `429`
//! problem+json with `Retry-After`, the whole seconds (at least 1) until the
//! bucket lets the next request in, and `rate_limit_rejected_total` counts it.
//!
//! With Redis the buckets are shared by every instance: one atomic Lua script
//! per request ([`SharedLimiter`]) keeps the bucket's theoretical arrival time
//! under `{prefix}ratelimit:{client}`, expiring once the bucket is full again,
//! and reads the time from Redis so instances' clocks never disagree (tests pass
//! their own `now`). When Redis fails, limits fall back to this instance's
//! in-process limiter ([`Local`], governor's keyed GCRA): fail open to local
//! limits, logged once per episode. Without Redis only [`Local`] is used.

use std::{
    net::SocketAddr,
    num::NonZeroU32,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use contracts::Problem;
use governor::{
    Quota,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::keyed::DefaultKeyedStateStore,
};
use redis::Script;
use sha2::{Digest, Sha256};

use crate::cache::{CallError, Redis};
use crate::config::RateLimitConfig;

/// The header naming an API client.
pub const API_KEY_HEADER: &str = "x-api-key";

/// How often (in checks) the in-process limiter forgets clients whose bucket is full again.
const RETAIN_EVERY: u64 = 4096;

/// `KEYS[1]` the client's bucket; `ARGV` now in µs ('' = Redis's clock), the
/// emission interval and the tolerance (interval × (burst − 1)) in µs. Returns
/// 0 when the request conforms (and counts it), else the µs until one would.
const GCRA_LUA: &str = r"
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then
  tat = now
end
local earliest = tat - tolerance
if now < earliest then
  return earliest - now
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.floor((next_tat - now) / 1000) + 1)
return 0
";

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_LUA));

/// A limiter's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the limit; the next request conforms after `wait`.
    Limited {
        wait: Duration,
    },
}

/// The quota of `config`, or `None` when limiting is off.
pub fn quota(config: &RateLimitConfig) -> Option<Quota> {
    if !config.enabled() {
        return None;
    }
    let burst = NonZeroU32::new(config.burst)?;
    Quota::with_period(emission_interval(config)).map(|q| q.allow_burst(burst))
}

/// Time between two requests at the sustained rate.
fn emission_interval(config: &RateLimitConfig) -> Duration {
    Duration::from_secs_f64(1.0 / config.per_second).max(Duration::from_nanos(1))
}

/// Governor's in-process keyed GCRA over a clock (tests use `FakeRelativeClock`).
pub struct Local<C: Clock = DefaultClock> {
    limiter: governor::RateLimiter<
        String,
        DefaultKeyedStateStore<String>,
        C,
        NoOpMiddleware<<C as Clock>::Instant>,
    >,
    clock: C,
    checks: AtomicU64,
}

impl<C: Clock + Clone> Local<C> {
    pub fn new(quota: Quota, clock: C) -> Self {
        Self {
            limiter: governor::RateLimiter::new(
                quota,
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            clock,
            checks: AtomicU64::new(0),
        }
    }

    /// Counts a request of `client` if it conforms.
    pub fn check(&self, client: &str) -> Decision {
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            // Bounded memory: clients whose bucket is full again are forgotten.
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        match self.limiter.check_key(&client.to_owned()) {
            Ok(()) => Decision::Allowed,
            Err(not_until) => Decision::Limited {
                wait: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// Clients currently tracked.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// The GCRA in Redis, shared by every instance.
#[derive(Clone)]
pub struct SharedLimiter {
    redis: Redis,
    interval_us: u64,
    tolerance_us: u64,
}

impl SharedLimiter {
    pub fn new(redis: Redis, config: &RateLimitConfig) -> Self {
        let interval_us = (emission_interval(config).as_micros() as u64).max(1);
        Self {
            redis,
            interval_us,
            tolerance_us: interval_us * u64::from(config.burst.saturating_sub(1)),
        }
    }

    /// Counts a request of `client` if it conforms, at `now_us` (µs on any fixed
    /// scale; `None`: Redis's clock).
    pub async fn check_at(&self, client: &str, now_us: Option<u64>) -> Result<Decision, CallError> {
        let key = self.redis.key("ratelimit", client);
        let now = now_us.map(|n| n.to_string()).unwrap_or_default();
        let (interval, tolerance) = (self.interval_us, self.tolerance_us);
        let wait_us: u64 = self
            .redis
            .call(|mut c| async move {
                GCRA.key(&key)
                    .arg(&now)
                    .arg(interval)
                    .arg(tolerance)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match wait_us {
            0 => Decision::Allowed,
            us => Decision::Limited {
                wait: Duration::from_micros(us),
            },
        })
    }
}

struct Inner {
    local: Local,
    shared: Option<SharedLimiter>,
    /// Falling back to `local` because Redis failed (logged once per episode).
    degraded: AtomicBool,
    per_second: f64,
    burst: u32,
    trusted_proxy_hops: usize,
}

/// The limiter of the customer endpoints; cheap to clone. Off: every request passes.
#[derive(Clone, Default)]
pub struct RateLimiter {
    inner: Option<Arc<Inner>>,
}

impl RateLimiter {
    /// Limits per `config`, shared through `redis` when given.
    pub fn new(config: &RateLimitConfig, redis: Option<Redis>) -> Self {
        let Some(quota) = quota(config) else {
            tracing::info!("SALES_RATE_LIMIT_PER_SECOND is 0: no rate limits");
            return Self::default();
        };
        Self {
            inner: Some(Arc::new(Inner {
                local: Local::new(quota, DefaultClock::default()),
                shared: redis.map(|r| SharedLimiter::new(r, config)),
                degraded: AtomicBool::new(false),
                per_second: config.per_second,
                burst: config.burst,
                trusted_proxy_hops: config.trusted_proxy_hops,
            })),
        }
    }

    /// Counts a request of `client`: in Redis, or in process when Redis is not
    /// configured or fails.
    pub async fn check(&self, client: &str) -> Decision {
        let Some(inner) = &self.inner else {
            return Decision::Allowed;
        };
        if let Some(shared) = &inner.shared {
            match shared.check_at(client, None).await {
                Ok(decision) => {
                    if inner.degraded.swap(false, Ordering::Relaxed) {
                        tracing::info!("rate limits shared through Redis again");
                    }
                    return decision;
                }
                Err(error) => {
                    if !inner.degraded.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%error, "rate limiting through Redis failed; limits are per instance until it answers");
                    }
                }
            }
        }
        inner.local.check(client)
    }

    fn problem(&self, wait: Duration) -> Problem {
        let secs = Problem::retry_after_secs(wait);
        let (rate, burst) = self
            .inner
            .as_ref()
            .map_or((0.0, 0), |i| (i.per_second, i.burst));
        Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
            .with_detail(format!(
                "more than {rate} requests per second (bursts of {burst}) from this client; retry after {secs} s"
            ))
            .with_retry_after(secs)
    }
}

/// The client of a request: `key:{digest}` for an `X-API-Key`, else `ip:{address}`:
/// the peer's address, or with `trusted_proxy_hops` proxies in front (each appending
/// the address it saw to `X-Forwarded-For`) the entry the outermost one appended.
/// Entries a client wrote itself sit further left and are never used; a header
/// shorter than the hops falls back to the peer's address.
pub fn client_of(request: &Request, trusted_proxy_hops: usize) -> String {
    if let Some(key) = request
        .headers()
        .get(API_KEY_HEADER)
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty())
    {
        let digest = Sha256::digest(key);
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        return format!("key:{hex}");
    }
    if trusted_proxy_hops > 0 {
        let forwarded: Vec<std::net::IpAddr> = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map_while(|entry| entry.trim().parse().ok())
            .collect();
        if let Some(ip) = forwarded
            .len()
            .checked_sub(trusted_proxy_hops)
            .map(|i| forwarded[i])
        {
            return format!("ip:{ip}");
        }
    }
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
        None => "ip:unknown".to_owned(),
    }
}

/// Middleware of the customer routes: 429 with `Retry-After` over the limit.
pub async fn enforce(State(limiter): State<RateLimiter>, request: Request, next: Next) -> Response {
    let hops = limiter.inner.as_ref().map_or(0, |i| i.trusted_proxy_hops);
    let client = client_of(&request, hops);
    match limiter.check(&client).await {
        Decision::Allowed => next.run(request).await,
        Decision::Limited { wait } => {
            metrics::counter!("rate_limit_rejected_total").increment(1);
            tracing::debug!(client, wait_ms = wait.as_millis() as u64, "rate limited");
            limiter.problem(wait).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn config(per_second: f64, burst: u32) -> RateLimitConfig {
        RateLimitConfig {
            per_second,
            burst,
            trusted_proxy_hops: 0,
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_never_zero() {
        assert_eq!(Problem::retry_after_secs(Duration::ZERO), 1);
        assert_eq!(Problem::retry_after_secs(Duration::from_millis(20)), 1);
        assert_eq!(Problem::retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(Problem::retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(Problem::retry_after_secs(Duration::from_millis(4990)), 5);
    }

    #[test]
    fn zero_rate_turns_limiting_off() {
        assert!(quota(&config(0.0, 10)).is_none());
        assert!(quota(&config(2.0, 10)).is_some());
    }

    #[test]
    fn the_local_limiter_allows_the_burst_then_the_rate_per_client() {
        let clock = FakeRelativeClock::default();
        // 2 per second (one every 500 ms), bursts of 3.
        let local = Local::new(quota(&config(2.0, 3)).expect("on"), clock.clone());
        for _ in 0..3 {
            assert_eq!(local.check("ip:a"), Decision::Allowed);
        }
        assert_eq!(
            local.check("ip:a"),
            Decision::Limited {
                wait: Duration::from_millis(500)
            }
        );
        assert_eq!(
            local.check("ip:b"),
            Decision::Allowed,
            "another client has its own bucket"
        );
        clock.advance(Duration::from_millis(200));
        assert_eq!(
            local.check("ip:a"),
            Decision::Limited {
                wait: Duration::from_millis(300)
            },
            "the wait shrinks with time"
        );
        clock.advance(Duration::from_millis(300));
        assert_eq!(
            local.check("ip:a"),
            Decision::Allowed,
            "one more after 500 ms"
        );
        assert!(matches!(local.check("ip:a"), Decision::Limited { .. }));
        // Idle for the whole burst's refill: the full burst again.
        clock.advance(Duration::from_secs(2));
        for _ in 0..3 {
            assert_eq!(local.check("ip:a"), Decision::Allowed);
        }
        assert!(matches!(local.check("ip:a"), Decision::Limited { .. }));
    }

    #[test]
    fn a_slow_rate_gives_a_long_retry_after() {
        let clock = FakeRelativeClock::default();
        // One request every 5 s, no burst beyond it.
        let local = Local::new(quota(&config(0.2, 1)).expect("on"), clock.clone());
        assert_eq!(local.check("k"), Decision::Allowed);
        let Decision::Limited { wait } = local.check("k") else {
            panic!("limited");
        };
        assert_eq!(Problem::retry_after_secs(wait), 5);
        clock.advance(Duration::from_millis(1500));
        let Decision::Limited { wait } = local.check("k") else {
            panic!("limited");
        };
        assert_eq!(
            Problem::retry_after_secs(wait),
            4,
            "3.5 s left rounds up to 4"
        );
    }

    fn client_of_(request: &Request) -> String {
        client_of(request, 0)
    }

    #[test]
    fn behind_trusted_proxies_the_client_is_the_address_the_outermost_one_saw() {
        let request = |forwarded: &[&str]| {
            let mut builder = Request::builder().uri("/orders");
            for value in forwarded {
                builder = builder.header("x-forwarded-for", *value);
            }
            let mut request = builder.body(axum::body::Body::empty()).expect("a request");
            request
                .extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 9], 4000))));
            request
        };
        // A client's own (spoofed) entry, then the one the load balancer appended.
        let spoofed = request(&["1.2.3.4, 203.0.113.7"]);
        assert_eq!(client_of(&spoofed, 1), "ip:203.0.113.7");
        assert_eq!(client_of(&spoofed, 2), "ip:1.2.3.4");
        assert_eq!(client_of(&spoofed, 0), "ip:10.0.0.9", "no trust: the peer");
        // Several header lines count as one list.
        let split = request(&["198.51.100.1", "203.0.113.7"]);
        assert_eq!(client_of(&split, 1), "ip:203.0.113.7");
        // Too short or missing: the peer's address.
        assert_eq!(client_of(&request(&["203.0.113.7"]), 2), "ip:10.0.0.9");
        assert_eq!(client_of(&request(&[]), 1), "ip:10.0.0.9");
    }

    #[test]
    fn clients_are_api_keys_as_digests_else_addresses() {
        let request = |key: Option<&str>, addr: Option<&str>| {
            let mut builder = Request::builder().uri("/orders");
            if let Some(key) = key {
                builder = builder.header(API_KEY_HEADER, key);
            }
            let mut request = builder.body(axum::body::Body::empty()).expect("a request");
            if let Some(addr) = addr {
                let addr: SocketAddr = addr.parse().expect("an address");
                request.extensions_mut().insert(ConnectInfo(addr));
            }
            request
        };
        let keyed = client_of_(&request(Some("secret-key"), Some("10.0.0.1:4000")));
        assert!(
            keyed.starts_with("key:") && !keyed.contains("secret"),
            "{keyed}"
        );
        assert_eq!(keyed.len(), 4 + 32);
        assert_eq!(keyed, client_of_(&request(Some("secret-key"), None)));
        assert_ne!(keyed, client_of_(&request(Some("other-key"), None)));
        assert_eq!(
            client_of_(&request(None, Some("10.0.0.1:4000"))),
            client_of_(&request(None, Some("10.0.0.1:5000"))),
            "the address, not the port"
        );
        assert_eq!(
            client_of_(&request(None, Some("10.0.0.1:4000"))),
            "ip:10.0.0.1"
        );
        assert_eq!(client_of_(&request(None, None)), "ip:unknown");
    }
}
