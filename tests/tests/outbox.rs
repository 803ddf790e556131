//! The outbox relayed to SNS/SQS and consumed by product, with real processes
//! and LocalStack: broker outage, a crash between publish and mark, two relays,
//! a poison message, and replay of dead letters.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use contracts::orders::Order;
use messaging::{Envelope, Handler, HandlerError};
use serde_json::{Value, json};
use sqlx::PgPool;
use system_tests::{SalesClient, Stack, StackOptions, order_request};
use uuid::Uuid;

/// Places one headset for `customer` through `sales`.
async fn place(sales: &SalesClient, customer: &str) -> Order {
    sales
        .place(&order_request(customer, &[("SKU-HEADSET", 1)]))
        .await
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Waits until `sql` (a count) reaches `want`, for at most `limit`.
async fn wait_for(pool: &PgPool, sql: &str, want: i64, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = scalar(pool, sql).await;
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "`{sql}` is {got}, wanted {want} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const ORDER_CREATED_IN_INBOX: &str =
    "SELECT count(*) FROM inbox WHERE event_type = 'ORDER_CREATED'";

/// `opened_total` of sales' broker breaker, from `/health/reliability`.
async fn broker_openings(sales: &SalesClient) -> u64 {
    sales.breaker_openings("broker").await.unwrap()
}

/// The shipped outbox and dead-letter settings (5 refusals, 5 minutes), with the broker
/// breaker's reset cut from 30 s to 250 ms: the outage below lasts more half-open trials
/// (20+) than ten minutes would with the default, and no event may become a dead letter.
#[tokio::test]
async fn a_broker_outage_of_twenty_trials_leaves_no_dead_letter_and_every_event_delivered() {
    let stack = Stack::start_with(StackOptions {
        broker: true,
        broker_proxy: true,
        sales_env: vec![("SALES_BREAKER_BROKER_RESET_TIMEOUT_MS", "250".into())],
        ..StackOptions::default()
    })
    .await;
    let (sales, product) = (stack.db("sales").await, stack.db("product").await);
    stack.broker_proxy.as_ref().unwrap().set_down(true);
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(place(&stack.sales_api(), &format!("b{i}")).await.id);
        // Orders trickle in, so the relay makes one failing call per order.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let pending = scalar(
        &sales,
        "SELECT count(*) FROM outbox_events WHERE status = 'PENDING'",
    )
    .await;
    assert!(
        pending >= 24,
        "ORDER_CREATED and DELIVERY_INITIATED of every order wait: {pending}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let reliability = loop {
        let reliability = stack.sales_api().reliability().await;
        if reliability["circuitBreakerStates"]["broker"] == "OPEN" {
            break reliability;
        }
        assert!(
            Instant::now() < deadline,
            "the broker breaker did not open: {reliability}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reliability["outboxEventsPending"].as_i64().unwrap() >= 24);
    assert_eq!(scalar(&product, ORDER_CREATED_IN_INBOX).await, 0);
    // The outage goes on, trial after failed trial.
    let started = Instant::now();
    while broker_openings(&stack.sales_api()).await < 21 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the half-open trials did not come"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        scalar(
            &sales,
            "SELECT count(*) FROM outbox_events WHERE status <> 'PENDING' OR retry_count > 0"
        )
        .await,
        0,
        "an outage charges no event's dead-letter budget"
    );

    stack.broker_proxy.as_ref().unwrap().set_down(false);
    let drained = wait_for(
        &sales,
        "SELECT count(*) FROM outbox_events WHERE status <> 'SENT'",
        0,
        Duration::from_secs(60),
    )
    .await;
    wait_for(
        &product,
        ORDER_CREATED_IN_INBOX,
        ids.len() as i64,
        Duration::from_secs(30),
    )
    .await;
    println!(
        "broker back after {} half-open trials → backlog drained in {drained:?} (breaker reset 250 ms)",
        broker_openings(&stack.sales_api()).await
    );
    let max_retries = scalar(
        &sales,
        "SELECT coalesce(max(retry_count), 0)::bigint FROM outbox_events",
    )
    .await;
    assert_eq!(max_retries, 0, "no event was charged for the outage");
    assert_eq!(
        scalar(
            &sales,
            "SELECT count(*) FROM outbox_events WHERE status = 'FAILED'"
        )
        .await,
        0
    );
    for id in &ids {
        let applied: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM inbox WHERE aggregate_id = $1 AND event_type = 'ORDER_CREATED'",
        )
        .bind(id)
        .fetch_one(&product)
        .await
        .unwrap();
        assert_eq!(applied, 1);
        let status: String =
            sqlx::query_scalar("SELECT status FROM reservations WHERE order_id = $1")
                .bind(id)
                .fetch_one(&product)
                .await
                .unwrap();
        assert_eq!(status, "COMMITTED");
    }
    let (on_hand, reserved): (i32, i32) =
        sqlx::query_as("SELECT stock_on_hand, reserved FROM products WHERE id = 'SKU-HEADSET'")
            .fetch_one(&product)
            .await
            .unwrap();
    assert_eq!(
        (on_hand, reserved),
        (150 - ids.len() as i32, 0),
        "each order took its unit once"
    );
    sales.close().await;
    product.close().await;
    assert!(stack.shutdown().await);
}

