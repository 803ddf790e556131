//! Cache-aside of orders: `GET /orders/{id}` reads Redis first; on a
//! miss, a failed read or an entry that does not decode (logged `Order {id}
//! cache-database consistency issue detected`) it reads the database and puts the
//! order back. Writers commit to the database first and then update the entry
//! ([`OrderCache::updated`]): one attempt inline, then, off the request's path, 3
//! more after 100, 200 and 400 ms; if all fail, `Failed to cache order {id}, will
//! self-heal on next read`. The request never fails for the cache.
//!
//! # Why entries carry the order's version
//!
//! Every change of an order bumps its `version` in the same transaction. An entry
//! is `"{version}:{order JSON}"`, and every write goes through one Lua script that
//! replaces the entry only if the incoming version is not older than the stored
//! one. That closes the classic stale re-populate race: a reader loads version 3,
//! a writer commits version 4 and caches it, then the reader's late put of 3 is
//! refused, whatever the order of the two puts. A plain DEL on change would leave
//! that window open (the reader's old row lands after the delete); a tombstone
//! would close it only for its own lifetime and turn reads into misses. Writers
//! therefore update the entry with the committed order rather than delete it,
//! which also keeps the hit rate up. A reader that found a corrupt entry passes
//! the raw value it saw, and the script replaces exactly that value whatever its
//! version prefix says.
//!
//! # When Redis cannot be written
//!
//! If an update fails, the entry may still hold an older version. The order id is
//! then kept in this instance's *dirty* set (with the version that failed) until a
//! put of that version or a newer one succeeds: reads of a dirty id skip the cache
//! (a forced miss that re-populates it), and when Redis answers again the dirty
//! entries are deleted before anything is read from the cache. So a read after a
//! change never shows an older status, as long as this process lives; past a
//! crash, the TTL (`SALES_REDIS_ORDER_TTL_SECS`) bounds how long another instance
//! could serve the older entry. Past [`DIRTY_CAPACITY`] ids the whole order cache
//! is dropped on recovery instead (SCAN + UNLINK of this prefix's order keys).
//!
//! Metrics: `cache_requests_total{cache="orders",result=hit|miss|error|corrupt}`,
//! `cache_writes_total{cache="orders",result=ok|failed}` (one per put, after its
//! retries), and `cache_available` (see [`super`]).

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use contracts::orders::Order;
use parking_lot::Mutex;
use redis::Script;
use sqlx::PgPool;
use uuid::Uuid;

use super::{CallError, Redis};
use crate::store::orders as store;

/// Retries of a failed update, backing off from [`FIRST_RETRY_DELAY`]
/// (`resilience::backoff::exponential`: 100, 200, 400 ms).
pub const RETRIES: u32 = 3;
/// The delay before the first retry.
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
/// The longest delay between retries.
pub const MAX_RETRY_DELAY: Duration = Duration::from_millis(400);

/// Most dirty ids kept one by one; past it the whole order cache is dropped on recovery.
pub const DIRTY_CAPACITY: usize = 10_000;

/// `KEYS[1]` the entry; `ARGV` version, value, TTL in ms, and the raw value a
/// reader found corrupt (or ''). Writes unless the stored entry has a newer
/// version; returns 1 when written, 0 when the stored one is newer.
const PUT_LUA: &str = r"
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'string' and current ~= ARGV[4] then
  local stored = tonumber(string.match(current, '^(%d+):'))
  if stored and stored > tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

static PUT: LazyLock<Script> = LazyLock::new(|| Script::new(PUT_LUA));

fn count_request(result: &'static str) {
    metrics::counter!("cache_requests_total", "cache" => "orders", "result" => result).increment(1);
}

fn count_write(result: &'static str) {
    metrics::counter!("cache_writes_total", "cache" => "orders", "result" => result).increment(1);
}

/// The entry of `order`: `"{version}:{json}"`.
pub fn encode(order: &Order) -> String {
    // An `Order` always serializes (plain data, string keys).
    let json = serde_json::to_string(order).unwrap_or_default();
    format!("{}:{json}", order.version)
}

