//! The outbox relay: publishes PENDING rows to SNS and marks them SENT.
//!
//! A step claims up to a batch of due rows in creation order
//! (`FOR UPDATE SKIP LOCKED`, so several sales instances never claim the same
//! row), publishes them with `PublishBatch` behind the `broker` breaker, marks the
//! published ones SENT and reschedules the others with backoff (FAILED, a dead
//! letter, after `max_attempts`), all in the claim's transaction. A crash after
//! publishing and before the commit publishes the batch again: delivery is at
//! least once and consumers dedup on `event_id`.
//!
//! The relay is woken by `LISTEN outbox_events` (a trigger notifies on commit) and
//! polls as a safety net. While the breaker is open, rows wait: no retry storm.

use std::{collections::BTreeMap, convert::Infallible, time::Duration};

use chrono::{DateTime, Utc};
use messaging::{Envelope, Publisher};
use resilience::{CallError, CircuitBreaker, Outcome};
use sqlx::{PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::OutboxConfig;

/// Channel the outbox trigger notifies.
pub const CHANNEL: &str = "outbox_events";

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    aggregate_type: String,
    aggregate_id: Uuid,
    aggregate_version: i32,
    event_type: String,
    schema_version: i32,
    payload: serde_json::Value,
    retry_count: i32,
    created_at: DateTime<Utc>,
    /// Trace context of the writer; the publisher continues it.
    trace: sqlx::types::Json<BTreeMap<String, String>>,
}

impl Row {
    fn envelope(&self) -> Envelope {
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

/// One result per published event, in order.
type Published = Vec<(Uuid, Result<(), messaging::PublishError>)>;

/// Counts of one relay step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayReport {
    pub claimed: usize,
    pub sent: usize,
    /// Rescheduled for another attempt.
    pub retried: usize,
    /// Marked FAILED (dead letters).
    pub dead: usize,
    /// The broker breaker refused the step; nothing changed.
    pub breaker_open: bool,
}

/// The relay of one sales instance.
#[derive(Clone)]
pub struct Relay {
    pub pool: PgPool,
    pub publisher: Publisher,
    pub breaker: CircuitBreaker,
    pub config: OutboxConfig,
    /// Fault injection for tests: a pause between publishing and marking SENT,
    /// `SALES_OUTBOX_FAULT_PAUSE_BEFORE_MARK_MS` (default 0 = none).
    pub pause_before_mark: Duration,
}

impl Relay {
    /// One step: claim, publish, mark; returns what happened.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<RelayReport, sqlx::Error> {
        let mut report = RelayReport::default();
        if self.breaker.remaining_open().is_some() {
            report.breaker_open = true;
            return Ok(report);
        }
        // Dropping `tx` without commit (any early return) releases the claim.
        let mut tx = self.pool.begin().await?;
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, aggregate_type, aggregate_id, aggregate_version, event_type, schema_version,
                    payload, retry_count, created_at, trace
             FROM outbox_events WHERE status = 'PENDING' AND next_attempt_at <= $1
             ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .bind(self.config.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        report.claimed = rows.len();
        if rows.is_empty() {
            return Ok(report);
        }
        let envelopes: Vec<Envelope> = rows.iter().map(Row::envelope).collect();
        let all_failed = |r: &Result<Published, Infallible>| match r {
            Ok(results) if results.iter().all(|(_, r)| r.is_err()) => Outcome::Failure,
            _ => Outcome::Success,
        };
        let published = self
            .breaker
            .call(all_failed, || async {
                Ok(self.publisher.publish(&envelopes).await)
            })
            .await;
        let results: Vec<(Uuid, Result<(), String>)> = match published {
            Ok(results) => results
                .into_iter()
                .map(|(id, r)| (id, r.map_err(|e| e.to_string())))
                .collect(),
            Err(CallError::Rejected(_)) => {
                report.breaker_open = true;
                return Ok(report);
            }
            Err(CallError::Timeout(after)) => rows
                .iter()
                .map(|r| {
                    (
                        r.id,
                        Err(format!("publish timed out after {} ms", after.as_millis())),
                    )
                })
                .collect(),
            Err(CallError::Inner(never)) => match never {},
        };
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
        sqlx::query("UPDATE outbox_events SET status = 'SENT', sent_at = $2, last_error = NULL WHERE id = ANY($1)")
            .bind(&sent)
            .bind(Utc::now())
            .execute(&mut *tx)
            .await?;
        report.sent = sent.len();

        let (mut ids, mut counts, mut statuses, mut next, mut errors) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (id, result) in &results {
            let Err(error) = result else { continue };
            let Some(row) = rows.iter().find(|r| r.id == *id) else {
                continue;
            };
            let attempts = row.retry_count + 1;
            let dead = attempts >= self.config.max_attempts;
            let delay = resilience::backoff::exponential(
                attempts as u32,
                self.config.retry_base,
                self.config.retry_max,
            );
            ids.push(*id);
            counts.push(attempts);
            statuses.push(if dead { "FAILED" } else { "PENDING" });
            next.push(now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX));
            errors.push(error.clone());
            if dead {
                report.dead += 1;
                tracing::error!(event_id = %id, event_type = %row.event_type, attempts, error = %error,
                    "Event publishing failed for good; kept as a dead letter for replay");
            } else {
                report.retried += 1;
                tracing::warn!(event_id = %id, event_type = %row.event_type, attempts, error = %error,
                    "Event publishing failed, storing in outbox for retry");
            }
        }
        if !ids.is_empty() {
            sqlx::query(
                "UPDATE outbox_events o SET retry_count = f.attempts, status = f.status,
                        next_attempt_at = f.next_attempt_at, last_error = f.error
                 FROM unnest($1::uuid[], $2::int[], $3::text[], $4::timestamptz[], $5::text[])
                      AS f(id, attempts, status, next_attempt_at, error)
                 WHERE o.id = f.id",
            )
            .bind(&ids)
            .bind(&counts)
            .bind(&statuses)
            .bind(&next)
            .bind(&errors)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(report)
    }

