//! The reliability alert checker: every `SALES_ALERTS_INTERVAL_MS` it takes the
//! reliability snapshot ([`crate::reliability::snapshot`]) and evaluates
//! - `CIRCUIT_BREAKER_OPEN`: a breaker is open (or half-open, still unproven); names them;
//! - `OUTBOX_BACKLOG`: more outbox rows pending than the threshold (default 100);
//! - `MANUAL_REVIEW_BACKLOG`: more open manual reviews than the threshold (default 50);
//! - `OUTBOX_STALLED`: the oldest pending outbox row is older than the threshold
//!   (default 300 s), however few rows are pending;
//! - `OUTBOX_DEAD_LETTERS`: any dead letter exists (an event the broker refused for
//!   good waits for staff to replay or discard it); with the count and the oldest's age.
//!
//! Each alert is reported once per episode: an `error` log with `alert` and
//! `state = "raised"` when it starts, a `warn` log with `state = "resolved"` when it
//! ends, nothing while it lasts. The gauge `reliability_alert_active{alert}` is 1
//! during an episode; `/health/reliability` lists the open episodes as
//! `activeAlerts`. With `SALES_ALERTS_WEBHOOK_URL` set, every raise and resolve is
//! also POSTed there as JSON, best-effort (bounded by a short timeout; a failure is
//! logged and not retried).
//!
//! The decision is [`evaluate`], a pure function of the open episodes, the snapshot,
//! the thresholds and `now`. A figure that could not be read (the database is
//! unavailable) leaves its alert as it was: an unknown is neither a raise nor a
//! resolve (the open `database` breaker raises `CIRCUIT_BREAKER_OPEN` instead).
//! Episodes are per instance: N sales instances report N times.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use resilience::BreakerState;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    config::AlertsConfig,
    reliability::{ActiveAlert, ActiveSet, Alert, ReliabilityMetrics, Sources},
};

/// The thresholds, from [`AlertsConfig`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// `OUTBOX_BACKLOG` while pending > this.
    pub outbox_backlog: i64,
    /// `MANUAL_REVIEW_BACKLOG` while open reviews > this.
    pub review_backlog: i64,
    /// `OUTBOX_STALLED` while the oldest pending row is older than this.
    pub outbox_stalled: Duration,
}

impl From<&AlertsConfig> for Thresholds {
    fn from(config: &AlertsConfig) -> Self {
        Thresholds {
            outbox_backlog: config.outbox_backlog,
            review_backlog: config.review_backlog,
            outbox_stalled: config.outbox_stalled,
        }
    }
}

/// Whether an episode started or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Raised,
    Resolved,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Raised => "raised",
            Change::Resolved => "resolved",
        }
    }
}

/// One raise or resolve: what is logged and POSTed to the webhook.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    pub alert: Alert,
    pub state: Change,
    pub value: f64,
    pub threshold: f64,
    pub details: Value,
    pub at: DateTime<Utc>,
    /// A sentence for people.
    pub message: String,
}

/// What one alert's figure is now.
struct Reading {
    firing: bool,
    value: f64,
    threshold: f64,
    details: Value,
    message: String,
}