/// The order in an entry, if it is a well-formed entry of order `id`.
pub fn decode(raw: &str, id: Uuid) -> Option<Order> {
    let (version, json) = raw.split_once(':')?;
    let version: i32 = version.parse().ok()?;
    let order: Order = serde_json::from_str(json).ok()?;
    (order.id == id && order.version == version).then_some(order)
}

/// What a cache lookup found.
enum Lookup {
    Hit(Box<Order>),
    Miss,
    /// The raw entry that did not decode.
    Corrupt(String),
    Failed,
}

/// Ids whose entry may be older than the database, with the version that failed.
#[derive(Default)]
struct Dirty {
    ids: HashMap<Uuid, i32>,
    /// Too many to track: every entry of this prefix must go.
    overflow: bool,
}

struct Inner {
    redis: Redis,
    ttl: Duration,
    dirty: Mutex<Dirty>,
    repairing: AtomicBool,
    /// A task deletes the dirty entries once Redis answers again.
    healing: AtomicBool,
}

/// The order cache; without Redis every method reads or does nothing. Cheap to clone.
#[derive(Clone, Default)]
pub struct OrderCache {
    inner: Option<Arc<Inner>>,
}

impl OrderCache {
    /// A cache in `redis` with entries living `ttl`; `None`: no cache.
    pub fn new(redis: Option<Redis>, ttl: Duration) -> Self {
        Self {
            inner: redis.map(|redis| {
                Arc::new(Inner {
                    redis,
                    ttl,
                    dirty: Mutex::new(Dirty::default()),
                    repairing: AtomicBool::new(false),
                    healing: AtomicBool::new(false),
                })
            }),
        }
    }

    /// No cache: every read goes to the database.
    pub fn disabled() -> Self {
        Self::default()
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The Redis key of order `id` (tests look at it).
    pub fn key(&self, id: Uuid) -> Option<String> {
        self.inner.as_ref().map(|i| i.key(id))
    }

    /// Cache-aside read: the cached order, else `load` (the database, only
    /// awaited then), put back in the cache when found.
    pub async fn read<E>(
        &self,
        id: Uuid,
        load: impl Future<Output = Result<Option<Order>, E>>,
    ) -> Result<Option<Order>, E> {
        let Some(inner) = &self.inner else {
            return load.await;
        };
        let found = inner.lookup(id).await;
        let replace = match found {
            Lookup::Hit(order) => return Ok(Some(*order)),
            Lookup::Miss => Some(String::new()),
            Lookup::Corrupt(raw) => Some(raw),
            // Redis failed just now: do not wait on it a second time.
            Lookup::Failed => None,
        };
        let order = load.await?;
        if let (Some(order), Some(replace)) = (&order, replace) {
            let written = inner.put(order, &replace, false).await;
            count_write(if written { "ok" } else { "failed" });
        }
        Ok(order)
    }

    /// After a commit that changed `order`: one attempt now, the retries in the
    /// background. Use where a read right after must see the change (status
    /// changes); returns once the first attempt is done.
    pub async fn updated(&self, order: &Order) {
        let Some(inner) = &self.inner else {
            return;
        };
        inner.mark_dirty(order.id, order.version);
        if !inner.redis.is_paused() && inner.put(order, "", false).await {
            inner.clean(order.id, order.version);
            count_write("ok");
            return;
        }
        tokio::spawn(inner.clone().retry(order.clone(), false));
    }

    /// After a commit that changed `order` in a way no status read depends on
    /// (a new order, its delivery id): every attempt off the caller's path.
    pub fn updated_in_background(&self, order: &Order) {
        let Some(inner) = &self.inner else {
            return;
        };
        inner.mark_dirty(order.id, order.version);
        tokio::spawn(inner.clone().retry(order.clone(), true));
    }

    /// After a commit that changed order `id` whose new state the caller does
    /// not hold (workers): reads it and [`OrderCache::updated`]; if it cannot be
    /// read, the entry is dropped.
    pub async fn reload(&self, pool: &PgPool, id: Uuid) {
        let Some(inner) = &self.inner else {
            return;
        };
        let loaded = match pool.acquire().await {
            Ok(mut conn) => store::load(&mut conn, id).await,
            Err(e) => Err(e),
        };
        match loaded {
            Ok(Some(order)) => self.updated(&order).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(order_id = %id, error = %e, "reading the changed order failed; dropping its cache entry");
                inner.mark_dirty(id, i32::MAX);
                inner.heal_later();
            }
        }
    }
}

