//! The outbox relay: publishes PENDING rows to SNS and marks them SENT.
//!
//! A step takes a permit of the `broker` breaker, claims up to a batch of due rows in
//! creation order (`FOR UPDATE SKIP LOCKED`, so several instances of a service never claim the
//! same row; while the breaker is half-open, its one trial claims only one `PublishBatch`
//! worth), publishes them with `PublishBatch`, marks the published ones SENT and
//! reschedules the others, all in the claim's transaction. A crash after publishing and
//! before the commit publishes the batch again: delivery is at least once and consumers
//! dedup on `event_id`.
//!
//! **No outage makes a dead letter.** What failed is read per entry
//! ([`messaging::FailureKind`]):
//! - the broker could not be asked or did not answer (connection refused, timeout, 5xx,
//!   throttling, a credential or topic problem): the row is rescheduled as it was, its
//!   `retry_count` untouched, and the breaker counts a failure. However long the outage,
//!   and however many half-open trials fail, no row is charged for it;
//! - the broker refused the entry itself (a per-entry failure that is the sender's fault,
//!   content it refuses): `retry_count` grows and the row is retried with backoff
//!   (`retry_base` doubling to `retry_max`). It becomes FAILED (a dead letter: alerted,
//!   replayable by staff) once it has been refused `max_attempts` times **and** its first
//!   refusal is at least `dead_letter_min_age` old, so a short burst of refusals never
//!   dead-letters an event the broker takes a minute later.
//!
//! The relay is woken by `LISTEN outbox_events` (a trigger notifies on commit) and polls as
//! a safety net. While the breaker is open, rows wait: no retry storm.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use messaging::{Envelope, PublishError, Publisher};
use resilience::{CircuitBreaker, Outcome};
use sqlx::{PgPool, postgres::PgListener};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    CHANNEL, Config,
    owned::{self, InFlight, Notice},
};

/// One outbox row as the relay publishes it (read by a claim, or carried by its
/// notification to its owner).
#[derive(serde::Deserialize)]
pub(crate) struct Row {
    id: Uuid,
    aggregate_type: String,
    aggregate_id: Uuid,
    aggregate_version: i32,
    event_type: String,
    schema_version: i32,
    payload: serde_json::Value,
    retry_count: i32,
    first_refused_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    /// Trace context of the writer; the publisher continues it.
    trace: sqlx::types::Json<BTreeMap<String, String>>,
}

impl Row {
    pub(crate) fn envelope(&self) -> Envelope {
        Envelope {
            event_id: self.id,
            event_type: self.event_type.clone(),
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id,
            aggregate_version: self.aggregate_version,
            occurred_at: self.created_at,
            schema_version: self.schema_version,
            payload: self.payload.clone(),
            trace: self.trace.0.clone(),
        }
    }
}

/// Counts of one relay step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayReport {
    pub claimed: usize,
    pub sent: usize,
    /// Rescheduled for another attempt.
    pub retried: usize,
    /// Of `retried`: refused by the broker (charged against their dead-letter budget).
    pub refused: usize,
    /// Marked FAILED (dead letters).
    pub dead: usize,
    /// The broker breaker refused the step; nothing changed.
    pub breaker_open: bool,
    /// The step was the breaker's half-open trial (a small batch).
    pub trial: bool,
}

/// The relay of one service instance.
#[derive(Clone)]
pub struct Relay {
    pub pool: PgPool,
    pub publisher: Publisher,
    pub breaker: CircuitBreaker,
    pub config: Config,
    /// Fault injection for tests: a pause between publishing and marking SENT,
    /// `{PREFIX}OUTBOX_FAULT_PAUSE_BEFORE_MARK_MS` (default 0 = none).
    pub pause_before_mark: Duration,
    /// Rows this instance's fast path holds ([`owned`]); its claims skip them.
    pub flight: Arc<InFlight>,
}