/// Reads `alert`'s figure from the snapshot; `None` when it is unknown.
fn read(alert: Alert, figures: &ReliabilityMetrics, thresholds: &Thresholds) -> Option<Reading> {
    match alert {
        Alert::CircuitBreakerOpen => {
            let open: Vec<&str> = figures
                .breakers
                .iter()
                .filter(|b| b.state != BreakerState::Closed)
                .map(|b| b.name.as_str())
                .collect();
            let states: BTreeMap<&str, &str> = figures
                .breakers
                .iter()
                .filter(|b| b.state != BreakerState::Closed)
                .map(|b| (b.name.as_str(), b.state.as_str()))
                .collect();
            Some(Reading {
                firing: !open.is_empty(),
                value: open.len() as f64,
                threshold: 0.0,
                details: json!({ "breakers": open, "states": states }),
                message: if open.is_empty() {
                    "every circuit breaker is closed".to_owned()
                } else {
                    format!("circuit breaker open: {}", open.join(", "))
                },
            })
        }
        Alert::OutboxBacklog => figures.outbox_events_pending.map(|pending| Reading {
            firing: pending > thresholds.outbox_backlog,
            value: pending as f64,
            threshold: thresholds.outbox_backlog as f64,
            details: json!({ "pending": pending, "failed": figures.failed_event_count }),
            message: format!(
                "{pending} outbox events pending (threshold {})",
                thresholds.outbox_backlog
            ),
        }),
        Alert::ManualReviewBacklog => figures.manual_review_queue_length.map(|open| Reading {
            firing: open > thresholds.review_backlog,
            value: open as f64,
            threshold: thresholds.review_backlog as f64,
            details: json!({ "openReviews": open }),
            message: format!(
                "{open} manual reviews open (threshold {})",
                thresholds.review_backlog
            ),
        }),
        Alert::OutboxStalled => figures.outbox_events_pending.map(|pending| {
            let age = figures.oldest_pending_age_seconds.unwrap_or(0.0);
            let threshold = thresholds.outbox_stalled.as_secs_f64();
            Reading {
                firing: pending > 0 && age > threshold,
                value: age,
                threshold,
                details: json!({ "pending": pending, "oldestPendingAgeSeconds": age }),
                message: format!(
                    "oldest pending outbox event is {age:.0} s old ({pending} pending; threshold {threshold:.0} s)"
                ),
            }
        }),
        Alert::OutboxDeadLetters => figures.failed_event_count.map(|failed| {
            let age = figures.oldest_failed_age_seconds.unwrap_or(0.0);
            Reading {
                firing: failed > 0,
                value: failed as f64,
                threshold: 0.0,
                details: json!({ "failed": failed, "oldestFailedAgeSeconds": age }),
                message: format!(
                    "{failed} outbox events dead-lettered (oldest {age:.0} s): replay or discard them"
                ),
            }
        }),
    }
}

/// The open episodes after `figures`, and the raises and resolves that takes.
/// An alert already open stays open without a transition (its figure is updated);
/// an alert whose figure is unknown keeps its previous state.
pub fn evaluate(
    previous: &ActiveSet,
    figures: &ReliabilityMetrics,
    thresholds: &Thresholds,
    now: DateTime<Utc>,
) -> (ActiveSet, Vec<Transition>) {
    let mut next = ActiveSet::new();
    let mut transitions = Vec::new();
    for alert in Alert::ALL {
        let was = previous.get(&alert);
        let Some(reading) = read(alert, figures, thresholds) else {
            if let Some(open) = was {
                next.insert(alert, open.clone());
            }
            continue;
        };
        let transition = |state| Transition {
            alert,
            state,
            value: reading.value,
            threshold: reading.threshold,
            details: reading.details.clone(),
            at: now,
            message: reading.message.clone(),
        };
        match (reading.firing, was) {
            (true, was) => {
                if was.is_none() {
                    transitions.push(transition(Change::Raised));
                }
                next.insert(
                    alert,
                    ActiveAlert {
                        alert,
                        value: reading.value,
                        threshold: reading.threshold,
                        details: reading.details.clone(),
                        since: was.map_or(now, |w| w.since),
                    },
                );
            }
            (false, Some(_)) => transitions.push(transition(Change::Resolved)),
            (false, None) => {}
        }
    }
    (next, transitions)
}

/// The alert checker of one sales instance.
#[derive(Clone)]
pub struct Checker {
    /// The figures, and the open episodes they are shared through.
    pub sources: Sources,
    pub config: AlertsConfig,
    pub http: reqwest::Client,
}

impl Checker {
    pub fn new(sources: Sources, config: AlertsConfig) -> Self {
        Checker {
            sources,
            config,
            http: reqwest::Client::new(),
        }
    }

