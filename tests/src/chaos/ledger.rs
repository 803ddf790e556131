//! The ledger of a chaos run: once the load stopped and the system settled
//! (bounded), invariants 1–12, each read from the three databases and the
//! clients' records, printed one line each with its counts: 1–8 of the first
//! chaos run, 9–11 for outages that outlive the outbox's patience (no dead
//! letter without a poison cause, flagged orders never shipped, cancelled
//! orders' units all back), and 12: every order's status is the one its
//! delivery implies (sales followed delivery's events through the faults).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    time::{Duration, Instant},
};

use sqlx::PgPool;
use uuid::Uuid;

use super::{
    Size,
    faults::{FaultKind, Injected, Recovered},
    load::{Kind, Outcome, Request},
};

/// Pools on the three databases (straight to PostgreSQL).
#[derive(Clone)]
pub struct Dbs {
    pub sales: PgPool,
    pub product: PgPool,
    pub delivery: PgPool,
}

/// After a DB outage, 503s are still expected this long (breaker reset, pool
/// reconnect, a request that started inside the outage).
pub const DB_OUTAGE_MARGIN: Duration = Duration::from_secs(5);
/// After sales is back, a connection error is still explained this long.
pub const SALES_RESTART_MARGIN: Duration = Duration::from_secs(1);

/// Stock per product: (on hand, reserved).
pub async fn stock(product: &PgPool) -> BTreeMap<String, (i64, i64)> {
    let rows: Vec<(String, i32, i32)> =
        sqlx::query_as("SELECT id, stock_on_hand, reserved FROM products")
            .fetch_all(product)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(id, on_hand, reserved)| (id, (i64::from(on_hand), i64::from(reserved))))
        .collect()
}

/// Whether (and when) the system settled after the load.
#[derive(Debug, Clone)]
pub struct Quiescence {
    pub reached: bool,
    pub after: Duration,
    /// What was still moving at the last look.
    pub outstanding: String,
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Polls until nothing is in flight: outbox relayed and applied at product,
/// no saga running, no delivery pending, no fallback order waiting for its
/// re-check, no cancelled order whose units product has not confirmed back.
/// Gives up after `bound`.
pub async fn wait_for_quiescence(dbs: &Dbs, bound: Duration) -> Quiescence {
    let started = Instant::now();
    loop {
        let pending = count(
            &dbs.sales,
            "SELECT count(*) FROM outbox_events WHERE status = 'PENDING'",
        )
        .await;
        let sagas = count(
            &dbs.sales,
            "SELECT count(*) FROM saga_instances WHERE status IN ('RUNNING', 'COMPENSATING')",
        )
        .await;
        let deliveries = count(
            &dbs.sales,
            "SELECT count(*) FROM delivery_retries WHERE status = 'PENDING'",
        )
        .await;
        let unverified = count(
            &dbs.sales,
            "SELECT count(*) FROM manual_reviews r JOIN orders o ON o.id = r.order_id
             WHERE r.status = 'OPEN' AND r.reason = 'AVAILABILITY_UNVERIFIED' AND o.status <> 'CANCELLED'",
        )
        .await;
        let consumed: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM outbox_events WHERE event_type IN ('ORDER_CREATED', 'ORDER_CANCELLED')",
        )
        .fetch_all(&dbs.sales)
        .await
        .unwrap();
        let applied: i64 =
            sqlx::query_scalar("SELECT count(*) FROM inbox WHERE event_id = ANY($1)")
                .bind(&consumed)
                .fetch_one(&dbs.product)
                .await
                .unwrap();
        let unapplied = consumed.len() as i64 - applied;
        let unreleased = count(
            &dbs.sales,
            "SELECT count(*) FROM orders WHERE status = 'CANCELLED' AND stock_released_at IS NULL",
        )
        .await;
        let delivery_pending = count(
            &dbs.delivery,
            "SELECT count(*) FROM outbox_events WHERE status = 'PENDING'",
        )
        .await;
        // Delivery's events sales' queue takes (all but CREATED), and those sales applied.
        let followed: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM outbox_events WHERE status = 'SENT' AND payload->>'status' <> 'CREATED'",
        )
        .fetch_all(&dbs.delivery)
        .await
        .unwrap();
        let seen: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM delivery_events_inbox WHERE event_id = ANY($1)",
        )
        .bind(&followed)
        .fetch_one(&dbs.sales)
        .await
        .unwrap();
        let unfollowed = followed.len() as i64 - seen;
        let outstanding = format!(
            "outbox pending {pending}, sagas running {sagas}, deliveries pending {deliveries}, \
             unverified fallback orders {unverified}, events not applied at product {unapplied}, \
             cancelled orders with stock not confirmed back {unreleased}, \
             delivery outbox pending {delivery_pending}, delivery events not applied at sales {unfollowed}"
        );
        let quiet = pending
            + sagas
            + deliveries
            + unverified
            + unapplied
            + unreleased
            + delivery_pending
            + unfollowed
            == 0;
        if quiet || started.elapsed() >= bound {
            return Quiescence {
                reached: quiet,
                after: started.elapsed(),
                outstanding,
            };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Everything the check needs.
pub struct Inputs<'a> {
    pub seed: u64,
    pub size: &'a Size,
    pub dbs: &'a Dbs,
    /// Stock right before the load.
    pub initial: &'a BTreeMap<String, (i64, i64)>,
    pub records: &'a [Request],
    pub faults: Vec<Injected>,
    pub quiescence: Quiescence,
    /// When the load stopped, since `t0`.
    pub load_end: Duration,
}

