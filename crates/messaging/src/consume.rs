//! Consuming envelopes from an SQS queue: long polling, concurrent handling, delete after
//! success, visibility extension for slow handlers, and a loop that backs off while the broker
//! is down.
//!
//! Delivery is at least once: a message is deleted only after its handler returned `Ok`, so a
//! handler must be idempotent (dedup on `event_id`). A message that is not deleted becomes
//! visible again after the visibility timeout and, after the queue's `maxReceiveCount` receives,
//! moves to the dead-letter queue.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_config::SdkConfig;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
};
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::aws::queue_name_from_url;
use crate::envelope::{ATTR_EVENT_TYPE, Envelope, TRACE_ATTRIBUTE_KEYS};
use crate::trace_context;

/// Shortest interval between two visibility extensions of one message.
const MIN_EXTEND_AFTER: Duration = Duration::from_millis(100);
/// First and largest delay between receive attempts while receiving fails.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Pause after an empty receive when long polling is off, so the loop does not spin.
const EMPTY_POLL_PAUSE: Duration = Duration::from_millis(200);

/// How a [`Consumer`] polls its queue.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// URL of the queue to consume.
    pub queue_url: String,
    /// Long-poll wait per receive, in seconds (0..=20; default 10).
    pub wait_time_secs: i32,
    /// Most messages per receive (1..=10; default 10).
    pub max_messages: i32,
    /// Visibility timeout requested on receive and on each extension, in seconds (default 30).
    pub visibility_timeout_secs: i32,
    /// A handler still running after this gets its message's visibility extended
    /// (ChangeMessageVisibility to `visibility_timeout_secs`), again after each further
    /// `extend_after`. Keep it well under the visibility timeout (default 10 s). Minimum 100 ms.
    pub extend_after: Duration,
    /// After a receive that did not fill a batch, the next receive waits until this long after
    /// it (default zero: at once), so that what arrives meanwhile is received and deleted in one
    /// request each rather than one pair per message. Costs a message that arrives in the pause
    /// up to this much latency; a full batch is followed by the next receive at once.
    pub gather: Duration,
}

impl ConsumerConfig {
    /// The defaults for `queue_url`: 10 s long poll, 10 messages, 30 s visibility extended
    /// every 10 s.
    pub fn new(queue_url: impl Into<String>) -> Self {
        Self {
            queue_url: queue_url.into(),
            wait_time_secs: 10,
            max_messages: 10,
            visibility_timeout_secs: 30,
            extend_after: Duration::from_secs(10),
            gather: Duration::ZERO,
        }
    }
}

/// Why a handler did not process an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Not processed now; the message becomes visible again and, after the queue's max
    /// receives, goes to the DLQ.
    #[error("{0}")]
    Retry(String),
}

impl HandlerError {
    /// [`HandlerError::Retry`] with `reason`'s text.
    pub fn retry(reason: impl std::fmt::Display) -> Self {
        Self::Retry(reason.to_string())
    }
}

/// Processes one event. Must be idempotent: the same `event_id` can arrive more than once.
pub trait Handler: Send + Sync + 'static {
    /// Handles `envelope`; `Ok` deletes the message.
    fn handle(&self, envelope: Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A [`Handler`] made from an async closure; see [`handler_fn`].
#[derive(Clone)]
pub struct HandlerFn<F>(F);

/// Wraps `f` (an `Fn(Envelope) -> impl Future<Output = Result<(), HandlerError>>`) as a
/// [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    HandlerFn(f)
}

impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Envelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(&self, envelope: Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (self.0)(envelope)
    }
}

/// What one [`Consumer::poll_once`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollReport {
    /// Messages received.
    pub received: usize,
    /// Messages whose handler returned `Ok` (deleted, unless the delete failed: logged).
    pub handled: usize,
    /// Messages whose handler returned an error or panicked (left on the queue).
    pub failed: usize,
    /// Messages whose body is not an [`Envelope`] (left on the queue, for the DLQ).
    pub malformed: usize,
}

enum Outcome {
    Handled,
    Failed,
    Malformed,
}

