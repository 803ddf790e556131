//! The reliability alert checker against a real webhook receiver (an HTTP server
//! in the test): one POST when an episode is raised, one when it is resolved,
//! none while it lasts; a webhook that hangs never holds the checker up.

use std::time::{Duration, Instant};

use axum::{Json, Router, http::StatusCode, routing::post};
use chrono::Utc;
use contracts::orders::Order;
use sales::{reliability::Alert, workers::alerts::Change};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::expect_json;
use tokio::sync::mpsc;

use crate::{Peers, Stack, order_body};

/// A webhook receiver on a free port: its URL and the bodies it received.
async fn webhook() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://127.0.0.1:{port}/hook"), rx)
}

/// Every body received so far (the checker awaits each POST, so none is in flight).
fn received(rx: &mut mpsc::UnboundedReceiver<Value>) -> Vec<(String, String, f64)> {
    let mut bodies = Vec::new();
    while let Ok(body) = rx.try_recv() {
        assert!(body["at"].is_string(), "{body}");
        assert!(body["details"].is_object(), "{body}");
        bodies.push((
            body["alert"].as_str().unwrap().to_owned(),
            body["state"].as_str().unwrap().to_owned(),
            body["value"].as_f64().unwrap(),
        ));
    }
    bodies
}

#[sqlx::test(migrations = false)]
async fn episodes_are_posted_to_the_webhook_once_raised_and_once_resolved(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let (url, mut hook) = webhook().await;
    let stack = Stack::start_configured(
        options,
        Peers::Both,
        &[
            ("SALES_ALERTS_WEBHOOK_URL", &url),
            ("SALES_ALERTS_OUTBOX_BACKLOG_THRESHOLD", "1"),
            ("SALES_ALERTS_OUTBOX_STALLED_SECS", "600"),
        ],
    )
    .await;
    let checker = &stack.alerts;
    let t0 = Utc::now();
    assert!(checker.run_once(t0).await.is_empty(), "all quiet");
    assert!(received(&mut hook).is_empty());

    // The broker is off: an order leaves ORDER_CREATED and DELIVERY_INITIATED pending.
    let _: Order = expect_json(
        stack
            .place(&order_body("alice", &[("SKU-A", 1)]), None)
            .await,
        201,
    )
    .await;
    let raised = checker.run_once(t0).await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(
        (raised[0].alert, raised[0].state, raised[0].value),
        (Alert::OutboxBacklog, Change::Raised, 2.0)
    );
    assert_eq!(
        received(&mut hook),
        [("OUTBOX_BACKLOG".to_owned(), "raised".to_owned(), 2.0)]
    );
    let view: Value = expect_json(stack.api().get("/health/reliability").await, 200).await;
    assert_eq!(view["activeAlerts"][0]["alert"], "OUTBOX_BACKLOG", "{view}");
    assert_eq!(view["activeAlerts"][0]["threshold"], 1.0);

    // Still there: nothing new, nothing posted.
    assert!(checker.run_once(t0).await.is_empty());
    assert!(received(&mut hook).is_empty());

    // Ten minutes and more later the same two rows have stalled: a second alert.
    let later = t0 + chrono::Duration::seconds(700);
    let stalled = checker.run_once(later).await;
    assert_eq!(stalled.len(), 1, "{stalled:?}");
    assert_eq!(stalled[0].alert, Alert::OutboxStalled);
    let bodies = received(&mut hook);
    assert_eq!(bodies.len(), 1);
    assert_eq!(
        (bodies[0].0.as_str(), bodies[0].1.as_str()),
        ("OUTBOX_STALLED", "raised")
    );
    assert!(bodies[0].2 > 600.0, "the age is the value: {bodies:?}");

    // Published (as the relay would): both episodes end.
    sqlx::query("UPDATE outbox_events SET status = 'SENT', sent_at = now()")
        .execute(&stack.sales_db)
        .await
        .unwrap();
    let resolved = checker.run_once(later).await;
    assert_eq!(
        resolved
            .iter()
            .map(|t| (t.alert, t.state))
            .collect::<Vec<_>>(),
        [
            (Alert::OutboxBacklog, Change::Resolved),
            (Alert::OutboxStalled, Change::Resolved)
        ]
    );
    assert_eq!(
        received(&mut hook),
        [
            ("OUTBOX_BACKLOG".to_owned(), "resolved".to_owned(), 0.0),
            ("OUTBOX_STALLED".to_owned(), "resolved".to_owned(), 0.0)
        ]
    );
    let view: Value = expect_json(stack.api().get("/health/reliability").await, 200).await;
    assert_eq!(view["activeAlerts"], serde_json::json!([]));

    // A new backlog is a new episode.
    let _: Order = expect_json(
        stack.place(&order_body("bob", &[("SKU-A", 1)]), None).await,
        201,
    )
    .await;
    let again = checker.run_once(Utc::now()).await;
    assert_eq!(
        again.iter().map(|t| (t.alert, t.state)).collect::<Vec<_>>(),
        [(Alert::OutboxBacklog, Change::Raised)]
    );
    assert_eq!(received(&mut hook).len(), 1);
}

#[sqlx::test(migrations = false)]
async fn a_hanging_webhook_does_not_hold_the_checker_up(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", silent.local_addr().unwrap());
    let stack = Stack::start_configured(
        options,
        Peers::ProductDown,
        &[
            ("SALES_ALERTS_WEBHOOK_URL", &url),
            ("SALES_ALERTS_WEBHOOK_TIMEOUT_MS", "300"),
            ("SALES_ALERTS_REVIEW_BACKLOG_THRESHOLD", "0"),
        ],
    )
    .await;
    // Product is down: the order is accepted on the fallback with an open review.
    let order: Order = expect_json(
        stack
            .place(&order_body("carol", &[("SKU-A", 1)]), None)
            .await,
        201,
    )
    .await;
    assert!(order.requires_manual_review);
    let started = Instant::now();
    let raised = stack.alerts.run_once(Utc::now()).await;
    let took = started.elapsed();
    assert_eq!(
        raised
            .iter()
            .map(|t| (t.alert, t.state))
            .collect::<Vec<_>>(),
        [(Alert::ManualReviewBacklog, Change::Raised)]
    );
    assert!(
        took < Duration::from_secs(2),
        "the webhook timeout bounds the wait: {took:?}"
    );
    drop(silent);
}
