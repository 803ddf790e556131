//! One order is one trace: the three real binaries export their spans over
//! OTLP/HTTP (JSON) to a receiver this test runs, with the broker on (LocalStack).
//! The trace of `POST /orders` must hold spans of sales, product (reservation and
//! the SQS consumer) and delivery, connected into one tree through the HTTP hops
//! and through SNS/SQS; the services' log lines for the order carry its trace id.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Json, Router, body::Bytes, extract::State, routing::post};
use serde_json::{Value, json};
use system_tests::{Stack, StackOptions, order_request};

/// One exported span, as the test needs it.
#[derive(Debug, Clone)]
struct SpanRow {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    /// OTLP `SpanKind`: 2 server, 3 client, 4 producer, 5 consumer.
    kind: i64,
}

type Received = Arc<Mutex<Vec<Value>>>;

/// An OTLP/HTTP receiver on a free loopback port: keeps every `/v1/traces` body.
async fn start_receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(|State(store): State<Received>, body: Bytes| async move {
                let value: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                    panic!(
                        "OTLP body is not JSON ({e}): {}",
                        String::from_utf8_lossy(&body)
                    )
                });
                store.lock().unwrap().push(value);
                Json(json!({}))
            }),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (endpoint, received)
}

fn string_value(v: &Value) -> Option<String> {
    v.get("stringValue")
        .or_else(|| v.get("value").and_then(|v| v.get("stringValue")))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The settings that send a service's spans to the receiver at `endpoint`.
fn otel(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_owned()),
    ]
}

/// Stops the three services (a graceful stop flushes each one's buffered spans); the spans
/// received by then.
async fn flushed_spans(stack: &mut Stack, received: &Received) -> Vec<SpanRow> {
    assert!(stack.sales.stop().await, "sales stopped cleanly");
    assert!(stack.delivery.stop().await, "delivery stopped cleanly");
    assert!(stack.product.stop().await, "product stopped cleanly");
    spans(received)
}

/// Sales' span of `POST /orders`, the root of an order's trace.
fn order_root(all: &[SpanRow]) -> &SpanRow {
    all.iter()
        .find(|s| s.service == "sales" && s.name == "POST /orders")
        .unwrap_or_else(|| panic!("no sales span `POST /orders` among {all:#?}"))
}

/// The spans of every export request received.
fn spans(received: &Received) -> Vec<SpanRow> {
    let mut rows = Vec::new();
    for body in received.lock().unwrap().iter() {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .and_then(|a| string_value(&a["value"]))
                .unwrap_or_else(|| panic!("no service.name in {}", rs["resource"]));
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    let text = |k: &str| span[k].as_str().unwrap_or_default().to_owned();
                    rows.push(SpanRow {
                        service: service.clone(),
                        trace_id: text("traceId"),
                        span_id: text("spanId"),
                        parent_span_id: text("parentSpanId"),
                        name: text("name"),
                        kind: span["kind"].as_i64().unwrap_or_default(),
                    });
                }
            }
        }
    }
    rows
}

/// The JSON log lines of a service that carry `field` = `value`.
fn log_lines(log: &str, field: &str, value: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l[field].as_str() == Some(value))
        .collect()
}