/// One invariant's verdict.
pub struct Line {
    pub number: usize,
    pub name: &'static str,
    pub pass: bool,
    pub counts: String,
    /// Examples of violations, or per-fault figures.
    pub details: Vec<String>,
}

/// The printed ledger.
pub struct Ledger {
    pub header: Vec<String>,
    pub lines: Vec<Line>,
}

impl Ledger {
    pub fn passed(&self) -> bool {
        self.lines.iter().all(|l| l.pass)
    }
}

impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for h in &self.header {
            writeln!(f, "{h}")?;
        }
        for line in &self.lines {
            writeln!(
                f,
                "{}. {:<46} {}  {}",
                line.number,
                line.name,
                if line.pass { "PASS" } else { "FAIL" },
                line.counts
            )?;
            for d in &line.details {
                writeln!(f, "     {d}")?;
            }
        }
        write!(
            f,
            "ledger: {}",
            if self.passed() {
                "every invariant holds"
            } else {
                "INVARIANTS FAILED"
            }
        )
    }
}

/// What the databases hold at the end.
struct Snapshot {
    /// id → (customer, status, requires_manual_review, fallback_used, delivery_id)
    orders: HashMap<Uuid, OrderRow>,
    items: HashMap<Uuid, BTreeMap<String, i64>>,
    /// (customer, key) → order id
    keys: HashMap<(String, String), Uuid>,
    /// order id → [(reason, status, details)]
    reviews: HashMap<Uuid, Vec<(String, String, serde_json::Value)>>,
    outbox: BTreeMap<(String, String), i64>,
    /// FAILED outbox rows: (refusals by the broker, last error).
    dead_letters: Vec<(i32, Option<String>)>,
    order_created: Vec<(Uuid, Uuid)>,
    sagas: BTreeMap<String, i64>,
    products: BTreeMap<String, (i64, i64)>,
    /// order id → status
    reservations: HashMap<Uuid, String>,
    reservation_items: HashMap<Uuid, BTreeMap<String, i64>>,
    inbox: HashSet<Uuid>,
    /// order id → (delivery id, status)
    deliveries: HashMap<Uuid, Vec<(Uuid, String)>>,
}

struct OrderRow {
    status: String,
    flagged: bool,
    fallback: bool,
    delivery_id: Option<Uuid>,
    /// Why its delivery waits (a flagged fallback order's), if it does.
    delivery_hold: Option<String>,
    /// Product confirmed a cancelled order's units back.
    stock_released: bool,
}

