//! Publishing envelopes to the SNS topic in batches.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aws_config::SdkConfig;
use aws_sdk_sns::error::DisplayErrorContext;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use futures_util::StreamExt;
use uuid::Uuid;

use crate::envelope::{Envelope, TRACE_ATTRIBUTE_KEYS};
use crate::trace_context;

/// Most entries SNS accepts in one `PublishBatch` call.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// Most bytes (bodies plus attributes) SNS accepts in one `PublishBatch` call, and in one message.
pub const MAX_BATCH_BYTES: usize = 262_144;

/// Why one event was not published. Publishing is safe to retry: consumers deduplicate on
/// `event_id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    /// Whose fault it was: the broker (or the way to it), or this event.
    pub kind: FailureKind,
    pub message: String,
}

/// Whose fault a failed publish was. Only [`FailureKind::Refused`] says anything about the
/// event itself; the outbox charges only those against a row's dead-letter budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The broker could not be asked or did not answer about this entry: connection refused,
    /// timeout, a 5xx, throttling, a credential or topic problem, or a per-entry failure SNS
    /// marks as its own fault. Retrying later may succeed; the event is not to blame.
    Unavailable,
    /// The broker refused this entry itself: a per-entry failure SNS marks as the sender's
    /// fault, or a request whose content it refused (an entry too large, an invalid
    /// attribute). Retrying the same event is likely to fail again.
    Refused,
}

impl PublishError {
    /// The broker could not be asked, or failed.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Unavailable,
            message: message.into(),
        }
    }

    /// The broker refused the entry.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Refused,
            message: message.into(),
        }
    }

    pub fn is_refused(&self) -> bool {
        self.kind == FailureKind::Refused
    }
}

/// How a failed `PublishBatch` call is to be read: refused for its content (an entry too
/// large, an invalid attribute), or the broker unavailable (timeouts, connection failures,
/// 5xx, throttling, and the credential, topic and KMS problems that are nobody's event's
/// fault).
fn classify_call(
    error: &aws_sdk_sns::error::SdkError<
        aws_sdk_sns::operation::publish_batch::PublishBatchError,
        aws_sdk_sns::config::http::HttpResponse,
    >,
) -> FailureKind {
    use aws_sdk_sns::{error::SdkError, operation::publish_batch::PublishBatchError as E};
    match error {
        // The request could not even be built from this content.
        SdkError::ConstructionFailure(_) => FailureKind::Refused,
        SdkError::ServiceError(service) => match service.err() {
            E::InvalidParameterException(_)
            | E::InvalidParameterValueException(_)
            | E::BatchRequestTooLongException(_)
            | E::BatchEntryIdsNotDistinctException(_)
            | E::InvalidBatchEntryIdException(_)
            | E::EmptyBatchRequestException(_)
            | E::TooManyEntriesInBatchRequestException(_)
            | E::ValidationException(_) => FailureKind::Refused,
            _ => FailureKind::Unavailable,
        },
        _ => FailureKind::Unavailable,
    }
}