#[tokio::test]
async fn one_order_is_one_trace_across_services_and_the_broker() {
    let (endpoint, received) = start_receiver().await;
    let otel = || otel(&endpoint);
    let mut stack = Stack::start_with(StackOptions {
        broker: true,
        sales_env: otel(),
        product_env: otel(),
        delivery_env: otel(),
        ..StackOptions::default()
    })
    .await;

    let order = stack
        .sales_api()
        .place(&order_request("traced-customer", &[("SKU-HEADSET", 1)]))
        .await;
    let order_id = order.id.to_string();
    assert!(
        order.delivery_id.is_some(),
        "delivery was initiated inline: {order:?}"
    );

    // Product's consumer applied ORDER_CREATED (it came through SNS/SQS).
    let product_db = stack.db("product").await;
    let started = Instant::now();
    loop {
        let applied: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inbox WHERE event_type = 'ORDER_CREATED' AND aggregate_id = $1::uuid",
        )
        .bind(&order_id)
        .fetch_one(&product_db)
        .await
        .unwrap();
        if applied == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "ORDER_CREATED not consumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    product_db.close().await;

    let all = flushed_spans(&mut stack, &received).await;
    let root = order_root(&all);
    assert!(
        root.parent_span_id.is_empty(),
        "the order's request starts the trace: {root:?}"
    );
    let trace_id = root.trace_id.clone();
    let trace: Vec<&SpanRow> = all.iter().filter(|s| s.trace_id == trace_id).collect();
    let describe = || {
        trace
            .iter()
            .map(|s| format!("{}: {} ({})", s.service, s.name, s.kind))
            .collect::<Vec<_>>()
            .join("\n")
    };

    let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["delivery", "product", "sales"]),
        "{}",
        describe()
    );
    let has = |service: &str, name: &str, kind: i64| {
        trace
            .iter()
            .any(|s| s.service == service && s.name == name && s.kind == kind)
    };
    // The HTTP hops: sales' client spans and the peers' server spans.
    assert!(has("product", "POST /reservations", 2), "{}", describe());
    assert!(has("delivery", "POST /deliveries", 2), "{}", describe());
    assert!(
        trace.iter().any(|s| s.service == "sales" && s.kind == 3),
        "{}",
        describe()
    );
    // The broker hop: the relay's producer span and product's consumer span.
    assert!(has("sales", "ORDER_CREATED publish", 4), "{}", describe());
    assert!(has("product", "ORDER_CREATED process", 5), "{}", describe());

    // One tree: a single root, and every parent is a span of the trace.
    let ids: BTreeMap<&str, &SpanRow> = trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    assert_eq!(ids.len(), trace.len(), "span ids are unique");
    let roots: Vec<_> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {roots:?}\n{}", describe());
    for span in &trace {
        assert!(
            span.parent_span_id.is_empty() || ids.contains_key(span.parent_span_id.as_str()),
            "the parent of {span:?} is not in the trace\n{}",
            describe()
        );
    }
    // The consumer's span descends from the publish span, which descends from the request.
    let consumer = trace
        .iter()
        .find(|s| s.name == "ORDER_CREATED process")
        .unwrap();
    let ancestry: Vec<&str> = std::iter::successors(Some(*consumer), |s| {
        ids.get(s.parent_span_id.as_str()).copied()
    })
    .map(|s| s.name.as_str())
    .collect();
    assert_eq!(ancestry.first(), Some(&"ORDER_CREATED process"));
    assert_eq!(ancestry.get(1), Some(&"ORDER_CREATED publish"));
    assert_eq!(ancestry.last(), Some(&"POST /orders"), "{ancestry:?}");

    // Logs carry the trace id: sales' key message for the order and product's consumer.
    let created = log_lines(&stack.sales.log_text(), "order_id", &order_id)
        .into_iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Created order"))
        })
        .expect("sales logged `Created order … in database`");
    assert_eq!(created["trace_id"], trace_id.as_str(), "{created}");
    assert!(
        ids.contains_key(created["span_id"].as_str().unwrap()),
        "{created}"
    );
    let applied = log_lines(&stack.product.log_text(), "order_id", &order_id)
        .into_iter()
        .find(|l| l["message"] == "order event applied" && l["event_type"] == "ORDER_CREATED")
        .expect("product logged the applied event");
    assert_eq!(applied["trace_id"], trace_id.as_str(), "{applied}");

    assert!(stack.shutdown().await);
}

#[tokio::test]
async fn a_delivery_the_retry_worker_initiates_later_joins_the_orders_trace() {
    let (endpoint, received) = start_receiver().await;
    let otel = || otel(&endpoint);
    let mut sales_env = otel();
    sales_env.extend([
        ("SALES_DELIVERY_RETRY_FIRST_DELAY_MS", "200".to_owned()),
        ("SALES_DELIVERY_RETRY_POLL_INTERVAL_MS", "100".to_owned()),
    ]);
    let mut stack = Stack::start_with(StackOptions {
        sales_env,
        product_env: otel(),
        delivery_env: otel(),
        ..StackOptions::default()
    })
    .await;
    assert!(stack.delivery.stop().await, "delivery stopped cleanly");

    let sales = stack.sales_api();
    let order = sales
        .place(&order_request("traced-customer", &[("SKU-MOUSE", 1)]))
        .await;
    assert!(order.delivery_id.is_none(), "delivery was down: {order:?}");

    // Delivery back: the retry worker initiates the delivery, outside any request.
    stack.delivery.start().await;
    sales
        .wait_for_delivery(order.id, Duration::from_secs(30))
        .await;
    let all = flushed_spans(&mut stack, &received).await;
    let root = order_root(&all);
    let trace: Vec<&SpanRow> = all.iter().filter(|s| s.trace_id == root.trace_id).collect();
    let describe = || {
        trace
            .iter()
            .map(|s| format!("{}: {} ({})", s.service, s.name, s.kind))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let retry = trace
        .iter()
        .find(|s| s.service == "sales" && s.name == "delivery retry")
        .unwrap_or_else(|| panic!("no retry span in the order's trace:\n{}", describe()));
    // The delivery the worker made is in the order's trace, below the retry span.
    let ids: BTreeMap<&str, &SpanRow> = trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let delivery = trace
        .iter()
        .find(|s| s.service == "delivery" && s.name == "POST /deliveries" && s.kind == 2)
        .unwrap_or_else(|| panic!("no delivery span in the order's trace:\n{}", describe()));
    let ancestry: Vec<&str> = std::iter::successors(Some(*delivery), |s| {
        ids.get(s.parent_span_id.as_str()).copied()
    })
    .map(|s| s.span_id.as_str())
    .collect();
    assert!(ancestry.contains(&retry.span_id.as_str()), "{}", describe());
    assert_eq!(
        ancestry.last(),
        Some(&root.span_id.as_str()),
        "{}",
        describe()
    );
    assert!(stack.shutdown().await);
}