impl Snapshot {
    async fn read(dbs: &Dbs) -> Self {
        type Row = (Uuid, String, bool, bool, Option<Uuid>, Option<String>, bool);
        let orders: Vec<Row> = sqlx::query_as(
            "SELECT id, status, requires_manual_review, fallback_used, delivery_id, delivery_hold,
                    stock_released_at IS NOT NULL
             FROM orders",
        )
        .fetch_all(&dbs.sales)
        .await
        .unwrap();
        let orders = orders
            .into_iter()
            .map(
                |(id, status, flagged, fallback, delivery_id, delivery_hold, stock_released)| {
                    (
                        id,
                        OrderRow {
                            status,
                            flagged,
                            fallback,
                            delivery_id,
                            delivery_hold,
                            stock_released,
                        },
                    )
                },
            )
            .collect();
        let items = group_items(
            sqlx::query_as("SELECT order_id, product_id, quantity FROM order_items")
                .fetch_all(&dbs.sales)
                .await
                .unwrap(),
        );
        let keys: Vec<(String, String, Uuid)> =
            sqlx::query_as("SELECT customer_id, key, order_id FROM idempotency_keys")
                .fetch_all(&dbs.sales)
                .await
                .unwrap();
        let keys = keys.into_iter().map(|(c, k, o)| ((c, k), o)).collect();
        let review_rows: Vec<(Uuid, String, String, serde_json::Value)> =
            sqlx::query_as("SELECT order_id, reason, status, details FROM manual_reviews")
                .fetch_all(&dbs.sales)
                .await
                .unwrap();
        let mut reviews: HashMap<Uuid, Vec<_>> = HashMap::new();
        for (order, reason, status, details) in review_rows {
            reviews
                .entry(order)
                .or_default()
                .push((reason, status, details));
        }
        let outbox: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT status, event_type, count(*) FROM outbox_events GROUP BY status, event_type",
        )
        .fetch_all(&dbs.sales)
        .await
        .unwrap();
        let outbox = outbox.into_iter().map(|(s, t, n)| ((s, t), n)).collect();
        let dead_letters = sqlx::query_as(
            "SELECT retry_count, last_error FROM outbox_events WHERE status = 'FAILED'",
        )
        .fetch_all(&dbs.sales)
        .await
        .unwrap();
        let order_created = sqlx::query_as(
            "SELECT id, aggregate_id FROM outbox_events WHERE event_type = 'ORDER_CREATED'",
        )
        .fetch_all(&dbs.sales)
        .await
        .unwrap();
        let sagas: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM saga_instances GROUP BY status")
                .fetch_all(&dbs.sales)
                .await
                .unwrap();
        let reservations: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT order_id, status FROM reservations")
                .fetch_all(&dbs.product)
                .await
                .unwrap();
        let reservation_items = group_items(
            sqlx::query_as("SELECT order_id, product_id, quantity FROM reservation_items")
                .fetch_all(&dbs.product)
                .await
                .unwrap(),
        );
        let inbox: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM inbox")
            .fetch_all(&dbs.product)
            .await
            .unwrap();
        let delivery_rows: Vec<(Uuid, Uuid, String)> =
            sqlx::query_as("SELECT id, order_id, status FROM deliveries")
                .fetch_all(&dbs.delivery)
                .await
                .unwrap();
        let mut deliveries: HashMap<Uuid, Vec<_>> = HashMap::new();
        for (id, order, status) in delivery_rows {
            deliveries.entry(order).or_default().push((id, status));
        }
        Self {
            orders,
            items,
            keys,
            reviews,
            outbox,
            dead_letters,
            order_created,
            sagas: sagas.into_iter().collect(),
            products: stock(&dbs.product).await,
            reservations: reservations.into_iter().collect(),
            reservation_items,
            inbox: inbox.into_iter().collect(),
            deliveries,
        }
    }

    fn open_reviews(&self, order: Uuid) -> Vec<&(String, String, serde_json::Value)> {
        self.reviews
            .get(&order)
            .map(|r| r.iter().filter(|(_, s, _)| s == "OPEN").collect())
            .unwrap_or_default()
    }

    /// Not cancelled and not waiting for staff because its stock could not be
    /// confirmed after a fallback: such an order must hold its units at product.
    fn live(&self, id: Uuid) -> bool {
        self.orders[&id].status != "CANCELLED"
            && !self.open_reviews(id).iter().any(|(reason, _, _)| {
                reason == "OUT_OF_STOCK_AFTER_FALLBACK" || reason == "UNKNOWN_PRODUCT"
            })
    }

    fn outbox_count(&self, status: &str) -> i64 {
        self.outbox
            .iter()
            .filter(|((s, _), _)| s == status)
            .map(|(_, n)| n)
            .sum()
    }
}

fn group_items(rows: Vec<(Uuid, String, i32)>) -> HashMap<Uuid, BTreeMap<String, i64>> {
    let mut map: HashMap<Uuid, BTreeMap<String, i64>> = HashMap::new();
    for (order, product, quantity) in rows {
        *map.entry(order).or_default().entry(product).or_default() += i64::from(quantity);
    }
    map
}

fn examples(list: &[String]) -> Vec<String> {
    list.iter().take(5).cloned().collect()
}

/// Reads the databases and judges invariants 1–8.
pub async fn check(inputs: Inputs<'_>) -> Ledger {
    let snap = Snapshot::read(inputs.dbs).await;
    let records = inputs.records;
    let q = &inputs.quiescence;
    let acked = records
        .iter()
        .filter(|r| r.kind.is_place() && r.order_id.is_some())
        .count();
    let mut header = vec![
        format!(
            "chaos ledger — seed {} (CHAOS_SEED={} repeats it), size {}: {} clients, {} faults, load {:.1}s",
            inputs.seed,
            inputs.seed,
            inputs.size.name,
            inputs.size.clients,
            inputs.faults.len(),
            inputs.load_end.as_secs_f64()
        ),
        format!(
            "requests {} (attempts {}), orders acknowledged {acked}, orders in sales {}",
            records.len(),
            records.iter().map(|r| r.attempts.len()).sum::<usize>(),
            snap.orders.len()
        ),
    ];
    header.push(if q.reached {
        format!(
            "quiescence reached {:.1}s after the load stopped",
            q.after.as_secs_f64()
        )
    } else {
        format!(
            "quiescence NOT reached within {:.0}s: {}",
            q.after.as_secs_f64(),
            q.outstanding
        )
    });
    let mut lines = vec![
        acknowledged_once(&snap, records),
        delivery_or_review(&snap),
        outbox_applied_once(&snap),
        stock_conserved(&snap, inputs.initial),
        sagas_settled(&snap),
        fallback_rechecked(&snap),
        statuses(records, &inputs.faults),
    ];
    lines.push(recovery(records, inputs.faults).await);
    lines.push(dead_letters_poisoned(&snap));
    lines.push(flagged_not_shipped(&snap));
    lines.push(cancelled_stock_returned(&snap));
    lines.push(status_follows_delivery(&snap));
    Ledger { header, lines }
}