impl Relay {
    /// The relay `config` asks for: `None` when the broker is off (events wait in the
    /// outbox), else a relay publishing to the configured topic (created first when
    /// provisioning), behind `breaker`.
    pub async fn from_config(
        config: &Config,
        pool: &PgPool,
        breaker: CircuitBreaker,
    ) -> anyhow::Result<Option<Self>> {
        if !config.enabled {
            return Ok(None);
        }
        let sdk = messaging::aws::sdk_config().await;
        let topic_arn = match &config.topic_arn {
            Some(arn) => arn.clone(),
            None => {
                let topology = messaging::Topology {
                    topic_name: config.topic_name.clone(),
                    queues: Vec::new(),
                };
                messaging::provision(&sdk, &topology)
                    .await
                    .context("provisioning the SNS topic")?
                    .topic_arn
            }
        };
        tracing::info!(%topic_arn, "relaying the outbox to SNS");
        Ok(Some(Self {
            pool: pool.clone(),
            publisher: Publisher::new(&sdk, topic_arn, config.max_in_flight),
            breaker,
            config: config.clone(),
            pause_before_mark: config.fault_pause_before_mark,
            flight: Default::default(),
        }))
    }

    /// One step: claim, publish, mark; returns what happened.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<RelayReport, sqlx::Error> {
        let mut report = RelayReport::default();
        let Ok(permit) = self.breaker.try_acquire() else {
            report.breaker_open = true;
            return Ok(report);
        };
        report.trial = permit.is_trial();
        // The trial of a half-open breaker risks one PublishBatch, not a whole batch.
        let limit = if report.trial {
            TRIAL_BATCH
        } else {
            self.config.batch_size
        };
        // Dropping `tx` without commit (any early return) releases the claim; dropping the
        // permit records nothing (and frees a trial slot).
        let mut tx = self.pool.begin().await?;
        // An owner's fresh row (never tried: `next_attempt_at = created_at`) is its owner's
        // to publish until the takeover delay has passed.
        let taken_over = resilience::deadline::before(now, self.config.takeover);
        let rows = sqlx::query_as!(
            Row,
            r#"SELECT id, aggregate_type, aggregate_id, aggregate_version, event_type, schema_version,
                    payload, retry_count, first_refused_at, created_at,
                    trace AS "trace: sqlx::types::Json<BTreeMap<String, String>>"
             FROM outbox_events WHERE status = 'PENDING' AND next_attempt_at <= $1
               AND (owner IS NULL OR next_attempt_at > created_at OR created_at <= $3)
               AND NOT (id = ANY($4))
             ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED"#,
            now,
            limit,
            taken_over,
            &self.flight.held(),
        )
        .fetch_all(&mut *tx)
        .await?;
        report.claimed = rows.len();
        if rows.is_empty() {
            return Ok(report);
        }
        let envelopes: Vec<Envelope> = rows.iter().map(Row::envelope).collect();
        let timeout = self.breaker.config().call_timeout;
        let results = match tokio::time::timeout(timeout, self.publisher.publish(&envelopes)).await
        {
            Ok(results) => results,
            Err(_) => rows
                .iter()
                .map(|r| {
                    let error = format!("publish timed out after {} ms", timeout.as_millis());
                    (r.id, Err(PublishError::unavailable(error)))
                })
                .collect(),
        };
        let outcome = broker_outcome(&results);
        let broker_failed = matches!(outcome, Outcome::Failure);
        permit.record(outcome);
        let published_at = Utc::now();
        if !self.pause_before_mark.is_zero() {
            tokio::time::sleep(self.pause_before_mark).await;
        }

