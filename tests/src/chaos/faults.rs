//! Faults of a chaos run: the schedule (drawn from the seed), their injection
//! into the running [`Stack`], and a recovery probe started at each fault's end
//! that measures how long the system takes to return to consistency.
//!
//! The shared PostgreSQL and LocalStack are never stopped: LocalStack is taken
//! away by cutting the proxy that both sales (SNS) and product (SQS) go
//! through, and sales' database by cutting the proxy in front of it. Delivery,
//! product and sales are processes of this run, killed with SIGKILL.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{Size, ledger::Dbs};
use crate::Stack;

/// What is taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// Delivery SIGKILLed, restarted after the hold.
    DeliveryKill,
    /// Product SIGKILLed, restarted after the hold.
    ProductKill,
    /// The proxy to LocalStack cut for the hold (sales' SNS and product's SQS), at least
    /// [`super::BROKER_OUTAGE_RESETS`] broker resets long.
    BrokerCut,
    /// The proxy to sales' PostgreSQL cut for the hold.
    DatabaseCut,
    /// LocalStack cut for the hold so a backlog builds, then back, and sales
    /// SIGKILLed as soon as the relay is draining it; restarted a moment later.
    SalesKillMidRelay,
}

impl FaultKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::DeliveryKill => "delivery SIGKILL",
            Self::ProductKill => "product SIGKILL",
            Self::BrokerCut => "LocalStack cut",
            Self::DatabaseCut => "sales DB cut",
            Self::SalesKillMidRelay => "sales SIGKILL mid-relay",
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone)]
pub struct Planned {
    pub kind: FaultKind,
    /// Healthy time before it.
    pub gap_before: Duration,
    /// How long the dependency is gone (for a mid-relay kill: the backlog phase).
    pub hold: Duration,
    /// 1, 2, … per kind.
    pub ordinal: usize,
}

/// The schedule: every kind `rounds` times (shuffled within each round) plus
/// the extra delivery kills, with durations drawn from the size's ranges.
pub fn plan(size: &Size, seed: u64) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xFA17_5EED);
    let draw = |rng: &mut fastrand::Rng, (lo, hi): (Duration, Duration)| {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(rng.u64(0..=span))
    };
    let mut kinds = Vec::new();
    for _ in 0..size.rounds {
        let mut round = vec![
            FaultKind::DeliveryKill,
            FaultKind::ProductKill,
            FaultKind::BrokerCut,
            FaultKind::DatabaseCut,
            FaultKind::SalesKillMidRelay,
        ];
        rng.shuffle(&mut round);
        kinds.extend(round);
    }
    for _ in 0..size.extra_delivery_kills {
        let at = rng.usize(0..=kinds.len());
        kinds.insert(at, FaultKind::DeliveryKill);
    }
    let mut seen = std::collections::HashMap::new();
    kinds
        .into_iter()
        .map(|kind| {
            let ordinal = seen.entry(kind).or_insert(0);
            *ordinal += 1;
            let mut hold = draw(&mut rng, size.hold);
            if kind == FaultKind::BrokerCut {
                // Long enough for several failed half-open trials of the broker breaker.
                hold = hold.max(super::BROKER_RESET * super::BROKER_OUTAGE_RESETS);
            }
            Planned {
                kind,
                gap_before: draw(&mut rng, size.gap),
                hold,
                ordinal: *ordinal,
            }
        })
        .collect()
}

/// A fault as it happened.
pub struct Injected {
    pub kind: FaultKind,
    /// 1, 2, … per kind.
    pub ordinal: usize,
    /// The outage proper, since the run's `t0` (for a mid-relay kill: from the
    /// kill to sales being ready again).
    pub start: Duration,
    pub end: Duration,
    /// `end` on the wall clock (rows created until then must recover).
    pub end_wall: DateTime<Utc>,
    /// What happened, for the ledger.
    pub note: String,
    /// The recovery measurement started at `end`.
    pub probe: JoinHandle<Vec<Recovered>>,
}

