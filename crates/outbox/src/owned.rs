//! The writer's fast path: a service process publishes the events it wrote itself.
//!
//! A process whose relay runs is an *owner* ([`owner`]): [`crate::enqueue`] writes its id
//! into each row, and the row's notification (sent at commit, carrying the row) reaches it
//! through the relay's `LISTEN`. The relay publishes such rows straight from their
//! notifications — no claim, no read — and marks what it published SENT later, all rows
//! of a [mark interval](crate::Config::mark_interval) in one statement. So an
//! event costs the database nothing but its insert and a share of one mark.
//!
//! Under load not even the mark costs a transaction: the service's own transactions (sales:
//! the order's) carry the marks of what was published before them ([`ride`]); the relay
//! marks on its own only what waited a whole mark interval for a ride.
//!
//! Nothing is lost on this path, only delayed: a row the owner could not publish (broker
//! down, breaker open, process killed before its mark) stays PENDING, and any instance's
//! claim ([`crate::Relay::run_once`]) takes it once it is older than the
//! [takeover delay](crate::Config::takeover), so the claim path never races
//! a live owner. A row the broker refused goes through the claim path's budget as any
//! other. Delivery stays at least once: consumers dedup on the event id.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::relay::Row;

static OWNER: OnceLock<Uuid> = OnceLock::new();

/// The owner id of this process, once its relay runs the fast path; `None` before (rows
/// written then are claimable at once).
pub fn owner() -> Option<Uuid> {
    OWNER.get().copied()
}

/// Makes this process an owner (idempotent) and returns its id.
pub(crate) fn become_owner() -> Uuid {
    *OWNER.get_or_init(Uuid::now_v7)
}

/// What one notification on the outbox channel says to an owner.
pub(crate) enum Notice {
    /// Rows anyone may claim (no owner, a replay): wake the claim path.
    Wake,
    /// A row this process wrote, carried whole.
    Mine(Box<Row>),
    /// A row this process wrote, too large to carry: read it by id.
    MineById(Uuid),
    /// Another instance's row: it publishes it.
    Other,
}

#[derive(Deserialize)]
struct Body {
    owner: Uuid,
    row: Option<Box<Row>>,
    id: Option<Uuid>,
}

impl Notice {
    pub(crate) fn parse(payload: &str, me: Option<Uuid>) -> Notice {
        if payload.is_empty() {
            return Notice::Wake;
        }
        let body: Body = match serde_json::from_str(payload) {
            Ok(body) => body,
            Err(e) => {
                // Not ours to guess at: the claim path reads the table.
                tracing::warn!(error = %e, "unreadable outbox notification; claiming instead");
                return Notice::Wake;
            }
        };
        if Some(body.owner) != me {
            return Notice::Other;
        }
        match (body.row, body.id) {
            (Some(row), _) => Notice::Mine(row),
            (None, Some(id)) => Notice::MineById(id),
            (None, None) => Notice::Wake,
        }
    }
}

/// Rows this process is publishing or has published and not yet marked SENT. The claim
/// path of this process leaves them alone.
#[derive(Debug, Default)]
pub struct InFlight {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Every row held here, publishing or published.
    held: HashSet<Uuid>,
    /// Published, waiting for their mark.
    published: Vec<Uuid>,
    /// When the oldest of `published` was published.
    oldest: Option<Instant>,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds rows about to be published.
    pub(crate) fn hold(&self, ids: impl IntoIterator<Item = Uuid>) {
        self.lock().held.extend(ids);
    }

    /// Lets rows go (not published: the claim path takes them after the takeover delay).
    pub(crate) fn release(&self, ids: &[Uuid]) {
        let mut state = self.lock();
        for id in ids {
            state.held.remove(id);
        }
    }

    /// Rows published: they wait for the next mark.
    pub(crate) fn published(&self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        let mut state = self.lock();
        state.published.extend_from_slice(ids);
        state.oldest.get_or_insert_with(Instant::now);
    }

    /// Whether a published row has waited `at_least` for its mark.
    pub(crate) fn mark_waited(&self, at_least: Duration) -> bool {
        self.lock()
            .oldest
            .is_some_and(|at| at.elapsed() >= at_least)
    }

    /// Rows published and not yet marked.
    pub fn unmarked(&self) -> usize {
        self.lock().published.len()
    }

    /// Every row held (for the claim path to skip).
    pub fn held(&self) -> Vec<Uuid> {
        self.lock().held.iter().copied().collect()
    }

    /// Takes the published rows for a mark.
    pub(crate) fn take_published(&self) -> Vec<Uuid> {
        let mut state = self.lock();
        state.oldest = None;
        std::mem::take(&mut state.published)
    }

    /// The mark of `ids` committed: they are done.
    pub(crate) fn marked(&self, ids: &[Uuid]) {
        self.release(ids);
    }

    /// The mark of `ids` failed: they wait for the next one.
    pub(crate) fn mark_failed(&self, ids: Vec<Uuid>) {
        if ids.is_empty() {
            return;
        }
        let mut state = self.lock();
        state.published.extend(ids);
        state.oldest.get_or_insert_with(Instant::now);
    }
}