    /// One evaluation at `now`: snapshot, gauges, episodes, logs and webhook POSTs.
    /// Returns the raises and resolves.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Vec<Transition> {
        let alerts = &self.sources.alerts;
        let _one_at_a_time = alerts.evaluating.lock().await;
        let figures = crate::reliability::snapshot(&self.sources, now).await;
        crate::reliability::record_gauges(&figures);
        let transitions = {
            let mut active = alerts.lock();
            let (next, transitions) =
                evaluate(&active, &figures, &Thresholds::from(&self.config), now);
            *active = next;
            for alert in Alert::ALL {
                let open = if active.contains_key(&alert) {
                    1.0
                } else {
                    0.0
                };
                metrics::gauge!("reliability_alert_active", "alert" => alert.as_str()).set(open);
            }
            transitions
        };
        for t in &transitions {
            log(t);
            self.notify(t).await;
        }
        transitions
    }

    /// POSTs `t` to the webhook, if one is configured; failures are logged.
    async fn notify(&self, t: &Transition) {
        let Some(url) = &self.config.webhook_url else {
            return;
        };
        let body = json!({
            "alert": t.alert.as_str(),
            "state": t.state.as_str(),
            "value": t.value,
            "threshold": t.threshold,
            "details": t.details,
            "at": t.at,
            "message": t.message,
            "service": "sales",
        });
        let sent = self
            .http
            .post(url)
            .timeout(self.config.webhook_timeout)
            .json(&body)
            .send()
            .await;
        match sent.map(|r| r.status()) {
            Ok(status) if status.is_success() => {}
            Ok(status) => tracing::warn!(alert = t.alert.as_str(), state = t.state.as_str(),
                %status, "alert webhook answered with an error status"),
            Err(e) => tracing::warn!(alert = t.alert.as_str(), state = t.state.as_str(),
                error = %e, "alert webhook failed"),
        }
    }

    /// Evaluates every interval until `token` is cancelled (the first time one interval
    /// after start, so start-up does not race the figures).
    pub async fn run(self, token: CancellationToken) {
        platform::worker::run_every(
            "alerts",
            self.config.interval,
            platform::worker::Start::AfterInterval,
            token,
            || async {
                self.run_once(Utc::now()).await;
                Ok::<_, std::convert::Infallible>(platform::worker::Next::Wait)
            },
        )
        .await;
    }
}

fn log(t: &Transition) {
    let details = t.details.to_string();
    match t.state {
        Change::Raised => tracing::error!(alert = t.alert.as_str(), state = "raised",
            value = t.value, threshold = t.threshold, details = %details,
            "Reliability alert raised: {}", t.message),
        Change::Resolved => tracing::warn!(alert = t.alert.as_str(), state = "resolved",
            value = t.value, threshold = t.threshold, details = %details,
            "Reliability alert resolved: {}", t.message),
    }
}

#[cfg(test)]
mod tests {
    use resilience::BreakerSnapshot;

    use super::*;

    fn thresholds() -> Thresholds {
        Thresholds {
            outbox_backlog: 100,
            review_backlog: 50,
            outbox_stalled: Duration::from_secs(300),
        }
    }

    fn breaker(name: &str, state: BreakerState) -> BreakerSnapshot {
        BreakerSnapshot {
            name: name.to_owned(),
            state,
            successes: 0,
            failures: 0,
            rejected_total: 0,
            opened_total: 0,
            error_threshold_percentage: 50,
            volume_threshold: 10,
            reset_timeout_ms: 30_000,
        }
    }

    /// Figures with every breaker closed, nothing pending and nothing to review.
    fn quiet() -> ReliabilityMetrics {
        let breakers = vec![
            breaker("product-service", BreakerState::Closed),
            breaker("delivery-service", BreakerState::Closed),
        ];
        ReliabilityMetrics {
            circuit_breaker_states: BTreeMap::new(),
            outbox_events_pending: Some(0),
            failed_event_count: Some(0),
            oldest_pending_age_seconds: None,
            oldest_failed_age_seconds: None,
            delivery_retries_pending: Some(0),
            manual_review_queue_length: Some(0),
            reconciliation_jobs_status: None,
            breakers,
            active_alerts: Vec::new(),
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).expect("valid time")
    }