/// How long one recovery condition took from the fault's end.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub what: &'static str,
    /// `None`: not within the bound.
    pub after: Option<Duration>,
}

/// How often sales' broker breaker opened so far (0 when sales cannot be asked).
async fn broker_openings(stack: &Stack) -> u64 {
    stack
        .sales_api()
        .breaker_openings("broker")
        .await
        .unwrap_or(0)
}

/// Injects one fault (returning once it is over) and starts its recovery probe.
pub async fn inject(
    stack: &mut Stack,
    dbs: &Dbs,
    planned: &Planned,
    t0: Instant,
    bound: Duration,
) -> Injected {
    let ordinal = planned.ordinal;
    let mut note = format!("held {:.1}s", planned.hold.as_secs_f64());
    let (start, end) = match planned.kind {
        FaultKind::DeliveryKill => {
            let start = t0.elapsed();
            stack.delivery.kill().await;
            tokio::time::sleep(planned.hold).await;
            stack.delivery.start().await;
            (start, t0.elapsed())
        }
        FaultKind::ProductKill => {
            let start = t0.elapsed();
            stack.product.kill().await;
            tokio::time::sleep(planned.hold).await;
            stack.product.start().await;
            (start, t0.elapsed())
        }
        FaultKind::BrokerCut => {
            let proxy = stack.broker_proxy.as_ref().unwrap();
            let before = broker_openings(stack).await;
            let start = t0.elapsed();
            proxy.set_down(true);
            tokio::time::sleep(planned.hold).await;
            proxy.set_down(false);
            let trials = broker_openings(stack).await.saturating_sub(before);
            note = format!(
                "held {:.1}s, the broker breaker opened {trials} times (failed half-open trials)",
                planned.hold.as_secs_f64()
            );
            (start, t0.elapsed())
        }
        FaultKind::DatabaseCut => {
            let proxy = stack.sales_db_proxy.as_ref().unwrap();
            let start = t0.elapsed();
            proxy.set_down(true);
            tokio::time::sleep(planned.hold).await;
            proxy.set_down(false);
            (start, t0.elapsed())
        }
        FaultKind::SalesKillMidRelay => {
            let proxy = stack.broker_proxy.as_ref().unwrap();
            proxy.set_down(true);
            tokio::time::sleep(planned.hold).await;
            let restored = Utc::now();
            let backlog = pending_before(&dbs.sales, restored).await;
            proxy.set_down(false);
            // Kill as soon as the relay has marked part of the backlog SENT.
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut sent_before_kill = 0;
            while Instant::now() < deadline {
                sent_before_kill = sent_since(&dbs.sales, restored).await;
                if sent_before_kill > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let start = t0.elapsed();
            stack.sales.kill().await;
            let left = pending_before(&dbs.sales, restored).await;
            note = format!(
                "LocalStack cut {:.1}s → backlog {backlog} events; killed after {sent_before_kill} relayed, {left} of the backlog still pending{}",
                planned.hold.as_secs_f64(),
                if left > 0 { "" } else { " (NOT mid-relay)" }
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            stack.sales.start().await;
            (start, t0.elapsed())
        }
    };
    let end_wall = Utc::now();
    let probe = tokio::spawn(probe(
        planned.kind,
        dbs.clone(),
        end_wall,
        Instant::now(),
        bound,
    ));
    Injected {
        kind: planned.kind,
        ordinal,
        start,
        end,
        end_wall,
        note,
        probe,
    }
}

/// PENDING outbox rows written until `at`.
async fn pending_before(sales: &PgPool, at: DateTime<Utc>) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox_events WHERE status = 'PENDING' AND created_at <= $1",
    )
    .bind(at)
    .fetch_one(sales)
    .await
    .unwrap()
}

async fn sent_since(sales: &PgPool, at: DateTime<Utc>) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status = 'SENT' AND sent_at >= $1")
        .bind(at)
        .fetch_one(sales)
        .await
        .unwrap()
}

