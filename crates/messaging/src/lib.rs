//! Domain events over SNS and SQS: the [`Envelope`] every event travels in, the
//! topology (one topic, filtered queues, a dead-letter queue each), a batching [`Publisher`] for
//! the outbox relay, and a polling [`Consumer`] that deletes a message only after its
//! [`Handler`] succeeded.
//!
//! Delivery is at least once and unordered; consumers deduplicate on `event_id` and ignore
//! stale `aggregate_version`s. Everything talks to the real AWS SDK, pointed at LocalStack by the
//! standard environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, credentials).
//!
//! # Layout
//! - [`envelope`]: [`Envelope`] (the message body, JSON) and the message attributes copied from
//!   it (`event_type` for filtering, `aggregate_id`, trace context).
//! - [`aws`]: [`aws::sdk_config`] from the environment, [`aws::emulator_sdk_config`] for tests.
//! - [`provision`]: idempotent creation of a [`Topology`] (topic, queues, DLQs, redrive and
//!   queue policies, raw-delivery subscriptions with filter policies).
//! - [`publish`]: [`Publisher`], SNS `PublishBatch` with several calls in flight and a result
//!   per event.
//! - [`consume`]: [`Consumer`] with a single step ([`Consumer::poll_once`]) and a loop
//!   ([`Consumer::run`]) that extends visibility for slow handlers and backs off while the
//!   broker is down.
//! - `trace_context`: the order's trace continued through the broker: each event is published in
//!   a `publish` span (parent: the context stored with the event) whose context travels as the
//!   `traceparent`/`tracestate` attributes; the consumer handles it in a child span.

pub mod aws;
pub mod consume;
pub mod envelope;
pub mod provision;
pub mod publish;
mod trace_context;

pub use consume::{
    Consumer, ConsumerConfig, Handler, HandlerError, HandlerFn, PollReport, handler_fn,
};
pub use envelope::Envelope;
pub use provision::{Provisioned, QueueSpec, Topology, provision};
pub use publish::{FailureKind, PublishError, Publisher};