/// 1. Every order acknowledged with 201 exists in the sales database, once.
fn acknowledged_once(snap: &Snapshot, records: &[Request]) -> Line {
    let mut bad = Vec::new();
    let (mut acked, mut found, mut refused_unrecorded, mut unanswered_recorded) = (0, 0, 0, 0);
    let mut cancels = 0;
    for r in records {
        match (&r.kind, r.order_id) {
            (kind, Some(id)) if kind.is_place() => {
                acked += 1;
                let key = (r.customer.clone(), r.key.clone().unwrap_or_default());
                match (snap.orders.contains_key(&id), snap.keys.get(&key)) {
                    (true, Some(keyed)) if *keyed == id => found += 1,
                    (exists, keyed) => bad.push(format!(
                        "key {} acknowledged order {id}: in sales {exists}, key → {keyed:?}",
                        key.1
                    )),
                }
            }
            (kind, None) if kind.is_place() => {
                let key = (r.customer.clone(), r.key.clone().unwrap_or_default());
                let recorded = snap.keys.contains_key(&key);
                match (r.final_code(), recorded) {
                    (None, true) => unanswered_recorded += 1,
                    (Some(code), true) => bad.push(format!(
                        "key {} answered {code} but its order was recorded",
                        key.1
                    )),
                    (_, false) => refused_unrecorded += 1,
                }
            }
            (Kind::Cancel(id), Some(_)) => {
                cancels += 1;
                let status = snap.orders.get(id).map(|o| o.status.as_str());
                if status != Some("CANCELLED") {
                    bad.push(format!(
                        "cancellation of {id} answered 200, order is {status:?}"
                    ));
                }
            }
            _ => {}
        }
    }
    let mut per_order: HashMap<Uuid, usize> = HashMap::new();
    for id in snap.keys.values() {
        *per_order.entry(*id).or_default() += 1;
    }
    let shared = per_order.values().filter(|n| **n > 1).count();
    let keyless = snap
        .orders
        .keys()
        .filter(|id| !per_order.contains_key(id))
        .count();
    for id in per_order.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id) {
        bad.push(format!("order {id} is behind several keys"));
    }
    if keyless > 0 {
        bad.push(format!("{keyless} orders without an Idempotency-Key row"));
    }
    Line {
        number: 1,
        name: "acknowledged orders exist once per key",
        pass: bad.is_empty() && acked == found,
        counts: format!(
            "acknowledged {acked}, found once {found}, missing/mismatched {}, orders behind several keys {shared}, \
             keyless orders {keyless}; not acknowledged: not recorded {refused_unrecorded}, recorded without an answer {unanswered_recorded}; \
             acknowledged cancellations {cancels}",
            acked - found
        ),
        details: examples(&bad),
    }
}

/// 2. Every order has exactly one delivery, or an open manual review explaining why not.
fn delivery_or_review(snap: &Snapshot) -> Line {
    let (mut one, mut in_review, mut cancelled) = (0, 0, 0);
    let mut bad = Vec::new();
    for (id, order) in &snap.orders {
        let deliveries = snap.deliveries.get(id).map(Vec::as_slice).unwrap_or(&[]);
        if order.status == "CANCELLED" {
            cancelled += 1;
            if deliveries.iter().any(|(_, s)| s != "CANCELLED") {
                bad.push(format!(
                    "cancelled order {id} has a live delivery {deliveries:?}"
                ));
            }
            continue;
        }
        match deliveries {
            [(delivery, _)] if order.delivery_id == Some(*delivery) => one += 1,
            [] if !snap.open_reviews(*id).is_empty() => in_review += 1,
            _ => bad.push(format!(
                "order {id} ({}): deliveries {deliveries:?}, recorded {:?}, open reviews {}",
                order.status,
                order.delivery_id,
                snap.open_reviews(*id).len()
            )),
        }
    }
    let orphans = snap
        .deliveries
        .iter()
        .filter(|(order, d)| {
            !snap.orders.contains_key(order) && d.iter().any(|(_, s)| s != "CANCELLED")
        })
        .count();
    if orphans > 0 {
        bad.push(format!(
            "{orphans} live deliveries of orders sales does not have"
        ));
    }
    Line {
        number: 2,
        name: "one delivery per order, or an open review",
        pass: bad.is_empty(),
        counts: format!(
            "orders {}: with exactly one delivery {one}, without one but in review {in_review}, cancelled {cancelled}, \
             violations {}, deliveries of unknown orders {orphans}",
            snap.orders.len(),
            bad.len() - usize::from(orphans > 0)
        ),
        details: examples(&bad),
    }
}