/// A condition of recovery: a count over rows that existed at the fault's end
/// (`$1`), which must come down to 0.
#[derive(Clone, Copy)]
enum Condition {
    Sales(&'static str, &'static str),
    /// Every ORDER_CREATED written by the fault's end is in product's inbox.
    AppliedAtProduct,
}

impl Condition {
    fn name(self) -> &'static str {
        match self {
            Condition::Sales(name, _) => name,
            Condition::AppliedAtProduct => "ORDER_CREATED applied at product",
        }
    }

    async fn outstanding(self, dbs: &Dbs, end: DateTime<Utc>) -> Result<i64, sqlx::Error> {
        match self {
            Condition::Sales(_, sql) => {
                sqlx::query_scalar(sql)
                    .bind(end)
                    .fetch_one(&dbs.sales)
                    .await
            }
            Condition::AppliedAtProduct => {
                let ids: Vec<Uuid> = sqlx::query_scalar(
                    "SELECT id FROM outbox_events WHERE event_type = 'ORDER_CREATED' AND created_at <= $1",
                )
                .bind(end)
                .fetch_all(&dbs.sales)
                .await?;
                let applied: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM inbox WHERE event_id = ANY($1)")
                        .bind(&ids)
                        .fetch_one(&dbs.product)
                        .await?;
                Ok(ids.len() as i64 - applied)
            }
        }
    }
}

const DELIVERIES_INITIATED: Condition = Condition::Sales(
    "deliveries initiated",
    "SELECT count(*) FROM delivery_retries r JOIN orders o ON o.id = r.order_id
     WHERE r.status = 'PENDING' AND o.created_at <= $1",
);
const FLAGS_CLEARED: Condition = Condition::Sales(
    "fallback flags cleared",
    "SELECT count(*) FROM manual_reviews r JOIN orders o ON o.id = r.order_id
     WHERE r.status = 'OPEN' AND r.reason = 'AVAILABILITY_UNVERIFIED' AND o.created_at <= $1",
);
const BACKLOG_DRAINED: Condition = Condition::Sales(
    "outbox backlog drained",
    "SELECT count(*) FROM outbox_events WHERE status <> 'SENT' AND created_at <= $1",
);
const SAGAS_SETTLED: Condition = Condition::Sales(
    "sagas settled",
    "SELECT count(*) FROM saga_instances
     WHERE status IN ('RUNNING', 'COMPENSATING') AND created_at <= $1",
);

fn conditions(kind: FaultKind) -> Vec<Condition> {
    match kind {
        FaultKind::DeliveryKill => vec![DELIVERIES_INITIATED],
        FaultKind::ProductKill => vec![FLAGS_CLEARED, AppliedAtProduct],
        FaultKind::BrokerCut => vec![BACKLOG_DRAINED, AppliedAtProduct],
        FaultKind::DatabaseCut => vec![BACKLOG_DRAINED, DELIVERIES_INITIATED],
        FaultKind::SalesKillMidRelay => vec![BACKLOG_DRAINED, SAGAS_SETTLED, AppliedAtProduct],
    }
}

use Condition::AppliedAtProduct;

/// Polls the fault's conditions until each has come down to 0 (or `bound` passed).
async fn probe(
    kind: FaultKind,
    dbs: Dbs,
    end: DateTime<Utc>,
    since: Instant,
    bound: Duration,
) -> Vec<Recovered> {
    let conditions = conditions(kind);
    let mut done: Vec<Option<Duration>> = vec![None; conditions.len()];
    while since.elapsed() < bound && done.iter().any(Option::is_none) {
        for (condition, done) in conditions.iter().zip(done.iter_mut()) {
            if done.is_none() && condition.outstanding(&dbs, end).await.is_ok_and(|n| n == 0) {
                *done = Some(since.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conditions
        .iter()
        .zip(done)
        .map(|(c, after)| Recovered {
            what: c.name(),
            after,
        })
        .collect()
}
