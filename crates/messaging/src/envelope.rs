//! The envelope every domain event travels in, and the message attributes copied
//! out of it so SNS can filter without parsing bodies.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Message attribute carrying [`Envelope::event_type`]; subscriptions filter on it.
pub const ATTR_EVENT_TYPE: &str = "event_type";
/// Message attribute carrying the payload's top-level `status` (when it has one as a
/// string), so a subscription can filter on the entity's new status.
pub const ATTR_STATUS: &str = "status";
/// Message attribute carrying [`Envelope::aggregate_id`].
pub const ATTR_AGGREGATE_ID: &str = "aggregate_id";
/// W3C trace-context keys of [`Envelope::trace`] that are also copied to message attributes.
///
/// Only these: SQS accepts at most 10 attributes per message, and the body carries the whole
/// map anyway.
pub const TRACE_ATTRIBUTE_KEYS: [&str; 2] = ["traceparent", "tracestate"];

/// A domain event as published on the topic: the message body is its JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique id of the event (= the outbox row id); consumers deduplicate on it.
    pub event_id: Uuid,
    /// What happened, e.g. `ORDER_CREATED`; also the `event_type` message attribute.
    pub event_type: String,
    /// Kind of entity the event is about, e.g. `order`.
    pub aggregate_type: String,
    /// Id of that entity.
    pub aggregate_id: Uuid,
    /// Per-aggregate sequence number; consumers ignore events older than what they stored.
    pub aggregate_version: i32,
    /// When the change was committed.
    pub occurred_at: DateTime<Utc>,
    /// Version of the payload's schema for this `event_type`.
    pub schema_version: i32,
    /// Full state of the entity after the change, so readers never need to fetch it.
    pub payload: serde_json::Value,
    /// W3C trace context (`traceparent`, `tracestate`) of the transaction that caused the event.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trace: BTreeMap<String, String>,
}

impl Envelope {
    /// The message body.
    pub fn to_json(&self) -> String {
        // Serializing a struct of plain fields and a `Value` into a string cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("envelope serializes: {e}"))
    }

    /// Parses a message body.
    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }

    /// The String message attributes to send with this envelope, as (name, value) pairs:
    /// `event_type`, `aggregate_id`, `status` (the payload's top-level `status`, when it is
    /// a non-empty string) and the trace keys present with a non-empty value (SNS rejects
    /// empty attribute values).
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut attrs = vec![
            (ATTR_EVENT_TYPE, self.event_type.clone()),
            (ATTR_AGGREGATE_ID, self.aggregate_id.to_string()),
        ];
        if let Some(status) = self
            .payload
            .get("status")
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
        {
            attrs.push((ATTR_STATUS, status.to_owned()));
        }
        for key in TRACE_ATTRIBUTE_KEYS {
            if let Some(value) = self.trace.get(key).filter(|v| !v.is_empty()) {
                attrs.push((key, value.clone()));
            }
        }
        attrs
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sample() -> Envelope {
        Envelope {
            event_id: Uuid::now_v7(),
            event_type: "ORDER_CREATED".into(),
            aggregate_type: "order".into(),
            aggregate_id: Uuid::new_v4(),
            aggregate_version: 1,
            occurred_at: Utc::now(),
            schema_version: 1,
            payload: serde_json::json!({"status": "PENDING", "lines": [{"sku": "A", "qty": 2}]}),
            trace: BTreeMap::new(),
        }
    }

    #[test]
    fn round_trips_through_json() {
        let mut e = sample();
        assert_eq!(Envelope::from_json(&e.to_json()).unwrap(), e);
        e.trace.insert("traceparent".into(), "00-abc-def-01".into());
        assert_eq!(Envelope::from_json(&e.to_json()).unwrap(), e);
    }

    #[test]
    fn empty_trace_is_omitted_and_optional() {
        let e = sample();
        let json: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert!(json.get("trace").is_none());
        assert_eq!(json["event_type"], "ORDER_CREATED");
    }

    #[test]
    fn attributes_carry_type_aggregate_and_trace_keys() {
        let mut e = sample();
        e.trace.insert("traceparent".into(), "00-abc-def-01".into());
        e.trace.insert("tracestate".into(), String::new());
        e.trace.insert("baggage".into(), "k=v".into());
        let attrs = e.attributes();
        assert_eq!(
            attrs,
            vec![
                (ATTR_EVENT_TYPE, "ORDER_CREATED".to_string()),
                (ATTR_AGGREGATE_ID, e.aggregate_id.to_string()),
                (ATTR_STATUS, "PENDING".to_string()),
                ("traceparent", "00-abc-def-01".to_string()),
            ]
        );
    }
}
