//! `/metrics` of the three real processes after a scripted scenario, parsed with
//! a Prometheus text parser: orders placed and read, events relayed through
//! SNS/SQS to product's consumer, then product hanging (SIGSTOP) so one order
//! falls back and the product breaker opens. Every asserted value is what the
//! scenario made, cross-checked with the databases where they hold it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;
use system_tests::{Service, Stack, StackOptions, eventually, order_request};

/// Orders placed while product is healthy.
const N: usize = 5;

/// Scrapes and parses a service's `/metrics` (checking the content type).
async fn scrape(http: &reqwest::Client, service: &Service) -> Scrape {
    let response = http
        .get(format!("{}/metrics", service.base_url()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(shield(l)))).unwrap()
}

/// Stands in for `}` inside label values while parsing: prometheus-parse 0.2 ends a
/// sample's labels at the first `}`, so a line whose route label is a template such
/// as `/orders/{id}` would otherwise be dropped.
const CLOSE_BRACE: char = '\u{27E9}';

fn shield(line: &str) -> String {
    let (mut quoted, mut escaped) = (false, false);
    line.chars()
        .map(|c| {
            let out = if quoted && c == '}' { CLOSE_BRACE } else { c };
            quoted ^= c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            out
        })
        .collect()
}

/// A label's value as the service wrote it.
fn label(sample: &Sample, name: &str) -> Option<String> {
    sample.labels.get(name).map(|v| v.replace(CLOSE_BRACE, "}"))
}

fn number(sample: &Sample) -> f64 {
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(_) | Value::Summary(_) => panic!("{} is not a number", sample.metric),
    }
}

/// The value of the one series `name{labels}` (exact label set match on the given
/// labels; other labels may exist), if present.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| label(s, k).as_deref() == Some(*v))
        })
        .collect();
    assert!(found.len() <= 1, "{name}{labels:?} matches {found:?}");
    found.first().map(|s| number(s))
}

#[track_caller]
fn expect(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, name, labels).unwrap_or_else(|| {
        let names: std::collections::BTreeSet<&str> =
            scrape.samples.iter().map(|s| s.metric.as_str()).collect();
        let same: Vec<String> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| format!("{:?} {:?}", *s.labels, s.value).replace(CLOSE_BRACE, "}"))
            .collect();
        panic!("{name}{labels:?} missing; {name} has {same:#?}; series: {names:?}")
    })
}

/// Every `route` label is a template (or `unmatched`): no id ever becomes a label.
fn assert_route_templates(scrape: &Scrape, ids: &[uuid::Uuid]) {
    for sample in &scrape.samples {
        if let Some(route) = label(sample, "route") {
            assert!(
                route == "unmatched" || route.starts_with('/'),
                "odd route {route}"
            );
            for id in ids {
                assert!(!route.contains(&id.to_string()), "raw id in {route}");
            }
        }
    }
}