/// 3. Every outbox event SENT; each ORDER_CREATED applied once at product.
fn outbox_applied_once(snap: &Snapshot) -> Line {
    let total: i64 = snap.outbox.values().sum();
    let (sent, pending, failed) = (
        snap.outbox_count("SENT"),
        snap.outbox_count("PENDING"),
        snap.outbox_count("FAILED"),
    );
    let mut bad = Vec::new();
    let mut per_order: HashMap<Uuid, usize> = HashMap::new();
    let mut in_inbox = 0;
    for (event, order) in &snap.order_created {
        *per_order.entry(*order).or_default() += 1;
        if snap.inbox.contains(event) {
            in_inbox += 1;
        } else {
            bad.push(format!(
                "ORDER_CREATED {event} of order {order} not in product's inbox"
            ));
        }
    }
    for id in snap.orders.keys() {
        let n = per_order.get(id).copied().unwrap_or(0);
        if n != 1 {
            bad.push(format!("order {id} has {n} ORDER_CREATED events"));
        }
    }
    let (mut committed, mut released) = (0, 0);
    for (id, order) in &snap.orders {
        let reservation = snap.reservations.get(id).map(String::as_str);
        if snap.live(*id) {
            let held = snap.reservation_items.get(id);
            if reservation == Some("COMMITTED") && held == snap.items.get(id) {
                committed += 1;
            } else {
                bad.push(format!(
                    "live order {id} (fallback {}): reservation {reservation:?}, items {held:?} vs {:?}",
                    order.fallback,
                    snap.items.get(id)
                ));
            }
        } else if matches!(reservation, Some("ACTIVE" | "COMMITTED")) {
            bad.push(format!(
                "order {id} ({}) still holds a {reservation:?} reservation",
                order.status
            ));
        } else {
            released += 1;
        }
    }
    if pending + failed > 0 {
        bad.insert(0, format!("outbox: {pending} PENDING, {failed} FAILED"));
    }
    Line {
        number: 3,
        name: "outbox all SENT; ORDER_CREATED applied once",
        pass: bad.is_empty(),
        counts: format!(
            "events {total}: SENT {sent}, PENDING {pending}, FAILED {failed}; ORDER_CREATED {} (in inbox once {in_inbox}); \
             live orders with their reservation committed once {committed}, others holding nothing {released}",
            snap.order_created.len()
        ),
        details: examples(&bad),
    }
}

/// 4. Stock conserved at product, and it matches sales' live orders.
fn stock_conserved(snap: &Snapshot, initial: &BTreeMap<String, (i64, i64)>) -> Line {
    let mut active: BTreeMap<&str, i64> = BTreeMap::new();
    let mut committed: BTreeMap<&str, i64> = BTreeMap::new();
    for (order, items) in &snap.reservation_items {
        let bucket = match snap.reservations.get(order).map(String::as_str) {
            Some("ACTIVE") => &mut active,
            Some("COMMITTED") => &mut committed,
            _ => continue,
        };
        for (product, q) in items {
            *bucket.entry(product.as_str()).or_default() += q;
        }
    }
    let mut ordered: BTreeMap<&str, i64> = BTreeMap::new();
    for id in snap.orders.keys().filter(|id| snap.live(**id)) {
        for (product, q) in snap.items.get(id).into_iter().flatten() {
            *ordered.entry(product.as_str()).or_default() += q;
        }
    }
    let mut bad = Vec::new();
    let mut figures = Vec::new();
    for (id, (on_hand, reserved)) in &snap.products {
        let (a, c, o) = (
            active.get(id.as_str()).copied().unwrap_or(0),
            committed.get(id.as_str()).copied().unwrap_or(0),
            ordered.get(id.as_str()).copied().unwrap_or(0),
        );
        let start = initial.get(id).map_or(0, |s| s.0);
        let available = on_hand - reserved;
        if start != available + a + c || *reserved != a {
            bad.push(format!(
                "{id}: initial {start} ≠ available {available} + active {a} + committed {c} (reserved {reserved})"
            ));
        }
        if c != o {
            bad.push(format!(
                "{id}: committed {c} ≠ units of sales' live orders {o}"
            ));
        }
        figures.push(format!("{id} {start}={available}+{a}+{c}"));
    }
    Line {
        number: 4,
        name: "stock conserved per product",
        pass: bad.is_empty(),
        counts: format!(
            "initial = available + active + committed, reserved = Σ active, committed = sales' live orders: {}",
            figures.join(", ")
        ),
        details: examples(&bad),
    }
}