/// Consumes one queue. Cheap to clone (the SDK client is shared).
#[derive(Clone)]
pub struct Consumer {
    sqs: aws_sdk_sqs::Client,
    config: Arc<ConsumerConfig>,
    queue: Arc<str>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer of `config.queue_url`.
    /// The consumer of one queue subscribed to `topic_name`: with `provision`, creates the
    /// topic, the queue, its DLQ and the filtered subscription if missing (else looks the
    /// queue up); receives up to 10 messages per long poll of `wait_time_secs`, and extends a
    /// slow handler's visibility after half of the queue's timeout.
    pub async fn subscribed(
        sdk: &SdkConfig,
        topic_name: &str,
        queue: crate::QueueSpec,
        provision: bool,
        wait_time_secs: i32,
    ) -> anyhow::Result<Self> {
        let visibility_timeout_secs = queue.visibility_timeout_secs;
        let queue_url = if provision {
            let name = queue.name.clone();
            let topology = crate::Topology {
                topic_name: topic_name.to_owned(),
                queues: vec![queue],
            };
            crate::provision(sdk, &topology)
                .await
                .with_context(|| format!("provisioning the queue {name}"))?
                .queue_urls
                .remove(&name)
                .context("the provisioned queue has no URL")?
        } else {
            crate::provision::queue_url(sdk, &queue.name).await?
        };
        Ok(Self::new(
            sdk,
            ConsumerConfig {
                queue_url,
                wait_time_secs,
                max_messages: 10,
                visibility_timeout_secs,
                extend_after: Duration::from_secs(
                    (u64::try_from(visibility_timeout_secs).unwrap_or(0) / 2).max(1),
                ),
                gather: Duration::ZERO,
            },
        ))
    }

    /// The same consumer with [`ConsumerConfig::gather`] set to `gather`.
    #[must_use]
    pub fn gathering(mut self, gather: Duration) -> Self {
        Arc::make_mut(&mut self.config).gather = gather;
        self
    }