/// Publishes envelopes to one topic. Cheap to clone (the SDK client is shared).
#[derive(Clone)]
pub struct Publisher {
    sns: aws_sdk_sns::Client,
    topic_arn: Arc<str>,
    max_in_flight: usize,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic_arn", &self.topic_arn)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// One entry ready to send: its index in the caller's slice, batch id, body and attributes.
struct Prepared {
    index: usize,
    id: String,
    body: String,
    attributes: Vec<(&'static str, String)>,
    size: usize,
}

impl Publisher {
    /// A publisher to `topic_arn` keeping at most `max_in_flight` (at least 1) calls in flight.
    ///
    /// The SDK's own retries are off: a failed entry is the caller's to retry (the
    /// outbox reschedules it), so a broker outage costs one quick failure per call
    /// instead of several slow ones, and a circuit breaker sees it at once.
    pub fn new(sdk: &SdkConfig, topic_arn: impl Into<String>, max_in_flight: usize) -> Self {
        let config = aws_sdk_sns::config::Builder::from(sdk)
            .retry_config(aws_sdk_sns::config::retry::RetryConfig::disabled())
            .build();
        Self {
            sns: aws_sdk_sns::Client::from_conf(config),
            topic_arn: Arc::from(topic_arn.into()),
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// The topic this publisher sends to.
    pub fn topic_arn(&self) -> &str {
        &self.topic_arn
    }

    /// Publishes `events` with SNS PublishBatch (≤ 10 entries per call, entry Id = event_id
    /// simple string), up to `max_in_flight` calls concurrently. Returns one result per event, in
    /// the input order. A failed call fails all its entries; a partially failed batch fails only
    /// the failed entries. Message body = envelope JSON; attributes: event_type, aggregate_id,
    /// trace keys.
    ///
    /// Batches also stay under SNS's 256 KiB per call, and never hold the same `event_id` twice
    /// (a repeated event goes in a later batch, so it is published twice).
    ///
    /// Each event is published in a `publish` span (a child of the context stored in
    /// [`Envelope::trace`]), and that span's context is sent as the `traceparent`/`tracestate`
    /// attributes, so the consumer continues the event's trace.
    pub async fn publish(&self, events: &[Envelope]) -> Vec<(Uuid, Result<(), PublishError>)> {
        let spans: Vec<tracing::Span> = events.iter().map(|e| self.publish_span(e)).collect();
        let mut results: Vec<Option<Result<(), PublishError>>> = vec![None; events.len()];
        let batches = plan_batches(prepare(events, &spans));
        let mut outcomes = futures_util::stream::iter(batches)
            .map(|batch| self.send_batch(events, batch))
            .buffer_unordered(self.max_in_flight);
        while let Some(outcome) = outcomes.next().await {
            for (index, result) in outcome {
                results[index] = Some(result);
            }
        }
        events
            .iter()
            .zip(results)
            .zip(&spans)
            .map(|((e, r), span)| {
                let r = r.unwrap_or_else(|| Err(PublishError::unavailable("not attempted")));
                if let Err(error) = &r {
                    span.record("otel.status_code", "error");
                    span.record("error", tracing::field::display(error));
                }
                (e.event_id, r)
            })
            .collect()
    }

    /// The producer span of one event: a child of the context the event was written in.
    fn publish_span(&self, event: &Envelope) -> tracing::Span {
        let span = tracing::info_span!(
            "publish",
            event_id = %event.event_id,
            event_type = %event.event_type,
            aggregate_id = %event.aggregate_id,
            error = tracing::field::Empty,
            otel.name = format!("{} publish", event.event_type),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "aws_sns",
            messaging.destination.name = %self.topic_arn,
        );
        trace_context::set_parent(&span, trace_context::from_map(&event.trace));
        span
    }

    /// Sends one batch. A call refused for its content is tried again entry by entry, so the
    /// refusal lands on the entry at fault, not on its neighbours.
    async fn send_batch(
        &self,
        events: &[Envelope],
        batch: Vec<Prepared>,
    ) -> Vec<(usize, Result<(), PublishError>)> {
        let outcome = self.send_once(events, &batch).await;
        let refused_whole = batch.len() > 1
            && !outcome.is_empty()
            && outcome.iter().all(|(_, r)| {
                r.as_ref()
                    .is_err_and(|e| e.is_refused() && e.message.starts_with(CALL_REFUSED))
            });
        if !refused_whole {
            return outcome;
        }
        tracing::warn!(topic = %self.topic_arn, entries = batch.len(),
            "PublishBatch refused for its content; sending its entries one by one");
        let mut outcome = Vec::with_capacity(batch.len());
        for single in batch {
            outcome.extend(self.send_once(events, std::slice::from_ref(&single)).await);
        }
        outcome
    }

    /// One `PublishBatch` call with `batch`, a result per entry.
    async fn send_once(
        &self,
        events: &[Envelope],
        batch: &[Prepared],
    ) -> Vec<(usize, Result<(), PublishError>)> {
        let mut outcome = Vec::with_capacity(batch.len());
        let mut entries = Vec::with_capacity(batch.len());
        let mut index_by_id = HashMap::with_capacity(batch.len());
        for p in batch {
            match build_entry(p) {
                Ok(entry) => {
                    entries.push(entry);
                    index_by_id.insert(p.id.clone(), p.index);
                }
                Err(e) => outcome.push((p.index, Err(e))),
            }
        }
        if entries.is_empty() {
            return outcome;
        }

        crate::aws::count_request("PublishBatch");
        let sent = self
            .sns
            .publish_batch()
            .topic_arn(&*self.topic_arn)
            .set_publish_batch_request_entries(Some(entries))
            .send()
            .await;
        match sent {
            Err(e) => {
                let kind = classify_call(&e);
                let message = format!("{CALL_REFUSED}{}", DisplayErrorContext(&e));
                let error = PublishError {
                    kind,
                    message: if kind == FailureKind::Refused {
                        message
                    } else {
                        format!("PublishBatch failed: {}", DisplayErrorContext(&e))
                    },
                };
                tracing::warn!(
                    topic = %self.topic_arn,
                    entries = index_by_id.len(),
                    error = %error,
                    refused = error.is_refused(),
                    "PublishBatch call failed"
                );
                outcome.extend(index_by_id.into_values().map(|i| (i, Err(error.clone()))));
            }
            Ok(out) => {
                for ok in out.successful() {
                    if let Some(i) = ok.id().and_then(|id| index_by_id.remove(id)) {
                        outcome.push((i, Ok(())));
                    }
                }
                for failed in out.failed() {
                    if let Some(i) = index_by_id.remove(failed.id()) {
                        let message = format!(
                            "{}: {}",
                            failed.code(),
                            failed.message().unwrap_or("no message")
                        );
                        // SNS says whose fault it was: the entry's (sender) or its own.
                        let error = if failed.sender_fault() {
                            PublishError::refused(message)
                        } else {
                            PublishError::unavailable(message)
                        };
                        tracing::warn!(
                            event_id = %events[i].event_id,
                            event_type = %events[i].event_type,
                            sender_fault = failed.sender_fault(),
                            error = %error,
                            "event not published"
                        );
                        outcome.push((i, Err(error)));
                    }
                }
                // Entries the response does not mention (should not happen) are not known to be
                // published.
                outcome.extend(index_by_id.into_values().map(|i| {
                    (
                        i,
                        Err(PublishError::unavailable(
                            "no result for this entry in the PublishBatch response",
                        )),
                    )
                }));
            }
        }
        outcome
    }
}

/// Prefix of the message of a call refused as a whole for its content.
const CALL_REFUSED: &str = "PublishBatch refused: ";

/// The entries of `events`, whose trace attributes are the context of their publish `spans`
/// (the envelope's own when a span carries none).
fn prepare(events: &[Envelope], spans: &[tracing::Span]) -> Vec<Prepared> {
    events
        .iter()
        .zip(spans)
        .enumerate()
        .map(|(index, (e, span))| {
            let body = e.to_json();
            let mut attributes = e.attributes();
            let publish_trace = trace_context::span_map(span);
            // The propagator writes nothing for a span without a valid context.
            if publish_trace.contains_key("traceparent") {
                attributes.retain(|(k, _)| !TRACE_ATTRIBUTE_KEYS.contains(k));
                for key in TRACE_ATTRIBUTE_KEYS {
                    if let Some(value) = publish_trace.get(key).filter(|v| !v.is_empty()) {
                        attributes.push((key, value.clone()));
                    }
                }
            }
            // SNS counts attribute names, types and values towards the message size.
            let size = body.len()
                + attributes
                    .iter()
                    .map(|(k, v)| k.len() + "String".len() + v.len())
                    .sum::<usize>();
            Prepared {
                index,
                id: e.event_id.simple().to_string(),
                body,
                attributes,
                size,
            }
        })
        .collect()
}

/// Groups entries, in order, into batches of at most [`MAX_BATCH_ENTRIES`] entries and
/// [`MAX_BATCH_BYTES`] bytes with distinct ids. An entry too large on its own gets a batch of its
/// own (and SNS's refusal).
fn plan_batches(prepared: Vec<Prepared>) -> Vec<Vec<Prepared>> {
    let mut batches: Vec<Vec<Prepared>> = Vec::new();
    let mut current: Vec<Prepared> = Vec::new();
    let mut bytes = 0;
    let mut ids = HashSet::new();
    for p in prepared {
        let full = current.len() == MAX_BATCH_ENTRIES
            || bytes + p.size > MAX_BATCH_BYTES
            || ids.contains(&p.id);
        if full && !current.is_empty() {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
            ids.clear();
        }
        bytes += p.size;
        ids.insert(p.id.clone());
        current.push(p);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

fn build_entry(p: &Prepared) -> Result<PublishBatchRequestEntry, PublishError> {
    let mut entry = PublishBatchRequestEntry::builder()
        .id(&p.id)
        .message(&p.body);
    for (name, value) in &p.attributes {
        let value = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(|e| PublishError::refused(format!("attribute {name}: {e}")))?;
        entry = entry.message_attributes(*name, value);
    }
    entry
        .build()
        .map_err(|e| PublishError::refused(format!("batch entry: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(id: &str, size: usize) -> Prepared {
        Prepared {
            index: 0,
            id: id.into(),
            body: String::new(),
            attributes: vec![],
            size,
        }
    }

    fn shape(batches: &[Vec<Prepared>]) -> Vec<usize> {
        batches.iter().map(Vec::len).collect()
    }

    #[test]
    fn batches_hold_at_most_ten_entries() {
        let entries = (0..25).map(|i| prepared(&i.to_string(), 100)).collect();
        assert_eq!(shape(&plan_batches(entries)), vec![10, 10, 5]);
        assert!(plan_batches(Vec::new()).is_empty());
    }

    #[test]
    fn batches_stay_under_the_size_limit() {
        let entries = (0..5)
            .map(|i| prepared(&i.to_string(), MAX_BATCH_BYTES / 2))
            .collect();
        assert_eq!(shape(&plan_batches(entries)), vec![2, 2, 1]);
        let huge = vec![
            prepared("a", 10),
            prepared("b", MAX_BATCH_BYTES + 1),
            prepared("c", 10),
        ];
        assert_eq!(shape(&plan_batches(huge)), vec![1, 1, 1]);
    }

    #[test]
    fn a_repeated_id_starts_a_new_batch() {
        let entries = vec![
            prepared("a", 1),
            prepared("b", 1),
            prepared("a", 1),
            prepared("c", 1),
        ];
        assert_eq!(shape(&plan_batches(entries)), vec![2, 2]);
    }
}