/// Marks carried by a caller's transaction ([`ride`]). Confirmed once that transaction is
/// known to have committed; dropped unconfirmed (it rolled back, or nobody knows), they go
/// back to wait for the next mark (marking twice is harmless).
#[derive(Debug)]
pub struct RidingMarks {
    flight: Arc<InFlight>,
    ids: Vec<Uuid>,
    confirmed: AtomicBool,
}

impl RidingMarks {
    /// The transaction that carried these marks committed.
    pub fn confirm(&self) {
        if !self.confirmed.swap(true, Ordering::AcqRel) {
            self.flight.marked(&self.ids);
        }
    }
}

impl Drop for RidingMarks {
    fn drop(&mut self) {
        if !self.confirmed.load(Ordering::Acquire) {
            self.flight.mark_failed(std::mem::take(&mut self.ids));
        }
    }
}

/// Marks SENT, in `conn`'s transaction, the rows this process published since the last
/// mark: a write the transaction pays almost nothing for, saving one of its own. The
/// caller confirms the returned marks once its transaction committed.
pub async fn ride(
    flight: &Arc<InFlight>,
    conn: &mut PgConnection,
) -> Result<Option<RidingMarks>, sqlx::Error> {
    let ids = flight.take_published();
    if ids.is_empty() {
        return Ok(None);
    }
    let marks = RidingMarks {
        flight: flight.clone(),
        ids,
        confirmed: AtomicBool::new(false),
    };
    sqlx::query!(
        "UPDATE outbox_events SET status = 'SENT', sent_at = now(), last_error = NULL
         WHERE id = ANY($1) AND status = 'PENDING'",
        &marks.ids,
    )
    .execute(conn)
    .await?;
    Ok(Some(marks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_read_by_owner() {
        let me = Uuid::now_v7();
        let other = Uuid::now_v7();
        assert!(matches!(Notice::parse("", Some(me)), Notice::Wake));
        assert!(matches!(Notice::parse("not json", Some(me)), Notice::Wake));
        let id = Uuid::now_v7();
        let by_id = format!(r#"{{"owner":"{me}","id":"{id}"}}"#);
        assert!(matches!(Notice::parse(&by_id, Some(me)), Notice::MineById(i) if i == id));
        let theirs = format!(r#"{{"owner":"{other}","id":"{id}"}}"#);
        assert!(matches!(Notice::parse(&theirs, Some(me)), Notice::Other));
        assert!(matches!(Notice::parse(&theirs, None), Notice::Other));
        let row = format!(
            r#"{{"owner":"{me}","row":{{"id":"{id}","aggregate_type":"order","aggregate_id":"{other}",
            "aggregate_version":2,"event_type":"ORDER_CREATED","schema_version":1,"payload":{{"a":1}},
            "status":"PENDING","retry_count":0,"last_error":null,
            "next_attempt_at":"2026-12-02T03:00:00.123456+00:00","created_at":"2026-12-02T03:00:00.123456+00:00",
            "sent_at":null,"trace":{{"traceparent":"00-x"}},"first_refused_at":null,"owner":"{me}"}}}}"#
        );
        match Notice::parse(&row, Some(me)) {
            Notice::Mine(row) => {
                let envelope = row.envelope();
                assert_eq!(envelope.event_id, id);
                assert_eq!(envelope.aggregate_version, 2);
                assert_eq!(envelope.payload, serde_json::json!({"a": 1}));
                assert_eq!(
                    envelope.trace.get("traceparent").map(String::as_str),
                    Some("00-x")
                );
            }
            _ => panic!("a row of mine"),
        }
    }

    #[test]
    fn held_rows_leave_when_marked_or_released() {
        let flight = InFlight::default();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        flight.hold([a, b, c]);
        flight.published(&[a, b]);
        flight.release(&[c]);
        assert_eq!(flight.unmarked(), 2);
        let taken = flight.take_published();
        assert_eq!(flight.unmarked(), 0);
        flight.mark_failed(taken);
        let taken = flight.take_published();
        flight.marked(&taken);
        assert!(flight.held().is_empty());
    }

    #[test]
    fn riding_marks_go_back_unless_confirmed() {
        let flight = Arc::new(InFlight::default());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        flight.hold([a, b]);
        flight.published(&[a]);
        assert!(!flight.mark_waited(Duration::from_secs(60)));
        assert!(flight.mark_waited(Duration::ZERO));
        let rolled_back = RidingMarks {
            flight: flight.clone(),
            ids: flight.take_published(),
            confirmed: AtomicBool::new(false),
        };
        assert!(!flight.mark_waited(Duration::ZERO), "taken for a ride");
        drop(rolled_back);
        assert_eq!(flight.unmarked(), 1, "back for the next mark");
        flight.published(&[b]);
        let committed = RidingMarks {
            flight: flight.clone(),
            ids: flight.take_published(),
            confirmed: AtomicBool::new(false),
        };
        committed.confirm();
        drop(committed);
        assert_eq!(flight.unmarked(), 0);
        assert!(flight.held().is_empty());
    }
}