    pub fn new(sdk: &SdkConfig, config: ConsumerConfig) -> Self {
        let queue = Arc::from(queue_name_from_url(&config.queue_url));
        Self {
            sqs: aws_sdk_sqs::Client::new(sdk),
            config: Arc::new(config),
            queue,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// One receive (long poll) and handling of what came: each message handled concurrently;
    /// deleted (DeleteMessageBatch) only after its handler returned Ok; a malformed body is
    /// logged (warn) and left for redrive to the DLQ (not deleted); a handler error is logged
    /// and left too. Errs only if the receive fails.
    pub async fn poll_once<H: Handler>(&self, handler: &H) -> anyhow::Result<PollReport> {
        let messages = self.receive().await?;
        Ok(self.handle_messages(handler, messages).await)
    }

    /// Polls until `token` is cancelled (finishing in-flight messages), backing off on receive
    /// errors (e.g. broker down) with exponential delay up to ~5 s.
    ///
    /// Cancellation interrupts a pending receive (messages SQS handed out in that instant stay
    /// invisible until their visibility timeout) but never a handler.
    pub async fn run<H: Handler>(&self, handler: H, token: CancellationToken) {
        tracing::info!(queue = %self.queue, "consumer started");
        let mut failures = 0u32;
        loop {
            let received = tokio::select! {
                biased;
                () = token.cancelled() => break,
                received = self.receive() => received,
            };
            let received_at = tokio::time::Instant::now();
            let pause = match received {
                Ok(messages) => {
                    failures = 0;
                    if messages.is_empty() {
                        (self.config.wait_time_secs <= 0).then_some(EMPTY_POLL_PAUSE)
                    } else {
                        let partial =
                            messages.len() < usize::try_from(self.batch_size()).unwrap_or(10);
                        let report = self.handle_messages(&handler, messages).await;
                        tracing::debug!(queue = %self.queue, ?report, "polled");
                        partial
                            .then(|| {
                                (received_at + self.config.gather)
                                    .saturating_duration_since(tokio::time::Instant::now())
                            })
                            .filter(|pause| !pause.is_zero())
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = resilience::backoff::jittered(backoff_delay(failures));
                    tracing::warn!(
                        queue = %self.queue,
                        failures,
                        delay_ms = delay.as_millis() as u64,
                        error = format!("{error:#}"),
                        "receive failed; backing off"
                    );
                    Some(delay)
                }
            };
            if let Some(pause) = pause {
                tokio::select! {
                    biased;
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
        tracing::info!(queue = %self.queue, "consumer stopped");
    }

    /// Approximate number of messages in a queue (for metrics/tests): ApproximateNumberOfMessages
    /// + NotVisible.
    pub async fn queue_depth(&self, queue_url: &str) -> anyhow::Result<i64> {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .with_context(|| format!("getting the depth of queue {queue_url}"))?;
        let attributes = out.attributes();
        let count = |name: QueueAttributeName| -> anyhow::Result<i64> {
            let value = attributes
                .and_then(|a| a.get(&name))
                .with_context(|| format!("{name} missing for queue {queue_url}"))?;
            value
                .parse::<i64>()
                .with_context(|| format!("{name} of queue {queue_url} is not a number: {value:?}"))
        };
        Ok(count(QueueAttributeName::ApproximateNumberOfMessages)?
            + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)?)
    }

    /// Most messages one receive asks for (SQS allows 1..=10).
    fn batch_size(&self) -> i32 {
        self.config.max_messages.clamp(1, 10)
    }

    async fn receive(&self) -> anyhow::Result<Vec<Message>> {
        crate::aws::count_request("ReceiveMessage");
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.config.queue_url)
            .max_number_of_messages(self.batch_size())
            .wait_time_seconds(self.config.wait_time_secs.clamp(0, 20))
            .visibility_timeout(self.config.visibility_timeout_secs)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .with_context(|| format!("receiving from queue {}", self.queue))?;
        Ok(out.messages.unwrap_or_default())
    }

    async fn handle_messages<H: Handler>(&self, handler: &H, messages: Vec<Message>) -> PollReport {
        let mut report = PollReport {
            received: messages.len(),
            ..PollReport::default()
        };
        let outcomes =
            futures_util::future::join_all(messages.iter().map(|m| self.handle_one(handler, m)))
                .await;
        let mut to_delete = Vec::new();
        for (message, outcome) in messages.iter().zip(outcomes) {
            match outcome {
                Outcome::Handled => {
                    report.handled += 1;
                    to_delete.push(message);
                }
                Outcome::Failed => report.failed += 1,
                Outcome::Malformed => report.malformed += 1,
            }
        }
        self.delete(&to_delete).await;
        report
    }

    async fn handle_one<H: Handler>(&self, handler: &H, message: &Message) -> Outcome {
        let message_id = message.message_id().unwrap_or_default();
        let receive_count = message
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .map(String::as_str)
            .unwrap_or("?");
        let envelope = match message.body().map(Envelope::from_json) {
            Some(Ok(envelope)) => envelope,
            Some(Err(error)) => {
                let event_type = message
                    .message_attributes()
                    .and_then(|a| a.get(ATTR_EVENT_TYPE))
                    .and_then(|v| v.string_value())
                    .unwrap_or_default();
                tracing::warn!(
                    queue = %self.queue,
                    message_id,
                    event_type,
                    receive_count,
                    %error,
                    "malformed message body; leaving it for the dead-letter queue"
                );
                return Outcome::Malformed;
            }
            None => {
                tracing::warn!(queue = %self.queue, message_id, receive_count, "message without a body; leaving it for the dead-letter queue");
                return Outcome::Malformed;
            }
        };
        let Some(receipt_handle) = message.receipt_handle() else {
            tracing::warn!(queue = %self.queue, message_id, "message without a receipt handle; not handled");
            return Outcome::Failed;
        };

        let span = tracing::info_span!(
            "handle_event",
            queue = %self.queue,
            event_id = %envelope.event_id,
            event_type = %envelope.event_type,
            aggregate_id = %envelope.aggregate_id,
            receive_count,
            otel.name = format!("{} process", envelope.event_type),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "aws_sqs",
            messaging.destination.name = %self.queue,
        );
        trace_context::set_parent(&span, carried_context(message, &envelope));
        let failed = span.clone();
        let outcome = async {
            let handled = AssertUnwindSafe(handler.handle(envelope)).catch_unwind();
            let result = tokio::select! {
                result = handled => result,
                never = self.keep_invisible(receipt_handle) => match never {},
            };
            match result {
                Ok(Ok(())) => Outcome::Handled,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "handler failed; the message will be redelivered");
                    Outcome::Failed
                }
                Err(panic) => {
                    let panic = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic, "handler panicked; the message will be redelivered");
                    Outcome::Failed
                }
            }
        }
        .instrument(span)
        .await;
        if matches!(outcome, Outcome::Failed) {
            failed.record("otel.status_code", "error");
        }
        outcome
    }

    /// Extends the message's visibility every `extend_after`, for as long as it is polled.
    async fn keep_invisible(&self, receipt_handle: &str) -> std::convert::Infallible {
        let every = self.config.extend_after.max(MIN_EXTEND_AFTER);
        loop {
            tokio::time::sleep(every).await;
            crate::aws::count_request("ChangeMessageVisibility");
            let extended = self
                .sqs
                .change_message_visibility()
                .queue_url(&self.config.queue_url)
                .receipt_handle(receipt_handle)
                .visibility_timeout(self.config.visibility_timeout_secs)
                .send()
                .await;
            match extended {
                Ok(_) => tracing::debug!(
                    timeout_secs = self.config.visibility_timeout_secs,
                    "message visibility extended"
                ),
                Err(e) => tracing::warn!(
                    error = %DisplayErrorContext(&e),
                    "could not extend message visibility; it may be delivered again"
                ),
            }
        }
    }

    async fn delete(&self, messages: &[&Message]) {
        for chunk in messages.chunks(10) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, m) in chunk.iter().enumerate() {
                let entry = DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .set_receipt_handle(m.receipt_handle().map(str::to_owned))
                    .build();
                match entry {
                    Ok(entry) => entries.push(entry),
                    Err(e) => {
                        tracing::warn!(queue = %self.queue, error = %e, "cannot delete message")
                    }
                }
            }
            if entries.is_empty() {
                continue;
            }
            crate::aws::count_request("DeleteMessageBatch");
            let deleted = self
                .sqs
                .delete_message_batch()
                .queue_url(&self.config.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            match deleted {
                Ok(out) => {
                    for failed in out.failed() {
                        let message_id = failed
                            .id()
                            .parse::<usize>()
                            .ok()
                            .and_then(|i| chunk.get(i))
                            .and_then(|m| m.message_id())
                            .unwrap_or_default();
                        tracing::warn!(
                            queue = %self.queue,
                            message_id,
                            code = failed.code(),
                            error = failed.message().unwrap_or_default(),
                            "handled message not deleted; it will be delivered again"
                        );
                    }
                }
                Err(e) => tracing::warn!(
                    queue = %self.queue,
                    messages = chunk.len(),
                    error = %DisplayErrorContext(&e),
                    "DeleteMessageBatch failed; handled messages will be delivered again"
                ),
            }
        }
    }
}