#[tokio::test]
async fn metrics_of_all_three_services_after_a_scripted_scenario() {
    let stack = Stack::start_with(StackOptions {
        broker: true,
        sales_env: vec![
            // One failure among a handful of successes opens the product breaker.
            ("SALES_BREAKER_PRODUCT_VOLUME_THRESHOLD", "1".into()),
            (
                "SALES_BREAKER_PRODUCT_ERROR_THRESHOLD_PERCENTAGE",
                "1".into(),
            ),
            ("SALES_BREAKER_PRODUCT_CALL_TIMEOUT_MS", "2000".into()),
            ("SALES_BREAKER_PRODUCT_RESET_TIMEOUT_MS", "600000".into()),
            ("SALES_ALERTS_INTERVAL_MS", "200".into()),
            ("SALES_RECONCILIATION_INTERVAL_MS", "300".into()),
            // Re-checks would call product: not within this test.
            ("SALES_AVAILABILITY_RECHECK_INTERVAL_MS", "3600000".into()),
        ],
        ..StackOptions::default()
    })
    .await;
    let http = reqwest::Client::new();
    let sales_api = stack.sales_api();

    let mut ids = Vec::new();
    for i in 0..N {
        let order = sales_api
            .place(&order_request(&format!("m{i}"), &[("SKU-MOUSE", 1)]))
            .await;
        assert!(!order.requires_manual_review);
        ids.push(order.id);
    }
    sales_api.get_order(ids[0]).await;

    // Product consumes the N ORDER_CREATED events relayed through SNS/SQS.
    eventually(
        "product consumed every ORDER_CREATED",
        Duration::from_secs(30),
        || async {
            let product = scrape(&http, &stack.product).await;
            (value(
                &product,
                "consumer_messages_total",
                &[("result", "processed")],
            ) == Some(N as f64))
            .then_some(())
        },
    )
    .await;
    let product = scrape(&http, &stack.product).await;
    assert_route_templates(&product, &ids);
    assert_eq!(
        expect(
            &product,
            "http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/reservations"),
                ("status", "201")
            ]
        ),
        N as f64
    );
    assert_eq!(
        value(&product, "consumer_messages_total", &[("result", "failed")]),
        None,
        "nothing failed"
    );
    let product_db = stack.db("product").await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&product_db)
        .await
        .unwrap();
    assert_eq!(applied, N as i64, "one inbox row per processed message");
    product_db.close().await;

    // Product hangs: the next order falls back and the product breaker opens.
    stack.product.pause();
    let flagged = sales_api
        .place(&order_request("fallback", &[("SKU-MOUSE", 1)]))
        .await;
    assert!(flagged.requires_manual_review && flagged.fallback_used);
    ids.push(flagged.id);

    let sales_db = stack.db("sales").await;
    // Every event relayed, and the alert checker has seen the open breaker.
    eventually(
        "the outbox drained and the alert raised",
        Duration::from_secs(30),
        || async {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status <> 'SENT'")
                    .fetch_one(&sales_db)
                    .await
                    .unwrap();
            let sales = scrape(&http, &stack.sales).await;
            (pending == 0
                && value(
                    &sales,
                    "reliability_alert_active",
                    &[("alert", "CIRCUIT_BREAKER_OPEN")],
                ) == Some(1.0)
                && value(
                    &sales,
                    "reconciliation_runs_total",
                    &[("result", "succeeded")],
                )
                .is_some())
            .then_some(())
        },
    )
    .await;

    let sales = scrape(&http, &stack.sales).await;
    assert_route_templates(&sales, &ids);
    let placed = (N + 1) as f64;
    assert_eq!(
        expect(
            &sales,
            "http_requests_total",
            &[("method", "POST"), ("route", "/orders"), ("status", "201")]
        ),
        placed
    );
    assert_eq!(
        expect(
            &sales,
            "http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/orders/{id}"),
                ("status", "200")
            ]
        ),
        1.0
    );
    assert_eq!(
        expect(
            &sales,
            "http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/orders"), ("status", "201")]
        ),
        placed
    );
    // Breakers: product open after its one failure; the others closed.
    assert_eq!(
        expect(
            &sales,
            "circuit_breaker_state",
            &[("breaker", "product-service")]
        ),
        1.0
    );
    for closed in ["delivery-service", "database", "broker"] {
        assert_eq!(
            expect(&sales, "circuit_breaker_state", &[("breaker", closed)]),
            0.0,
            "{closed}"
        );
    }
    assert_eq!(
        expect(
            &sales,
            "circuit_breaker_calls_total",
            &[("breaker", "product-service"), ("outcome", "failure")]
        ),
        1.0
    );
    assert!(
        expect(
            &sales,
            "circuit_breaker_calls_total",
            &[("breaker", "product-service"), ("outcome", "success")]
        ) >= N as f64,
        "each healthy order reserved through the breaker"
    );
    assert!(
        expect(
            &sales,
            "circuit_breaker_calls_total",
            &[("breaker", "delivery-service"), ("outcome", "success")]
        ) >= N as f64,
        "one delivery initiated per order not held (the fallback order's waits), and reconciliation's reads"
    );
    // The outbox: drained, every row published once, a lag recorded for each.
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_events WHERE status = 'SENT'")
        .fetch_one(&sales_db)
        .await
        .unwrap();
    assert!(
        sent >= 2 * (N as i64 + 1),
        "ORDER_CREATED and DELIVERY_INITIATED per order"
    );
    assert_eq!(expect(&sales, "outbox_events_pending", &[]), 0.0);
    assert_eq!(expect(&sales, "outbox_events_failed", &[]), 0.0);
    assert_eq!(
        expect(&sales, "outbox_oldest_pending_age_seconds", &[]),
        0.0
    );
    assert_eq!(
        expect(&sales, "outbox_events_published_total", &[]),
        sent as f64
    );
    assert_eq!(
        expect(&sales, "outbox_relay_lag_seconds_count", &[]),
        sent as f64
    );
    // Requests to the broker: at least one PublishBatch, at most one per event.
    let publish_calls = expect(
        &sales,
        "broker_requests_total",
        &[("operation", "PublishBatch")],
    );
    assert!(
        (1.0..=sent as f64).contains(&publish_calls),
        "{publish_calls} PublishBatch calls for {sent} events"
    );
    let lag = sales
        .samples
        .iter()
        .find(|s| s.metric == "outbox_relay_lag_seconds")
        .unwrap();
    assert!(
        matches!(&lag.value, Value::Histogram(buckets) if buckets.len() > 5),
        "the lag is a histogram with buckets: {lag:?}"
    );
    // Reviews and retries, as the database has them.
    let open_reviews: i64 =
        sqlx::query_scalar("SELECT count(*) FROM manual_reviews WHERE status = 'OPEN'")
            .fetch_one(&sales_db)
            .await
            .unwrap();
    assert_eq!(open_reviews, 1, "the fallback order waits for review");
    assert_eq!(
        expect(&sales, "manual_review_queue_length", &[]),
        open_reviews as f64
    );
    assert_eq!(expect(&sales, "delivery_retries_pending", &[]), 0.0);
    assert!(
        expect(
            &sales,
            "reconciliation_runs_total",
            &[("result", "succeeded")]
        ) >= 1.0
    );
    // The alert checker: the open breaker is the one alert, also in the reliability view.
    for quiet in ["OUTBOX_BACKLOG", "MANUAL_REVIEW_BACKLOG", "OUTBOX_STALLED"] {
        assert_eq!(
            expect(&sales, "reliability_alert_active", &[("alert", quiet)]),
            0.0,
            "{quiet}"
        );
    }
    let view = sales_api.reliability().await;
    assert_eq!(
        view["activeAlerts"][0]["alert"], "CIRCUIT_BREAKER_OPEN",
        "{view}"
    );
    assert_eq!(
        view["activeAlerts"][0]["details"]["breakers"],
        json!(["product-service"])
    );
    sales_db.close().await;

    let delivery = scrape(&http, &stack.delivery).await;
    assert_route_templates(&delivery, &ids);
    assert_eq!(
        expect(
            &delivery,
            "http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/deliveries"),
                ("status", "201")
            ]
        ),
        N as f64,
        "the fallback order's delivery is held while product hangs"
    );
    assert!(
        expect(
            &delivery,
            "http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/health/ready"),
                ("status", "200")
            ]
        ) >= 1.0,
        "health checks are recorded with their template"
    );

    stack.product.resume();
    assert!(stack.shutdown().await);
}