/// 5. No saga left RUNNING or COMPENSATING.
fn sagas_settled(snap: &Snapshot) -> Line {
    let get = |s: &str| snap.sagas.get(s).copied().unwrap_or(0);
    let stuck = get("RUNNING") + get("COMPENSATING");
    Line {
        number: 5,
        name: "no saga RUNNING or COMPENSATING",
        pass: stuck == 0,
        counts: format!(
            "sagas {}: {}",
            snap.sagas.values().sum::<i64>(),
            snap.sagas
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        details: Vec::new(),
    }
}

/// 6. Every fallback order re-checked: flag cleared, or a review with its reason.
fn fallback_rechecked(snap: &Snapshot) -> Line {
    let (mut fallback, mut cleared, mut cancelled) = (0, 0, 0);
    let mut kept: BTreeMap<String, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for (id, order) in snap.orders.iter().filter(|(_, o)| o.fallback) {
        fallback += 1;
        if order.status == "CANCELLED" {
            cancelled += 1;
            continue;
        }
        let open = snap.open_reviews(*id);
        let confirmed = snap.reviews.get(id).is_some_and(|r| {
            r.iter().any(|(reason, status, _)| {
                reason == "AVAILABILITY_UNVERIFIED" && status == "RESOLVED"
            })
        });
        if open
            .iter()
            .any(|(reason, _, _)| reason == "AVAILABILITY_UNVERIFIED")
        {
            bad.push(format!("fallback order {id} never re-checked"));
        } else if !order.flagged && open.is_empty() && confirmed {
            cleared += 1;
        } else if order.flagged
            && !open.is_empty()
            && open
                .iter()
                .all(|(_, _, d)| d.as_object().is_some_and(|m| !m.is_empty()))
        {
            for (reason, _, _) in open {
                *kept.entry(reason.clone()).or_default() += 1;
            }
        } else {
            bad.push(format!(
                "fallback order {id}: flagged {}, open reviews {:?}, confirmed {confirmed}",
                order.flagged,
                open.iter().map(|(r, _, _)| r).collect::<Vec<_>>()
            ));
        }
    }
    Line {
        number: 6,
        name: "every fallback order re-checked",
        pass: bad.is_empty(),
        counts: format!(
            "fallback orders {fallback}: flag cleared {cleared}, kept in review with reason {kept:?}, cancelled {cancelled}, not re-checked {}",
            bad.len()
        ),
        details: examples(&bad),
    }
}

/// Messages of a failure that is the broker's (an outage), never an event's own refusal.
const OUTAGE_ERRORS: [&str; 3] = ["PublishBatch failed", "publish timed out", "not attempted"];

/// Invariant 9. No dead letter without a poison cause: a FAILED row was refused by the
/// broker itself (never an outage's failure), as often as the shipped budget says.
fn dead_letters_poisoned(snap: &Snapshot) -> Line {
    let mut bad = Vec::new();
    for (refusals, error) in &snap.dead_letters {
        let error = error.as_deref().unwrap_or("");
        if OUTAGE_ERRORS.iter().any(|e| error.starts_with(e)) || *refusals < 5 {
            bad.push(format!(
                "a dead letter after {refusals} refusals, last error {error:?}"
            ));
        }
    }
    Line {
        number: 9,
        name: "no dead letter without a poison cause",
        pass: bad.is_empty(),
        counts: format!(
            "FAILED rows {}, of them from an outage or short of the budget {}",
            snap.dead_letters.len(),
            bad.len()
        ),
        details: examples(&bad),
    }
}

/// Invariant 10. No delivery for an order still flagged on the fallback: its delivery
/// waits for the re-check or staff.
fn flagged_not_shipped(snap: &Snapshot) -> Line {
    let (mut held, mut released) = (0, 0);
    let mut bad = Vec::new();
    for (id, order) in snap.orders.iter().filter(|(_, o)| o.fallback) {
        let live_deliveries = snap
            .deliveries
            .get(id)
            .map(|d| d.iter().filter(|(_, s)| s != "CANCELLED").count())
            .unwrap_or(0);
        let unconfirmed = snap.open_reviews(*id).iter().any(|(reason, _, _)| {
            matches!(
                reason.as_str(),
                "AVAILABILITY_UNVERIFIED" | "OUT_OF_STOCK_AFTER_FALLBACK" | "UNKNOWN_PRODUCT"
            )
        });
        if order.delivery_hold.is_some() || unconfirmed {
            held += 1;
            if live_deliveries > 0 || order.delivery_id.is_some() {
                bad.push(format!(
                    "flagged order {id} (hold {:?}) has {live_deliveries} live deliveries",
                    order.delivery_hold
                ));
            }
        } else {
            released += 1;
        }
    }
    Line {
        number: 10,
        name: "no delivery for an order still flagged",
        pass: bad.is_empty(),
        counts: format!(
            "fallback orders: still held {held}, released (confirmed, approved or cancelled) {released}, held with a delivery {}",
            bad.len()
        ),
        details: examples(&bad),
    }
}

/// Invariant 11. Every cancelled order's units are back at product (committed ones
/// restocked), and product confirmed it to sales: no unit waits on `ORDER_CANCELLED`.
fn cancelled_stock_returned(snap: &Snapshot) -> Line {
    let (mut cancelled, mut reserved_once, mut confirmed) = (0, 0, 0);
    let mut bad = Vec::new();
    for (id, order) in snap.orders.iter().filter(|(_, o)| o.status == "CANCELLED") {
        cancelled += 1;
        let reservation = snap.reservations.get(id).map(String::as_str);
        if snap.reservation_items.contains_key(id) {
            reserved_once += 1;
        }
        if matches!(reservation, Some("ACTIVE" | "COMMITTED")) {
            bad.push(format!(
                "cancelled order {id} still holds a {reservation:?} reservation"
            ));
        }
        if order.stock_released {
            confirmed += 1;
        } else {
            bad.push(format!(
                "cancelled order {id}: release not confirmed by product"
            ));
        }
    }
    Line {
        number: 11,
        name: "cancelled orders' units all back at product",
        pass: bad.is_empty(),
        counts: format!(
            "cancelled orders {cancelled} ({reserved_once} had reserved or committed units): holding stock {}, release confirmed {confirmed}",
            bad.iter().filter(|b| b.contains("still holds")).count()
        ),
        details: examples(&bad),
    }
}

/// The order status a delivery status implies (sales' `orders::status::from_delivery`).
fn implied_by(delivery_status: &str) -> &'static str {
    match delivery_status {
        "CREATED" => "PENDING_SHIPMENT",
        "PICKED_UP" | "IN_TRANSIT" => "SHIPPED",
        "DELIVERED" => "DELIVERED",
        "CANCELLED" => "CANCELLED",
        "FAILED" => "DELIVERY_FAILED",
        _ => "?",
    }
}