    /// Runs `evaluate` over a sequence of figures, returning each step's transitions as
    /// (alert, change) and the final open set.
    fn episodes(steps: &[ReliabilityMetrics]) -> (Vec<Vec<(&'static str, Change)>>, ActiveSet) {
        let mut active = ActiveSet::new();
        let mut seen = Vec::new();
        for (i, figures) in steps.iter().enumerate() {
            let (next, transitions) = evaluate(&active, figures, &thresholds(), at(i as i64));
            seen.push(
                transitions
                    .iter()
                    .map(|t| (t.alert.as_str(), t.state))
                    .collect(),
            );
            active = next;
        }
        (seen, active)
    }

    #[test]
    fn an_episode_is_raised_once_resolved_once_and_raised_again() {
        let backlog = |pending| ReliabilityMetrics {
            outbox_events_pending: Some(pending),
            oldest_pending_age_seconds: Some(1.0),
            ..quiet()
        };
        let (seen, active) = episodes(&[
            quiet(),
            backlog(101),
            backlog(150),
            backlog(101),
            backlog(100), // not above the threshold: resolved
            quiet(),
            backlog(500),
        ]);
        let raised = ("OUTBOX_BACKLOG", Change::Raised);
        let resolved = ("OUTBOX_BACKLOG", Change::Resolved);
        assert_eq!(
            seen,
            [
                vec![],
                vec![raised],
                vec![],
                vec![],
                vec![resolved],
                vec![],
                vec![raised]
            ]
        );
        let open = &active[&Alert::OutboxBacklog];
        assert_eq!((open.value, open.threshold), (500.0, 100.0));
        assert_eq!(open.since, at(6), "the second episode started at step 6");
    }

    #[test]
    fn an_open_episode_keeps_its_start_and_follows_the_figure() {
        let reviews = |n| ReliabilityMetrics {
            manual_review_queue_length: Some(n),
            ..quiet()
        };
        let mut active = ActiveSet::new();
        let (next, t) = evaluate(&active, &reviews(51), &thresholds(), at(0));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].alert, Alert::ManualReviewBacklog);
        assert_eq!((t[0].value, t[0].threshold), (51.0, 50.0));
        assert_eq!(t[0].at, at(0));
        active = next;
        let (next, t) = evaluate(&active, &reviews(80), &thresholds(), at(30));
        assert!(t.is_empty(), "nothing while it stays");
        let open = &next[&Alert::ManualReviewBacklog];
        assert_eq!((open.value, open.since), (80.0, at(0)));
        let (next, t) = evaluate(&next, &reviews(3), &thresholds(), at(60));
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].state, t[0].value), (Change::Resolved, 3.0));
        assert!(next.is_empty());
    }

    #[test]
    fn open_breakers_are_named_and_half_open_still_counts_as_open() {
        let with = |product, delivery| ReliabilityMetrics {
            breakers: vec![
                breaker("product-service", product),
                breaker("delivery-service", delivery),
            ],
            ..quiet()
        };
        let mut active = ActiveSet::new();
        let (next, t) = evaluate(
            &active,
            &with(BreakerState::Open, BreakerState::Closed),
            &thresholds(),
            at(0),
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].alert.as_str(), "CIRCUIT_BREAKER_OPEN");
        assert_eq!(t[0].details["breakers"], json!(["product-service"]));
        assert!(t[0].message.contains("product-service"), "{}", t[0].message);
        active = next;
        // Half-open (a trial under way), then another breaker opening: the same episode.
        for (product, delivery) in [
            (BreakerState::HalfOpen, BreakerState::Closed),
            (BreakerState::Open, BreakerState::Open),
        ] {
            let (next, t) = evaluate(&active, &with(product, delivery), &thresholds(), at(1));
            assert!(t.is_empty());
            active = next;
        }
        assert_eq!(
            active[&Alert::CircuitBreakerOpen].details["breakers"],
            json!(["product-service", "delivery-service"])
        );
        let (next, t) = evaluate(
            &active,
            &with(BreakerState::Closed, BreakerState::Closed),
            &thresholds(),
            at(2),
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].state, Change::Resolved);
        assert!(next.is_empty());
    }

    #[test]
    fn any_dead_letter_raises_an_alert_with_count_and_age_until_none_is_left() {
        let dead = |failed, age| ReliabilityMetrics {
            failed_event_count: Some(failed),
            oldest_failed_age_seconds: Some(age),
            ..quiet()
        };
        let (seen, active) = episodes(&[quiet(), dead(1, 2.0), dead(3, 65.0)]);
        assert_eq!(
            seen,
            [
                vec![],
                vec![("OUTBOX_DEAD_LETTERS", Change::Raised)],
                vec![]
            ]
        );
        let open = &active[&Alert::OutboxDeadLetters];
        assert_eq!(open.value, 3.0);
        assert_eq!(open.details["oldestFailedAgeSeconds"], json!(65.0));
        // Replayed or discarded, every one: resolved.
        let (next, t) = evaluate(&active, &quiet(), &thresholds(), at(9));
        assert_eq!(
            t.iter().map(|t| (t.alert, t.state)).collect::<Vec<_>>(),
            [(Alert::OutboxDeadLetters, Change::Resolved)]
        );
        assert!(next.is_empty());
    }

    #[test]
    fn a_stalled_outbox_alerts_even_with_a_small_count() {
        let stalled = |age| ReliabilityMetrics {
            outbox_events_pending: Some(2),
            oldest_pending_age_seconds: Some(age),
            ..quiet()
        };
        let (seen, active) = episodes(&[stalled(299.0), stalled(301.0), stalled(900.0)]);
        assert_eq!(
            seen,
            [vec![], vec![("OUTBOX_STALLED", Change::Raised)], vec![]]
        );
        assert_eq!(active.len(), 1, "2 pending is no backlog");
        assert_eq!(active[&Alert::OutboxStalled].value, 900.0);
        // Drained: resolved.
        let (_, t) = evaluate(&active, &quiet(), &thresholds(), at(9));
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].alert, t[0].state),
            (Alert::OutboxStalled, Change::Resolved)
        );
    }

    #[test]
    fn unknown_figures_neither_raise_nor_resolve() {
        let unknown = || ReliabilityMetrics {
            outbox_events_pending: None,
            failed_event_count: None,
            manual_review_queue_length: None,
            delivery_retries_pending: None,
            ..quiet()
        };
        let backlog = ReliabilityMetrics {
            outbox_events_pending: Some(1_000),
            oldest_pending_age_seconds: Some(10.0),
            manual_review_queue_length: Some(60),
            ..quiet()
        };
        let (seen, active) = episodes(&[unknown(), backlog, unknown()]);
        assert_eq!(seen[0], vec![]);
        assert_eq!(seen[1].len(), 2);
        assert_eq!(seen[2], vec![], "the database went away: nothing resolved");
        assert_eq!(
            active.keys().copied().collect::<Vec<_>>(),
            [Alert::OutboxBacklog, Alert::ManualReviewBacklog]
        );
    }

    #[test]
    fn several_alerts_are_independent_episodes() {
        let both = ReliabilityMetrics {
            outbox_events_pending: Some(200),
            oldest_pending_age_seconds: Some(400.0),
            ..quiet()
        };
        let only_stalled = ReliabilityMetrics {
            outbox_events_pending: Some(5),
            oldest_pending_age_seconds: Some(700.0),
            ..quiet()
        };
        let (seen, _) = episodes(&[both, only_stalled]);
        assert_eq!(
            seen,
            [
                vec![
                    ("OUTBOX_BACKLOG", Change::Raised),
                    ("OUTBOX_STALLED", Change::Raised)
                ],
                vec![("OUTBOX_BACKLOG", Change::Resolved)]
            ]
        );
    }
}