impl Inner {
    fn key(&self, id: Uuid) -> String {
        self.redis.key("order", id)
    }

    async fn lookup(&self, id: Uuid) -> Lookup {
        if !self.repair(true).await || self.is_dirty(id) {
            // Possibly older than the database: read it there, then put it back.
            count_request("miss");
            return Lookup::Miss;
        }
        let key = self.key(id);
        let read = self
            .redis
            .call(|mut c| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await;
        match read {
            Ok(None) => {
                count_request("miss");
                Lookup::Miss
            }
            Ok(Some(raw)) => match decode(&raw, id) {
                Some(order) => {
                    count_request("hit");
                    Lookup::Hit(Box::new(order))
                }
                None => {
                    tracing::error!(order_id = %id, entry_len = raw.len(),
                        "Order {id} cache-database consistency issue detected");
                    count_request("corrupt");
                    Lookup::Corrupt(raw)
                }
            },
            Err(CallError::Paused) => {
                count_request("error");
                Lookup::Failed
            }
            Err(error) => {
                tracing::warn!(order_id = %id, %error, "Cache read failed for order {id}, falling back to database");
                count_request("error");
                Lookup::Failed
            }
        }
    }

    /// One put through the version check; whether the entry now holds this
    /// version or a newer one.
    async fn put(&self, order: &Order, replace: &str, unpaused: bool) -> bool {
        let key = self.key(order.id);
        let value = encode(order);
        let version = order.version;
        let ttl_ms = self.ttl.as_millis() as u64;
        let replace = replace.to_owned();
        let op = |mut c: redis::aio::ConnectionManager| async move {
            PUT.key(&key)
                .arg(version)
                .arg(&value)
                .arg(ttl_ms)
                .arg(&replace)
                .invoke_async::<i64>(&mut c)
                .await
        };
        let result = if unpaused {
            self.redis.call_unpaused(op).await
        } else {
            self.redis.call(op).await
        };
        match result {
            Ok(_) => true,
            Err(error) => {
                tracing::debug!(order_id = %order.id, %error, "cache put failed");
                false
            }
        }
    }

    /// Attempts after each delay until one succeeds.
    /// Writes `order` (at once first when `now`), then retries with backoff.
    async fn retry(self: Arc<Self>, order: Order, now: bool) {
        let delays = (1..=RETRIES)
            .map(|attempt| {
                resilience::backoff::exponential(attempt, FIRST_RETRY_DELAY, MAX_RETRY_DELAY)
            })
            .collect::<Vec<_>>();
        let first = now.then_some(Duration::ZERO);
        for delay in first.into_iter().chain(delays) {
            tokio::time::sleep(delay).await;
            if self.put(&order, "", true).await {
                self.clean(order.id, order.version);
                count_write("ok");
                return;
            }
        }
        count_write("failed");
        tracing::warn!(order_id = %order.id, version = order.version,
            "Failed to cache order {}, will self-heal on next read", order.id);
        self.heal_later();
    }

    /// Makes sure a task deletes the dirty entries as soon as Redis answers, so
    /// other instances stop seeing them even if this one serves no read.
    fn heal_later(self: &Arc<Self>) {
        if self.healing.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        tokio::spawn(async move {
            loop {
                while !inner.is_clean() {
                    tokio::time::sleep(super::DOWN_PAUSE).await;
                    inner.repair(false).await;
                }
                inner.healing.store(false, Ordering::Release);
                // Marked dirty after the last look, with no task to see it?
                if inner.is_clean() || inner.healing.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }

    fn is_clean(&self) -> bool {
        let dirty = self.dirty.lock();
        dirty.ids.is_empty() && !dirty.overflow
    }

    fn mark_dirty(&self, id: Uuid, version: i32) {
        let mut dirty = self.dirty.lock();
        if dirty.overflow {
            return;
        }
        if dirty.ids.len() >= DIRTY_CAPACITY && !dirty.ids.contains_key(&id) {
            dirty.ids.clear();
            dirty.overflow = true;
            return;
        }
        let v = dirty.ids.entry(id).or_insert(version);
        *v = (*v).max(version);
    }

    /// The entry holds `version` or newer now.
    fn clean(&self, id: Uuid, version: i32) {
        let mut dirty = self.dirty.lock();
        if dirty.ids.get(&id).is_some_and(|v| *v <= version) {
            dirty.ids.remove(&id);
        }
    }

    fn is_dirty(&self, id: Uuid) -> bool {
        let dirty = self.dirty.lock();
        dirty.overflow || dirty.ids.contains_key(&id)
    }

    /// Deletes the dirty entries (all order entries after an overflow). Returns
    /// whether the cache may be read (nothing dirty left, or only individual ids,
    /// which [`Inner::is_dirty`] turns into misses).
    async fn repair(&self, paused_ok: bool) -> bool {
        let (ids, overflow) = {
            let dirty = self.dirty.lock();
            if dirty.ids.is_empty() && !dirty.overflow {
                return true;
            }
            (
                dirty.ids.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(),
                dirty.overflow,
            )
        };
        if (paused_ok && self.redis.is_paused()) || self.repairing.swap(true, Ordering::Acquire) {
            return !overflow;
        }
        let repaired = if overflow {
            self.drop_all().await
        } else {
            self.drop_ids(&ids).await
        };
        self.repairing.store(false, Ordering::Release);
        match repaired {
            Ok(()) => {
                let mut dirty = self.dirty.lock();
                if overflow {
                    dirty.overflow = false;
                }
                for (id, version) in ids {
                    // A newer failure since the snapshot stays dirty.
                    if dirty.ids.get(&id) == Some(&version) {
                        dirty.ids.remove(&id);
                    }
                }
                tracing::info!(
                    overflow,
                    "cache entries written while Redis was unreachable dropped"
                );
                true
            }
            Err(error) => {
                tracing::debug!(%error, "dropping dirty cache entries failed; retried on the next read");
                !overflow
            }
        }
    }

    async fn drop_ids(&self, ids: &[(Uuid, i32)]) -> Result<(), CallError> {
        for chunk in ids.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|(id, _)| self.key(*id)).collect();
            self.redis
                .call_unpaused(|mut c| async move {
                    redis::cmd("DEL")
                        .arg(&keys)
                        .query_async::<i64>(&mut c)
                        .await
                })
                .await?;
        }
        Ok(())
    }

    async fn drop_all(&self) -> Result<(), CallError> {
        let pattern = format!("{}order:*", self.redis.prefix());
        let mut cursor: u64 = 0;
        loop {
            let pattern = pattern.clone();
            let (next, keys): (u64, Vec<String>) = self
                .redis
                .call_unpaused(|mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if !keys.is_empty() {
                self.redis
                    .call_unpaused(|mut c| async move {
                        redis::cmd("UNLINK")
                            .arg(&keys)
                            .query_async::<i64>(&mut c)
                            .await
                    })
                    .await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use contracts::{Address, LineItem, orders::OrderStatus};

    use super::*;

    fn order(version: i32) -> Order {
        Order {
            id: Uuid::now_v7(),
            customer_id: "c".into(),
            status: OrderStatus::PendingShipment,
            items: vec![LineItem {
                product_id: "SKU".into(),
                quantity: 1,
            }],
            shipping_address: Address {
                recipient: "r".into(),
                line1: "l".into(),
                line2: None,
                city: "c".into(),
                postal_code: "p".into(),
                country: "US".into(),
            },
            requires_manual_review: false,
            fallback_used: false,
            delivery_id: None,
            delivery_hold: None,
            version,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn entries_round_trip_and_refuse_anything_else() {
        let o = order(3);
        let raw = encode(&o);
        assert!(raw.starts_with("3:{"));
        assert_eq!(decode(&raw, o.id), Some(o.clone()));
        assert_eq!(decode(&raw, Uuid::now_v7()), None, "another order's entry");
        assert_eq!(
            decode(&raw.replacen('3', "4", 1), o.id),
            None,
            "version mismatch"
        );
        assert_eq!(decode("3:{not json", o.id), None);
        assert_eq!(decode("garbage", o.id), None);
        assert_eq!(
            decode(&serde_json::to_string(&o).expect("serializes"), o.id),
            None
        );
    }
}