#[tokio::test]
async fn a_crash_between_publish_and_mark_republishes_and_applies_once() {
    let mut stack = Stack::start_with(StackOptions {
        broker: true,
        sales_env: vec![("SALES_OUTBOX_FAULT_PAUSE_BEFORE_MARK_MS", "3000".into())],
        ..StackOptions::default()
    })
    .await;
    let (sales, product) = (stack.db("sales").await, stack.db("product").await);
    let order = place(&stack.sales_api(), "crash").await;
    // Published (product applied it) but not yet marked SENT.
    wait_for(&product, ORDER_CREATED_IN_INBOX, 1, Duration::from_secs(20)).await;
    let unsent = scalar(
        &sales,
        "SELECT count(*) FROM outbox_events WHERE status = 'PENDING'",
    )
    .await;
    assert!(unsent >= 1, "the relay is paused before marking");
    stack.sales.kill().await;

    stack
        .sales
        .set_env("SALES_OUTBOX_FAULT_PAUSE_BEFORE_MARK_MS", "0");
    stack.sales.start().await;
    wait_for(
        &sales,
        "SELECT count(*) FROM outbox_events WHERE status <> 'SENT'",
        0,
        Duration::from_secs(30),
    )
    .await;
    // The republished ORDER_CREATED reaches product again and changes nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE aggregate_id = $1")
        .bind(order.id)
        .fetch_one(&product)
        .await
        .unwrap();
    assert_eq!(applied, 1, "the inbox holds the event once");
    let (on_hand, reserved): (i32, i32) =
        sqlx::query_as("SELECT stock_on_hand, reserved FROM products WHERE id = 'SKU-HEADSET'")
            .fetch_one(&product)
            .await
            .unwrap();
    assert_eq!((on_hand, reserved), (149, 0));
    sales.close().await;
    product.close().await;
    assert!(stack.shutdown().await);
}

/// Records every event id an extra queue on the topic receives.
#[derive(Clone, Default)]
struct Tally(Arc<Mutex<HashMap<Uuid, usize>>>);

impl Handler for Tally {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        *self.0.lock().unwrap().entry(envelope.event_id).or_default() += 1;
        Ok(())
    }
}

/// The SDK configuration of the test process (scripts/test exports the AWS variables).
async fn sdk() -> aws_config::SdkConfig {
    assert!(
        std::env::var("AWS_ENDPOINT_URL").is_ok(),
        "AWS_ENDPOINT_URL is not set: run the tests with scripts/test (it starts LocalStack)"
    );
    messaging::aws::sdk_config().await
}

#[tokio::test]
async fn two_relays_on_one_database_publish_each_event_once() {
    let stack = Stack::start_with(StackOptions {
        broker: true,
        sales_env: vec![("SALES_OUTBOX_BATCH_SIZE", "10".into())],
        ..StackOptions::default()
    })
    .await;
    let sdk = sdk().await;
    // An extra queue on this stack's topic sees every published message.
    let audit_queue = format!("audit-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let provisioned = messaging::provision(
        &sdk,
        &messaging::Topology {
            topic_name: stack.topic_name.clone(),
            queues: vec![messaging::QueueSpec {
                name: audit_queue.clone(),
                event_types: vec![],
                excluded_statuses: vec![],
                max_receive_count: 5,
                visibility_timeout_secs: 30,
            }],
        },
    )
    .await
    .unwrap();
    let mut second = stack.sales.another("second", "SALES_", &stack.log_dir);
    second.start().await;

    let sales = stack.db("sales").await;
    let bases = [stack.sales.base_url(), second.base_url()];
    let orders = futures_like_join(&bases, 40).await;
    wait_for(
        &sales,
        "SELECT count(*) FROM outbox_events WHERE status <> 'SENT'",
        0,
        Duration::from_secs(60),
    )
    .await;
    let total = scalar(&sales, "SELECT count(*) FROM outbox_events").await;
    assert!(
        total >= 80,
        "ORDER_CREATED and DELIVERY_INITIATED for {orders} orders: {total}"
    );

    let consumer = messaging::Consumer::new(
        &sdk,
        messaging::ConsumerConfig {
            queue_url: provisioned.queue_urls[&audit_queue].clone(),
            wait_time_secs: 1,
            max_messages: 10,
            visibility_timeout_secs: 30,
            extend_after: Duration::from_secs(20),
            gather: Duration::ZERO,
        },
    );
    let tally = Tally::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (tally.0.lock().unwrap().len() as i64) < total {
        assert!(
            Instant::now() < deadline,
            "not every event reached the audit queue"
        );
        consumer.poll_once(&tally).await.unwrap();
    }
    // Anything published twice would be in the queue by now too.
    for _ in 0..3 {
        consumer.poll_once(&tally).await.unwrap();
    }
    let seen = tally.0.lock().unwrap().clone();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(seen.len() as i64, total);
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    second.stop().await;
    sales.close().await;
    assert!(stack.shutdown().await);
}