/// Invariant 12. Every order's status equals the one its delivery implies, after
/// quiescence: sales followed every status change delivery published (the courier moved
/// parcels all through the faults; reconciliation runs too, but only for orders unchanged
/// for its staleness, longer than a run). An order whose delivery's status cannot be
/// reached along the state machine is the one exception, and only with an open
/// `INVALID_STATUS_TRANSITION` review: never applied silently.
fn status_follows_delivery(snap: &Snapshot) -> Line {
    let mut checked = 0;
    let mut flagged = 0;
    let mut moved = 0;
    let mut violations = Vec::new();
    for (id, order) in &snap.orders {
        let Some(deliveries) = snap.deliveries.get(id) else {
            continue;
        };
        for (delivery_id, status) in deliveries {
            checked += 1;
            let want = implied_by(status);
            if matches!(status.as_str(), "PICKED_UP" | "IN_TRANSIT" | "DELIVERED") {
                moved += 1;
            }
            if order.status == want {
                continue;
            }
            let reviewed = snap
                .open_reviews(*id)
                .iter()
                .any(|(reason, _, _)| reason == "INVALID_STATUS_TRANSITION");
            if reviewed {
                flagged += 1;
            } else {
                violations.push(format!(
                    "order {id} is {} but its delivery {delivery_id} is {status} (implies {want})",
                    order.status
                ));
            }
        }
    }
    Line {
        number: 12,
        name: "every order's status equals the one its delivery implies",
        pass: violations.is_empty() && moved > 0,
        counts: format!(
            "{checked} orders with a delivery ({moved} moved by the courier), {flagged} in \
             INVALID_STATUS_TRANSITION review, {} wrong",
            violations.len()
        ),
        details: examples(&violations),
    }
}

fn overlaps(a: &super::load::Attempt, start: Duration, end: Duration) -> bool {
    a.start <= end && a.end >= start
}