/// The trace context a message continues: the publisher's, from the message attributes, or
/// else the one stored in the envelope.
fn carried_context(message: &Message, envelope: &Envelope) -> opentelemetry::Context {
    let attributes: BTreeMap<String, String> = TRACE_ATTRIBUTE_KEYS
        .iter()
        .filter_map(|key| {
            let value = message.message_attributes()?.get(*key)?.string_value()?;
            Some(((*key).to_owned(), value.to_owned()))
        })
        .collect();
    let cx = trace_context::from_map(&attributes);
    if trace_context::is_valid(&cx) {
        cx
    } else {
        trace_context::from_map(&envelope.trace)
    }
}

/// Delay before the next receive after `failures` consecutive failed ones: 100 ms doubling up
/// to 5 s.
pub fn backoff_delay(failures: u32) -> Duration {
    resilience::backoff::exponential(failures, BACKOFF_BASE, BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        let delays: Vec<u64> = (1..=8)
            .map(|n| backoff_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff_delay(0), Duration::from_millis(100));
        assert_eq!(backoff_delay(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn config_defaults() {
        let c = ConsumerConfig::new("http://x/queue/q");
        assert_eq!(
            (c.wait_time_secs, c.max_messages, c.visibility_timeout_secs),
            (10, 10, 30)
        );
        assert_eq!(c.extend_after, Duration::from_secs(10));
    }
}
