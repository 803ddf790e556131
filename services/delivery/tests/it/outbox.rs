//! Delivery's outbox: every status change (creation included) writes its history row and
//! a `DELIVERY_STATUS_CHANGED` event (the full delivery, its version) in the same
//! transaction; a refused change writes neither. The relay publishes them to a real SNS
//! topic (LocalStack) with the `status` attribute a subscription filters on, and the dead
//! letters can be listed, replayed and discarded by staff.

use std::time::Duration;

use contracts::delivery::Delivery;
use messaging::{Envelope, handler_fn};
use platform::config::Env;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::{expect_json, expect_problem, fields};
use uuid::Uuid;

use crate::spawn;

fn request(order: Uuid) -> Value {
    json!({
        "order_id": order,
        "address": {"recipient": "Ada Lovelace", "line1": "12 Analytical St", "city": "London",
                    "postal_code": "N1 9GU", "country": "GB"},
        "items": [{"product_id": "SKU-A", "quantity": 2}]
    })
}

type EventRow = (String, i32, String, Value, String);

async fn events(pool: &PgPool) -> Vec<EventRow> {
    sqlx::query!(
        "SELECT event_type, aggregate_version, aggregate_type, payload, status FROM outbox_events
         ORDER BY aggregate_id, aggregate_version",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            r.event_type,
            r.aggregate_version,
            r.aggregate_type,
            r.payload,
            r.status,
        )
    })
    .collect()
}