        let sent: Vec<Uuid> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(id, _)| *id)
            .collect();
        record_published(&rows, &sent, published_at);
        sqlx::query!(
            "UPDATE outbox_events SET status = 'SENT', sent_at = $2, last_error = NULL WHERE id = ANY($1)",
            &sent,
            Utc::now(),
        )
        .execute(&mut *tx)
        .await?;
        report.sent = sent.len();

        let mut updates = Updates::default();
        for (id, result) in &results {
            let Err(error) = result else { continue };
            let Some(row) = rows.iter().find(|r| r.id == *id) else {
                continue;
            };
            let fate = self.fate(row, error, now);
            match fate.status {
                "FAILED" => {
                    report.dead += 1;
                    tracing::error!(event_id = %id, event_type = %row.event_type, refusals = fate.refusals, error = %error,
                        "Event publishing failed for good; kept as a dead letter for replay");
                }
                _ if error.is_refused() => {
                    report.retried += 1;
                    report.refused += 1;
                    tracing::warn!(event_id = %id, event_type = %row.event_type, refusals = fate.refusals, error = %error,
                        "Event refused by the broker, storing in outbox for retry");
                }
                _ => {
                    report.retried += 1;
                    tracing::debug!(event_id = %id, event_type = %row.event_type, error = %error,
                        "broker unavailable; event waits in the outbox");
                }
            }
            updates.push(*id, fate, error);
        }
        if !report.trial && broker_failed && report.retried > 0 {
            tracing::warn!(events = report.retried, error = ?results.first().and_then(|(_, r)| r.as_ref().err()),
                "Event publishing failed, storing in outbox for retry");
        }
        updates.apply(&mut tx).await?;
        tx.commit().await?;
        Ok(report)
    }

    /// What becomes of a row whose publish failed with `error`.
    fn fate(&self, row: &Row, error: &PublishError, now: DateTime<Utc>) -> Fate {
        if !error.is_refused() {
            // Not the event's fault: wait for the broker, charge nothing. An open breaker
            // keeps the relay away until its trial anyway.
            let wait = self
                .breaker
                .remaining_open()
                .unwrap_or_default()
                .max(self.config.retry_base);
            return Fate {
                status: "PENDING",
                refusals: row.retry_count,
                first_refused_at: row.first_refused_at,
                next_attempt_at: resilience::deadline::after(now, wait),
            };
        }
        let refusals = row.retry_count + 1;
        let first_refused_at = row.first_refused_at.unwrap_or(now);
        let old_enough =
            resilience::deadline::elapsed(first_refused_at, now, self.config.dead_letter_min_age);
        let dead = refusals >= self.config.max_attempts && old_enough;
        let delay = resilience::backoff::exponential(
            refusals as u32,
            self.config.retry_base,
            self.config.retry_max,
        );
        Fate {
            status: if dead { "FAILED" } else { "PENDING" },
            refusals,
            first_refused_at: Some(first_refused_at),
            next_attempt_at: resilience::deadline::after(now, delay),
        }
    }

    /// Drains what is due: steps until a step claims less than a full batch.
    pub async fn drain(&self) -> Result<RelayReport, sqlx::Error> {
        self.drain_at(Utc::now()).await
    }

    /// [`Relay::drain`] with the clock at `now`.
    pub async fn drain_at(&self, now: DateTime<Utc>) -> Result<RelayReport, sqlx::Error> {
        let mut total = RelayReport::default();
        loop {
            let r = self.run_once(now).await?;
            total.claimed += r.claimed;
            total.sent += r.sent;
            total.retried += r.retried;
            total.refused += r.refused;
            total.dead += r.dead;
            total.breaker_open |= r.breaker_open;
            total.trial |= r.trial;
            // A trial that got through closed the breaker: go on with full batches.
            let more = (r.claimed as i64) >= self.config.batch_size || (r.trial && r.sent > 0);
            if !more || r.breaker_open || r.sent == 0 {
                return Ok(total);
            }
        }
    }

    /// Relays until `token` is cancelled. The claim path runs every poll interval and when
    /// an ownerless row is notified; this instance's own rows are published from their
    /// notifications ([`owned`]) and marked SENT every mark interval.
    pub async fn run(self, token: CancellationToken) {
        let me = (!self.config.takeover.is_zero()).then(owned::become_owner);
        let mut listener: Option<PgListener> = None;
        let mut publishing = JoinSet::new();
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut marks = tokio::time::interval(self.config.mark_interval);
        marks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut claim = true;
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            if claim {
                claim = false;
                if let Err(e) = self.drain().await {
                    tracing::warn!(error = %e, "outbox relay step failed");
                }
            }
            while publishing.try_join_next().is_some() {}
            if self.flight.unmarked() >= MARK_BATCH {
                self.mark().await;
            }
            let wake = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = token.cancelled() => break,
                _ = poll.tick() => claim = true,
                // What the order path's own transactions did not carry within an interval.
                _ = marks.tick() => if self.flight.mark_waited(self.config.mark_interval) {
                    self.mark().await;
                },
                woke = wake => match woke {
                    Ok(first) => {
                        let mut gathered = Gathered::default();
                        gathered.add(Notice::parse(first.payload(), me));
                        if let Some(l) = listener.as_mut() {
                            gathered.gather(l, me, self.config.coalesce).await;
                        }
                        // Ownerless rows notified: the window above gathered the burst they
                        // came in, so one claim takes them all (no second wait: the window is
                        // the only lag coalescing adds).
                        claim |= gathered.wake;
                        if !gathered.by_id.is_empty() {
                            match self.read(&gathered.by_id).await {
                                Ok(rows) => gathered.rows.extend(rows),
                                // Left to the claim path after the takeover delay.
                                Err(e) => tracing::warn!(error = %e, "cannot read notified outbox rows"),
                            }
                        }
                        if !gathered.rows.is_empty() {
                            self.flight.hold(gathered.rows.iter().map(|r| r.id));
                            publishing.spawn(self.clone().publish_owned(gathered.rows));
                        }
                    }
                    Err(e) => {
                        // Notifications may have been missed: the claim path takes their
                        // rows once the takeover delay has passed.
                        tracing::warn!(error = %e, "outbox listener lost; reconnecting");
                        listener = None;
                        tokio::time::sleep(self.config.poll_interval).await;
                        claim = true;
                    }
                },
            }
        }
        // What was published is marked before stopping (else it is published again).
        while publishing.join_next().await.is_some() {}
        self.mark().await;
        tracing::info!("outbox relay stopped");
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect the outbox listener; polling");
                return None;
            }
        };
        match listener.listen(CHANNEL).await {
            Ok(()) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for outbox events; polling");
                None
            }
        }
    }

    /// Rows too large for their notification, read by id (still PENDING).
    async fn read(&self, ids: &[Uuid]) -> Result<Vec<Row>, sqlx::Error> {
        sqlx::query_as!(
            Row,
            r#"SELECT id, aggregate_type, aggregate_id, aggregate_version, event_type, schema_version,
                    payload, retry_count, first_refused_at, created_at,
                    trace AS "trace: sqlx::types::Json<BTreeMap<String, String>>"
             FROM outbox_events WHERE id = ANY($1) AND status = 'PENDING' ORDER BY created_at, id"#,
            ids,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Publishes rows of this instance from their notifications. Published rows wait for
    /// the next mark; a row the broker refused is charged as on the claim path; the others
    /// are let go for the claim path (nothing is written for them).
    async fn publish_owned(self, rows: Vec<Row>) {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let Ok(permit) = self.breaker.try_acquire() else {
            self.hand_back(&ids, "broker breaker open").await;
            return;
        };
        let envelopes: Vec<Envelope> = rows.iter().map(Row::envelope).collect();
        let timeout = self.breaker.config().call_timeout;
        let results = match tokio::time::timeout(timeout, self.publisher.publish(&envelopes)).await
        {
            Ok(results) => results,
            Err(_) => {
                permit.record(Outcome::Failure);
                let error = format!("publish timed out after {} ms", timeout.as_millis());
                self.hand_back(&ids, &error).await;
                return;
            }
        };
        let outcome = broker_outcome(&results);
        let broker_failed = matches!(outcome, Outcome::Failure);
        permit.record(outcome);
        let published_at = Utc::now();
        let sent: Vec<Uuid> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(id, _)| *id)
            .collect();
        record_published(&rows, &sent, published_at);
        if !self.pause_before_mark.is_zero() {
            tokio::time::sleep(self.pause_before_mark).await;
        }
        self.flight.published(&sent);
        let unsent: Vec<Uuid> = results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(id, _)| *id)
            .collect();
        if unsent.is_empty() {
            return;
        }
        let now = Utc::now();
        let mut updates = Updates::default();
        // As on the claim path: a refusal is charged, an unavailable broker is not; either
        // way the row is rescheduled, so the claim path takes it when it is due.
        for (id, result) in &results {
            let Err(error) = result else { continue };
            let Some(row) = rows.iter().find(|r| r.id == *id) else {
                continue;
            };
            let fate = self.fate(row, error, now);
            if error.is_refused() {
                tracing::warn!(event_id = %id, event_type = %row.event_type, refusals = fate.refusals, error = %error,
                    "Event refused by the broker, storing in outbox for retry");
            }
            updates.push(*id, fate, error);
        }
        if !updates.ids.is_empty() {
            let applied = async {
                let mut conn = self.pool.acquire().await?;
                updates.apply(&mut conn).await
            };
            if let Err(e) = applied.await {
                tracing::warn!(error = %e, "cannot reschedule unpublished events; the claim path takes them after the takeover delay");
            }
        }
        if broker_failed {
            tracing::warn!(
                events = unsent.len(),
                "Event publishing failed, storing in outbox for retry"
            );
        }
        self.flight.release(&unsent);
    }

    /// Gives rows the fast path could not publish (the broker unavailable: nothing charged)
    /// to the claim path, due once the breaker lets a call through.
    async fn hand_back(&self, ids: &[Uuid], error: &str) {
        let wait = self
            .breaker
            .remaining_open()
            .unwrap_or_default()
            .max(self.config.retry_base);
        let due = resilience::deadline::after(Utc::now(), wait);
        let handed = sqlx::query!(
            "UPDATE outbox_events SET next_attempt_at = $2, last_error = $3
             WHERE id = ANY($1) AND status = 'PENDING'",
            ids,
            due,
            error,
        )
        .execute(&self.pool)
        .await;
        if let Err(e) = handed {
            tracing::warn!(error = %e, "cannot hand events back; the claim path takes them after the takeover delay");
        }
        tracing::debug!(
            events = ids.len(),
            error,
            "the broker is unavailable; events wait in the outbox"
        );
        self.flight.release(ids);
    }

    /// Marks what this instance published SENT, in one statement.
    pub async fn mark(&self) {
        let ids = self.flight.take_published();
        if ids.is_empty() {
            return;
        }
        let marked = sqlx::query!(
            "UPDATE outbox_events SET status = 'SENT', sent_at = now(), last_error = NULL
             WHERE id = ANY($1) AND status = 'PENDING'",
            &ids,
        )
        .execute(&self.pool)
        .await;
        match marked {
            Ok(_) => self.flight.marked(&ids),
            Err(e) => {
                tracing::warn!(error = %e, events = ids.len(), "cannot mark published events; retrying");
                self.flight.mark_failed(ids);
            }
        }
    }
}