/// Invariant 7: no status other than 2xx, 4xx for bad input, designed 409s,
/// 429, or 503 during the database outage (and, for a cancellation, while
/// delivery is down).
fn statuses(records: &[Request], faults: &[Injected]) -> Line {
    let windows = |kinds: &[FaultKind], margin: Duration| -> Vec<(Duration, Duration)> {
        faults
            .iter()
            .filter(|f| kinds.contains(&f.kind))
            .map(|f| (f.start, f.end + margin))
            .collect()
    };
    let db = windows(&[FaultKind::DatabaseCut], DB_OUTAGE_MARGIN);
    let delivery = windows(&[FaultKind::DeliveryKill], DB_OUTAGE_MARGIN);
    let sales_down = windows(&[FaultKind::SalesKillMidRelay], SALES_RESTART_MARGIN);
    let within = |a: &super::load::Attempt, w: &[(Duration, Duration)]| {
        w.iter().any(|(s, e)| overlaps(a, *s, *e))
    };
    let mut tally: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    let mut gave_up = 0;
    for r in records {
        if r.gave_up {
            gave_up += 1;
            bad.push(format!(
                "{:?} of client {} gave up after {} attempts",
                r.kind,
                r.client,
                r.attempts.len()
            ));
        }
        for a in &r.attempts {
            let verdict: Result<&'static str, String> = match (&a.outcome, &r.kind) {
                (Outcome::Status { code, .. }, _) if *code >= 500 && *code != 503 => {
                    Err(format!("{code}"))
                }
                (Outcome::Status { code: 201, .. }, Kind::Place | Kind::Oversized) => Ok("2xx"),
                (Outcome::Status { code: 200, .. }, Kind::Cancel(_)) => Ok("2xx"),
                (
                    Outcome::Status {
                        code: 400 | 422, ..
                    },
                    Kind::BadInput(_),
                ) => Ok("4xx bad input"),
                (
                    Outcome::Status {
                        code: 409, problem, ..
                    },
                    Kind::Place | Kind::Oversized,
                ) if matches!(
                    problem.as_deref(),
                    Some("insufficient-stock" | "in-progress")
                ) =>
                {
                    Ok("409 designed")
                }
                (
                    Outcome::Status {
                        code: 409, problem, ..
                    },
                    Kind::Cancel(_),
                ) if problem.as_deref() == Some("order-not-cancellable") => Ok("409 designed"),
                (Outcome::Status { code: 429, .. }, _) => Ok("429"),
                (Outcome::Status { code: 503, .. }, _) if within(a, &db) => Ok("503 in DB outage"),
                (Outcome::Status { code: 503, .. }, Kind::Cancel(_)) if within(a, &delivery) => {
                    Ok("503 cancel while delivery down")
                }
                (
                    Outcome::Status {
                        code,
                        problem,
                        detail,
                    },
                    kind,
                ) => Err(format!(
                    "{code} {} ({}) for {kind:?}",
                    problem.as_deref().unwrap_or("-"),
                    detail.as_deref().unwrap_or("-")
                )),
                (_, _) if within(a, &sales_down) => Ok("no answer while sales restarted"),
                (other, kind) => Err(format!("{other:?} for {kind:?}")),
            };
            if let Some(code) = a.outcome.code() {
                *codes.entry(code).or_default() += 1;
            }
            match verdict {
                Ok(class) => *tally.entry(class).or_default() += 1,
                Err(what) => {
                    *tally.entry("unexpected").or_default() += 1;
                    bad.push(format!(
                        "at {:.2}–{:.2}s: {what}",
                        a.start.as_secs_f64(),
                        a.end.as_secs_f64()
                    ));
                }
            }
        }
    }
    Line {
        number: 7,
        name: "no unexpected status (no 500; 503 only in outage)",
        pass: bad.is_empty(),
        counts: format!(
            "attempts {}: {}; statuses {}; requests given up {gave_up}",
            tally.values().sum::<usize>(),
            tally
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            codes
                .iter()
                .map(|(k, n)| format!("{k}×{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        details: examples(&bad),
    }
}

/// 8. Recovery time per fault, from its end to consistency.
async fn recovery(records: &[Request], faults: Vec<Injected>) -> Line {
    let mut details = Vec::new();
    let mut all = true;
    let mut worst = Duration::ZERO;
    let count = faults.len();
    for fault in faults {
        let mut figures: Vec<Recovered> = fault.probe.await.unwrap_or_default();
        if fault.kind == FaultKind::DatabaseCut {
            // Accepting orders again: the first 201 of an attempt started after the end.
            let first = records
                .iter()
                .flat_map(|r| &r.attempts)
                .filter(|a| a.start >= fault.end && a.outcome.code() == Some(201))
                .map(|a| a.end.saturating_sub(fault.end))
                .min();
            figures.insert(
                0,
                Recovered {
                    what: "orders accepted again",
                    after: first,
                },
            );
        }
        let text: Vec<String> = figures
            .iter()
            .map(|r| match r.after {
                Some(d) => {
                    worst = worst.max(d);
                    format!("{} +{:.2}s", r.what, d.as_secs_f64())
                }
                None => {
                    all = false;
                    format!("{} NOT RECOVERED", r.what)
                }
            })
            .collect();
        details.push(format!(
            "{:<24} #{} {:6.1}s–{:6.1}s ({:4.1}s): {}",
            fault.kind.label(),
            fault.ordinal,
            fault.start.as_secs_f64(),
            fault.end.as_secs_f64(),
            (fault.end - fault.start).as_secs_f64(),
            text.join(", ")
        ));
        if !fault.note.starts_with("held") {
            details.push(format!("{:<24}    {}", "", fault.note));
        }
    }
    Line {
        number: 8,
        name: "recovery time per fault (end → consistent)",
        pass: all,
        counts: format!(
            "{count} faults, all recovered: {all}, slowest {:.2}s",
            worst.as_secs_f64()
        ),
        details,
    }
}