#[sqlx::test(migrations = "../../migrations/delivery")]
async fn every_status_change_writes_its_event_with_the_full_delivery(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    let d: Delivery = expect_json(
        app.api.post("/deliveries", &request(Uuid::new_v4())).await,
        201,
    )
    .await;
    assert_eq!(d.version, 1);
    // A repeated initiation and a refused transition write no event.
    expect_json::<Delivery>(app.api.post("/deliveries", &request(d.order_id)).await, 200).await;
    let status = |s: &str| json!({"status": s});
    let path = format!("/deliveries/{}/status", d.id);
    expect_problem(
        app.api
            .staff(Method::POST, &path, Some(&status("DELIVERED")))
            .await,
        409,
    )
    .await;
    let mut last = d.clone();
    for s in ["PICKED_UP", "IN_TRANSIT", "IN_TRANSIT", "DELIVERED"] {
        last = expect_json(
            app.api.staff(Method::POST, &path, Some(&status(s))).await,
            200,
        )
        .await;
    }
    assert_eq!(last.version, 4, "a repeated status changes nothing");
    let rows = events(&pool).await;
    let summary: Vec<(i32, &str)> = rows
        .iter()
        .map(|(_, v, _, p, _)| (*v, p["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "CREATED"),
            (2, "PICKED_UP"),
            (3, "IN_TRANSIT"),
            (4, "DELIVERED")
        ]
    );
    for (event_type, version, aggregate_type, payload, state) in &rows {
        assert_eq!(event_type, "DELIVERY_STATUS_CHANGED");
        assert_eq!(aggregate_type, "delivery");
        assert_eq!(state, "PENDING", "the broker is off here: events wait");
        let delivery: Delivery = serde_json::from_value(payload.clone()).unwrap();
        assert_eq!((delivery.id, delivery.order_id), (d.id, d.order_id));
        assert_eq!(delivery.version, *version);
        assert_eq!(delivery.address.city, "London");
    }
    let history: i64 =
        sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM delivery_status_history"#)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(history, rows.len() as i64, "one history row per event");

    // Cancelling writes its event too.
    let other: Delivery = expect_json(
        app.api.post("/deliveries", &request(Uuid::new_v4())).await,
        201,
    )
    .await;
    let cancelled: Delivery = expect_json(
        app.api
            .post(&format!("/deliveries/{}/cancel", other.id), &json!({}))
            .await,
        200,
    )
    .await;
    assert_eq!(cancelled.version, 2);
    let n: i64 = sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM outbox_events WHERE aggregate_id = $1 AND payload->>'status' = 'CANCELLED'"#, other.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(n, 1);
}

fn localstack() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

#[sqlx::test(migrations = "../../migrations/delivery")]
async fn the_relay_publishes_to_deliverys_topic_with_the_status_attribute(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    let d: Delivery = expect_json(
        app.api.post("/deliveries", &request(Uuid::new_v4())).await,
        201,
    )
    .await;
    expect_json::<Delivery>(
        app.api
            .staff(
                Method::POST,
                &format!("/deliveries/{}/status", d.id),
                Some(&json!({"status": "PICKED_UP"})),
            )
            .await,
        200,
    )
    .await;

    // A topic of this test's own, with a queue that drops CREATED as sales' does.
    let run = Uuid::new_v4().simple().to_string();
    let sdk = messaging::aws::emulator_sdk_config(&localstack()).await;
    let queue = format!("delivery-it-{}", &run[..12]);
    let provisioned = messaging::provision(
        &sdk,
        &messaging::Topology {
            topic_name: format!("delivery-it-{}", &run[..12]),
            queues: vec![messaging::QueueSpec {
                name: queue.clone(),
                event_types: vec!["DELIVERY_STATUS_CHANGED".into()],
                excluded_statuses: vec!["CREATED".into()],
                max_receive_count: 5,
                visibility_timeout_secs: 30,
            }],
        },
    )
    .await
    .unwrap();
    let vars = [
        ("DELIVERY_BROKER_ENABLED", "true".to_owned()),
        ("DELIVERY_BROKER_TOPIC_ARN", provisioned.topic_arn.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let env = Env::from_map("DELIVERY_", vars);
    let config = delivery::Config::from(&env).unwrap();
    let breaker = resilience::CircuitBreaker::new(config.broker_breaker.clone());
    let sdk_relay = messaging::aws::emulator_sdk_config(&localstack()).await;
    let relay = outbox::Relay {
        pool: pool.clone(),
        publisher: messaging::Publisher::new(&sdk_relay, provisioned.topic_arn.clone(), 1),
        breaker,
        config: config.outbox.clone(),
        pause_before_mark: Duration::ZERO,
        flight: Default::default(),
    };
    let report = relay.drain().await.unwrap();
    assert_eq!((report.claimed, report.sent), (2, 2));
    let sent: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM outbox_events WHERE status = 'SENT'"#
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(sent, 2);

    let consumer = messaging::Consumer::new(
        &sdk,
        messaging::ConsumerConfig {
            wait_time_secs: 1,
            ..messaging::ConsumerConfig::new(provisioned.queue_urls[&queue].clone())
        },
    );
    let received = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<Envelope>::new()));
    let handler = {
        let received = received.clone();
        handler_fn(move |e: Envelope| {
            let received = received.clone();
            async move {
                received.lock().push(e);
                Ok(())
            }
        })
    };
    for _ in 0..3 {
        consumer.poll_once(&handler).await.unwrap();
    }
    let received = received.lock().clone();
    assert_eq!(received.len(), 1, "the subscription dropped CREATED");
    assert_eq!(received[0].aggregate_id, d.id);
    assert_eq!(received[0].aggregate_version, 2);
    assert_eq!(received[0].payload["status"], "PICKED_UP");
}

#[sqlx::test(migrations = "../../migrations/delivery")]
async fn staff_list_replay_and_discard_dead_letters(pool: PgPool) {
    let app = spawn(pool.clone()).await;
    for _ in 0..2 {
        expect_json::<Delivery>(
            app.api.post("/deliveries", &request(Uuid::new_v4())).await,
            201,
        )
        .await;
    }
    sqlx::query!(
        "UPDATE outbox_events SET status = 'FAILED', retry_count = 5, last_error = 'refused'"
    )
    .execute(&pool)
    .await
    .unwrap();
    expect_problem(app.api.anonymous().get("/outbox/failed").await, 401).await;
    let failed: Vec<Value> = expect_json(
        app.api.staff(Method::GET, "/outbox/failed", None).await,
        200,
    )
    .await;
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["last_error"], "refused");
    let (first, second) = (
        failed[0]["id"].as_str().unwrap().to_owned(),
        failed[1]["id"].as_str().unwrap().to_owned(),
    );

    let blank = app
        .api
        .staff(
            Method::POST,
            &format!("/outbox/failed/{second}/discard"),
            Some(&json!({"reason": "  "})),
        )
        .await;
    let problem = expect_problem(blank, 422).await;
    assert_eq!(fields(&problem), ["reason"]);
    let moved: Value = expect_json(
        app.api
            .staff(
                Method::POST,
                &format!("/outbox/failed/{first}/replay"),
                None,
            )
            .await,
        200,
    )
    .await;
    assert_eq!(moved["count"], 1);
    let moved: Value = expect_json(
        app.api
            .staff(
                Method::POST,
                &format!("/outbox/failed/{second}/discard"),
                Some(&json!({"reason": "a test event"})),
            )
            .await,
        200,
    )
    .await;
    assert_eq!(moved["count"], 1);
    expect_problem(
        app.api
            .staff(
                Method::POST,
                &format!("/outbox/failed/{second}/replay"),
                None,
            )
            .await,
        404,
    )
    .await;
    let states: Vec<(String, i32)> =
        sqlx::query!("SELECT status, retry_count FROM outbox_events ORDER BY status")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.status, r.retry_count))
            .collect();
    assert_eq!(
        states,
        [("DISCARDED".to_owned(), 5), ("PENDING".to_owned(), 0)]
    );
    let audit: Vec<String> = sqlx::query_scalar!("SELECT action FROM outbox_audit ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(audit, ["REPLAYED", "DISCARDED"]);
}
