use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{Message, QueueAttributeName};
use chrono::Utc;
use messaging::{Envelope, Provisioned, QueueSpec, Topology};
use tokio::time::Instant;
use uuid::Uuid;

pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";

/// The emulator's endpoint: `AWS_ENDPOINT_URL` if set, else LocalStack's default port on loopback.
pub fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_owned())
}

/// SDK configuration for the emulator, after checking that it answers for SQS and SNS; panics
/// with instructions if it does not.
pub async fn sdk() -> SdkConfig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "messaging=debug".into()),
        )
        .with_test_writer()
        .try_init();
    let endpoint = endpoint();
    let sdk = messaging::aws::emulator_sdk_config(&endpoint).await;
    let hint = "start it with scripts/ensure-localstack (health: curl -s http://127.0.0.1:4566/_localstack/health)";
    let sqs = aws_sdk_sqs::Client::new(&sdk)
        .list_queues()
        .max_results(1)
        .send();
    match tokio::time::timeout(Duration::from_secs(10), sqs).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!(
            "the SQS/SNS emulator (LocalStack) is not reachable at {endpoint}: {}; {hint}",
            DisplayErrorContext(e)
        ),
        Err(_) => panic!(
            "the SQS/SNS emulator (LocalStack) at {endpoint} did not answer SQS within 10 s; {hint}"
        ),
    }
    let sns = aws_sdk_sns::Client::new(&sdk).list_topics().send();
    match tokio::time::timeout(Duration::from_secs(10), sns).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!(
            "the emulator at {endpoint} answers SQS but not SNS: {}; {hint}",
            aws_sdk_sns::error::DisplayErrorContext(e)
        ),
        Err(_) => panic!("the emulator at {endpoint} did not answer SNS within 10 s; {hint}"),
    }
    sdk
}

/// A name no other test (or run) uses: `it-<label>-<uuid>`.
pub fn unique(label: &str) -> String {
    format!("it-{label}-{}", Uuid::new_v4().simple())
}

pub fn queue(
    name: &str,
    event_types: &[&str],
    max_receive_count: i32,
    visibility: i32,
) -> QueueSpec {
    QueueSpec {
        name: name.to_owned(),
        event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
        excluded_statuses: vec![],
        max_receive_count,
        visibility_timeout_secs: visibility,
    }
}

/// A topology of one queue (all event types) with a unique topic and queue.
pub fn single_queue(label: &str, max_receive_count: i32, visibility: i32) -> (Topology, String) {
    let name = unique(label);
    let topology = Topology {
        topic_name: unique(label),
        queues: vec![queue(&name, &[], max_receive_count, visibility)],
    };
    (topology, name)
}

pub fn envelope(event_type: &str) -> Envelope {
    Envelope {
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        aggregate_type: "order".to_owned(),
        aggregate_id: Uuid::new_v4(),
        aggregate_version: 1,
        occurred_at: Utc::now(),
        schema_version: 1,
        payload: serde_json::json!({ "status": "PENDING", "total_cents": 1250 }),
        trace: BTreeMap::from([(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )]),
    }
}

/// Publishes and asserts every event was accepted.
pub async fn publish_all(sdk: &SdkConfig, topic_arn: &str, events: &[Envelope]) {
    let publisher = messaging::Publisher::new(sdk, topic_arn, 4);
    for (id, result) in publisher.publish(events).await {
        if let Err(e) = result {
            panic!("publishing {id} failed: {e}");
        }
    }
}

/// Receives (and deletes) from `queue_url` until `expected` messages came or `timeout` passed,
/// then keeps receiving for `settle` more to catch extra (duplicate or misrouted) messages.
pub async fn drain(
    sdk: &SdkConfig,
    queue_url: &str,
    expected: usize,
    timeout: Duration,
    settle: Duration,
) -> Vec<Message> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let mut got = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut settle_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if settle_until.is_none() && (got.len() >= expected || now >= deadline) {
            settle_until = Some(now + settle);
        }
        if settle_until.is_some_and(|until| now >= until) {
            return got;
        }
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
        got.extend(out.messages.unwrap_or_default());
    }
}

pub async fn queue_attribute(sdk: &SdkConfig, queue_url: &str, name: QueueAttributeName) -> String {
    aws_sdk_sqs::Client::new(sdk)
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(name.clone())
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&name))
        .cloned()
        .unwrap_or_else(|| panic!("{name} missing for {queue_url}"))
}

/// Polls `check` every 200 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes what a test provisioned (best effort, so the emulator does not accumulate queues).
pub async fn teardown(sdk: &SdkConfig, provisioned: &Provisioned) {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    for url in provisioned
        .queue_urls
        .values()
        .chain(provisioned.dlq_urls.values())
    {
        let _ = sqs.delete_queue().queue_url(url).send().await;
    }
    let _ = aws_sdk_sns::Client::new(sdk)
        .delete_topic()
        .topic_arn(&provisioned.topic_arn)
        .send()
        .await;
}