/// Places `n` orders, alternating between the given sales instances.
async fn futures_like_join(bases: &[String], n: usize) -> usize {
    let clients: Vec<SalesClient> = bases.iter().map(SalesClient::new).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let sales = clients[i % clients.len()].clone();
        tasks.spawn(async move { place(&sales, &format!("r{i}")).await });
    }
    let mut placed = 0;
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
        placed += 1;
    }
    placed
}

#[tokio::test]
async fn a_poison_message_ends_in_the_dlq_without_blocking_others() {
    let stack = Stack::start_with(StackOptions {
        broker: true,
        ..StackOptions::default()
    })
    .await;
    let sdk = sdk().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = sqs
        .get_queue_url()
        .queue_name(&stack.queue_name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_url = sqs
        .get_queue_url()
        .queue_name(format!("{}-dlq", stack.queue_name))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body("this is not an event")
        .send()
        .await
        .unwrap();
    let product = stack.db("product").await;
    let order = place(&stack.sales_api(), "after-poison").await;
    wait_for(&product, ORDER_CREATED_IN_INBOX, 1, Duration::from_secs(30)).await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE aggregate_id = $1")
        .bind(order.id)
        .fetch_one(&product)
        .await
        .unwrap();
    assert_eq!(
        applied, 1,
        "the good event was applied while the poison one waited"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .unwrap();
        let in_dlq: i64 = attrs
            .attributes()
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if in_dlq == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the poison message did not reach the DLQ"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    product.close().await;
    assert!(stack.shutdown().await);
}

#[tokio::test]
async fn dead_letters_are_replayed_by_an_operator_and_delivered() {
    let stack = Stack::start_with(StackOptions {
        broker: true,
        broker_proxy: true,
        // The outage below opens the broker breaker: a short reset, not 30 s, after it.
        sales_env: vec![("SALES_BREAKER_BROKER_RESET_TIMEOUT_MS", "500".into())],
        ..StackOptions::default()
    })
    .await;
    let http = reqwest::Client::new();
    let (sales, product) = (stack.db("sales").await, stack.db("product").await);
    let base = stack.sales.base_url();
    let proxy = stack.broker_proxy.as_ref().unwrap();
    proxy.set_down(true);
    for i in 0..3 {
        place(&stack.sales_api(), &format!("dl{i}")).await;
    }
    // Only the broker's refusals of an entry make a dead letter, which the emulator
    // cannot be made to undo (the relay's own test proves that path on a chosen clock:
    // services/sales/tests/it/relaying.rs). These rows are marked as the relay marks a
    // dead letter, to prove what staff can do with one.
    sqlx::query(
        "UPDATE outbox_events SET status = 'FAILED', retry_count = 5, first_refused_at = now(),
                last_error = 'InvalidParameter: refused by the broker'
         WHERE status = 'PENDING'",
    )
    .execute(&sales)
    .await
    .unwrap();
    let failed_count = scalar(
        &sales,
        "SELECT count(*) FROM outbox_events WHERE status = 'FAILED'",
    )
    .await;
    assert!(failed_count >= 6);

    let anonymous = http
        .get(format!("{base}/outbox/failed"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let listed: Vec<Value> = http
        .get(format!("{base}/outbox/failed"))
        .bearer_auth(system_tests::STAFF_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len() as i64, failed_count);
    assert!(
        listed
            .iter()
            .all(|e| e["last_error"].is_string() && e["retry_count"] == 5)
    );

    // Discard one (with a reason), replay the rest once the broker is back.
    let discarded = listed
        .iter()
        .find(|e| e["event_type"] == "DELIVERY_INITIATED")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let no_reason = http
        .post(format!("{base}/outbox/failed/{discarded}/discard"))
        .bearer_auth(system_tests::STAFF_TOKEN)
        .json(&json!({"reason": " "}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_reason.status(), 422);
    // The operator acts with her own account; a name the client supplies is ignored.
    stack
        .sales
        .command(
            &["staff", "add", "ops-alice"],
            &[("SALES_STAFF_SECRET", "ops-alice-secret-123")],
        )
        .await;
    let discard = http
        .post(format!("{base}/outbox/failed/{discarded}/discard"))
        .bearer_auth("ops-alice:ops-alice-secret-123")
        .header("X-Staff-Member", "mallory")
        .json(&json!({"reason": "delivery event not needed downstream"}))
        .send()
        .await
        .unwrap();
    assert_eq!(discard.status(), 200);
    proxy.set_down(false);
    let replayed: Value = http
        .post(format!("{base}/outbox/failed/replay"))
        .bearer_auth("ops-alice:ops-alice-secret-123")
        .header("X-Staff-Member", "mallory")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["count"].as_i64().unwrap(), failed_count - 1);
    wait_for(
        &sales,
        "SELECT count(*) FROM outbox_events WHERE status IN ('PENDING', 'FAILED')",
        0,
        Duration::from_secs(30),
    )
    .await;
    wait_for(&product, ORDER_CREATED_IN_INBOX, 3, Duration::from_secs(30)).await;
    let audits: Vec<(String, String)> =
        sqlx::query_as("SELECT action, actor FROM outbox_audit ORDER BY id")
            .fetch_all(&sales)
            .await
            .unwrap();
    assert_eq!(audits.len() as i64, failed_count);
    assert_eq!(audits[0], ("DISCARDED".to_owned(), "ops-alice".to_owned()));
    assert!(audits[1..].iter().all(|a| a.0 == "REPLAYED"));
    sales.close().await;
    product.close().await;
    assert!(stack.shutdown().await);
}

/// The reservation's commit rides on ORDER_CREATED: a broker outage longer than product's
/// reservation TTL (cut to 3 s here, 15 min by default) must not let recorded orders' stock
/// expire. Sales' reservation keeper renews them while their ORDER_CREATED waits.
#[tokio::test]
async fn a_broker_outage_longer_than_the_reservation_ttl_expires_no_recorded_order() {
    let stack = Stack::start_with(StackOptions {
        broker: true,
        broker_proxy: true,
        sales_env: vec![
            ("SALES_BREAKER_BROKER_RESET_TIMEOUT_MS", "500".into()),
            ("SALES_RESERVATION_RENEW_AFTER_MS", "1000".into()),
            ("SALES_RESERVATION_KEEPER_INTERVAL_MS", "500".into()),
        ],
        product_env: vec![
            ("PRODUCT_RESERVATION_TTL_MS", "3000".into()),
            ("PRODUCT_EXPIRY_SWEEP_INTERVAL_MS", "250".into()),
        ],
        ..StackOptions::default()
    })
    .await;
    let (sales, product) = (stack.db("sales").await, stack.db("product").await);
    let proxy = stack.broker_proxy.as_ref().unwrap();
    proxy.set_down(true);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(place(&stack.sales_api(), &format!("ttl{i}")).await.id);
    }
    // Three TTLs long.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(
        scalar(
            &product,
            "SELECT count(*) FROM reservations WHERE status = 'EXPIRED'"
        )
        .await,
        0,
        "no reservation of a recorded order expired during the outage"
    );
    proxy.set_down(false);
    wait_for(&product, ORDER_CREATED_IN_INBOX, 5, Duration::from_secs(30)).await;
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM inbox WHERE event_type = 'ORDER_CREATED' ORDER BY outcome",
    )
    .fetch_all(&product)
    .await
    .unwrap();
    assert_eq!(
        outcomes,
        vec!["COMMITTED"; 5],
        "committed as reserved, never retaken"
    );
    assert_eq!(
        scalar(&sales, "SELECT count(*) FROM manual_reviews").await,
        0,
        "no order needed a person"
    );
    let (on_hand, reserved): (i32, i32) =
        sqlx::query_as("SELECT stock_on_hand, reserved FROM products WHERE id = 'SKU-HEADSET'")
            .fetch_one(&product)
            .await
            .unwrap();
    assert_eq!((on_hand, reserved), (150 - 5, 0));
    let _ = ids;
    sales.close().await;
    product.close().await;
    assert!(stack.shutdown().await);
}