/// Published rows that make a mark due before its interval.
const MARK_BATCH: usize = 1_000;

/// What a burst of notifications asked for.
#[derive(Default)]
struct Gathered {
    wake: bool,
    rows: Vec<Row>,
    by_id: Vec<Uuid>,
}

impl Gathered {
    fn add(&mut self, notice: Notice) {
        match notice {
            Notice::Wake => self.wake = true,
            Notice::Mine(row) => self.rows.push(*row),
            Notice::MineById(id) => self.by_id.push(id),
            Notice::Other => {}
        }
    }

    fn full(&self) -> bool {
        self.rows.len() + self.by_id.len() >= messaging::publish::MAX_BATCH_ENTRIES
    }

    /// Adds the notifications that arrive within `window`, up to one `PublishBatch`.
    async fn gather(&mut self, listener: &mut PgListener, me: Option<Uuid>, window: Duration) {
        let until = tokio::time::Instant::now() + window;
        while !self.full() {
            match tokio::time::timeout_at(until, listener.recv()).await {
                Ok(Ok(n)) => self.add(Notice::parse(n.payload(), me)),
                // The caller's next receive sees a lost connection again.
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }
}

/// Rows one half-open trial publishes: one `PublishBatch` call.
pub const TRIAL_BATCH: i64 = messaging::publish::MAX_BATCH_ENTRIES as i64;

/// The new state of a row whose publish failed.
struct Fate {
    status: &'static str,
    refusals: i32,
    first_refused_at: Option<DateTime<Utc>>,
    next_attempt_at: DateTime<Utc>,
}

/// The failed rows of a step, written with one statement.
#[derive(Default)]
struct Updates {
    ids: Vec<Uuid>,
    refusals: Vec<i32>,
    statuses: Vec<&'static str>,
    first_refused: Vec<Option<DateTime<Utc>>>,
    next: Vec<DateTime<Utc>>,
    errors: Vec<String>,
}

impl Updates {
    fn push(&mut self, id: Uuid, fate: Fate, error: &PublishError) {
        self.ids.push(id);
        self.refusals.push(fate.refusals);
        self.statuses.push(fate.status);
        self.first_refused.push(fate.first_refused_at);
        self.next.push(fate.next_attempt_at);
        self.errors.push(error.to_string());
    }

    /// Only PENDING rows change: the fast path holds no lock on its rows, so a row staff
    /// or another instance settled meanwhile keeps what they made of it.
    async fn apply(&self, conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query!(
            "UPDATE outbox_events o SET retry_count = f.refusals, status = f.status,
                    first_refused_at = f.first_refused_at, next_attempt_at = f.next_attempt_at,
                    last_error = f.error
             FROM unnest($1::uuid[], $2::int[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::text[])
                  AS f(id, refusals, status, first_refused_at, next_attempt_at, error)
             WHERE o.id = f.id AND o.status = 'PENDING'",
            &self.ids,
            &self.refusals,
            &self.statuses as &[&str],
            &self.first_refused as &[Option<DateTime<Utc>>],
            &self.next,
            &self.errors,
        )
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// `outbox_events_published_total` and `outbox_relay_lag_seconds` (commit to publish, i.e.
/// `published_at - created_at`) of the rows in `sent`.
fn record_published(rows: &[Row], sent: &[Uuid], published_at: DateTime<Utc>) {
    if sent.is_empty() {
        return;
    }
    metrics::counter!("outbox_events_published_total").increment(sent.len() as u64);
    let lag = metrics::histogram!("outbox_relay_lag_seconds");
    let created: std::collections::HashMap<Uuid, DateTime<Utc>> =
        rows.iter().map(|r| (r.id, r.created_at)).collect();
    for at in sent.iter().filter_map(|id| created.get(id)) {
        let seconds = (published_at - *at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
        lag.record(seconds.max(0.0));
    }
}

/// The outbox's backlog at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    pub pending: i64,
    /// Dead letters.
    pub failed: i64,
    /// Age of the oldest PENDING row, in seconds.
    pub oldest_pending_age_seconds: Option<f64>,
    /// Age of the oldest dead letter (since it was written), in seconds.
    pub oldest_failed_age_seconds: Option<f64>,
}

/// PENDING and FAILED counts and the age of the oldest row of each.
pub async fn backlog(pool: &PgPool, now: DateTime<Utc>) -> Result<Backlog, sqlx::Error> {
    sqlx::query_as!(
        Backlog,
        r#"SELECT count(*) FILTER (WHERE status = 'PENDING') AS "pending!",
                count(*) FILTER (WHERE status = 'FAILED') AS "failed!",
                EXTRACT(EPOCH FROM ($1 - min(created_at) FILTER (WHERE status = 'PENDING')))::float8
                    AS oldest_pending_age_seconds,
                EXTRACT(EPOCH FROM ($1 - min(created_at) FILTER (WHERE status = 'FAILED')))::float8
                    AS oldest_failed_age_seconds
         FROM outbox_events WHERE status IN ('PENDING', 'FAILED')"#,
        now,
    )
    .fetch_one(pool)
    .await
}

/// What a publish says of the broker: it failed when it took nothing and refused nothing
/// (every entry unavailable); a refused entry means the broker answered.
fn broker_outcome(results: &[(Uuid, Result<(), PublishError>)]) -> Outcome {
    if results
        .iter()
        .all(|(_, r)| r.as_ref().is_err_and(|e| !e.is_refused()))
    {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}