    /// Drains what is due: steps until a step claims less than a full batch.
    pub async fn drain(&self) -> Result<RelayReport, sqlx::Error> {
        let mut total = RelayReport::default();
        loop {
            let r = self.run_once(Utc::now()).await?;
            total.claimed += r.claimed;
            total.sent += r.sent;
            total.retried += r.retried;
            total.dead += r.dead;
            total.breaker_open |= r.breaker_open;
            if (r.claimed as i64) < self.config.batch_size || r.breaker_open || r.sent == 0 {
                return Ok(total);
            }
        }
    }

    /// Relays until `token` is cancelled: woken by NOTIFY, polling as a safety net.
    pub async fn run(self, token: CancellationToken) {
        let mut listener = None;
        loop {
            if listener.is_none() {
                listener = match PgListener::connect_with(&self.pool).await {
                    Ok(mut l) => match l.listen(CHANNEL).await {
                        Ok(()) => Some(l),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot LISTEN for outbox events; polling");
                            None
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot connect the outbox listener; polling");
                        None
                    }
                };
            }
            if let Err(e) = self.drain().await {
                tracing::warn!(error = %e, "outbox relay step failed");
            }
            let wake = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(|_| ()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = token.cancelled() => break,
                woke = wake => if let Err(e) = woke {
                    tracing::warn!(error = %e, "outbox listener lost; reconnecting");
                    listener = None;
                    tokio::time::sleep(self.config.poll_interval).await;
                },
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        tracing::info!("outbox relay stopped");
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

/// PENDING count, FAILED count and the age of the oldest PENDING row.
pub async fn backlog(
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<(i64, i64, Option<f64>), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'PENDING'),
                count(*) FILTER (WHERE status = 'FAILED'),
                EXTRACT(EPOCH FROM ($1 - min(created_at) FILTER (WHERE status = 'PENDING')))::float8
         FROM outbox_events WHERE status IN ('PENDING', 'FAILED')",
    )
    .bind(now)
    .fetch_one(pool)
    .await
}
