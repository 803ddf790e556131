use messaging::Envelope;
use messaging::envelope::ATTR_EVENT_TYPE;

use crate::common::envelope;

#[test]
fn envelope_json_round_trip() {
    let e = envelope("ORDER_CREATED");
    let json = e.to_json();
    assert_eq!(Envelope::from_json(&json).unwrap(), e);

    let mut without_trace = e.clone();
    without_trace.trace.clear();
    let json = without_trace.to_json();
    assert!(!json.contains("\"trace\""), "{json}");
    assert_eq!(Envelope::from_json(&json).unwrap(), without_trace);
}

#[test]
fn envelope_wire_format_is_stable() {
    let json = r#"{
        "event_id": "0190a5d2-7c4e-7d2a-9c1b-2f3e4d5c6b7a",
        "event_type": "ORDER_CREATED",
        "aggregate_type": "order",
        "aggregate_id": "6c1f0e6a-3b2d-4e5f-8a9b-0c1d2e3f4a5b",
        "aggregate_version": 3,
        "occurred_at": "2026-01-02T03:04:05.678Z",
        "schema_version": 1,
        "payload": {"status": "CONFIRMED"}
    }"#;
    let e = Envelope::from_json(json).unwrap();
    assert_eq!(e.event_type, "ORDER_CREATED");
    assert_eq!(e.aggregate_version, 3);
    assert_eq!(e.payload["status"], "CONFIRMED");
    assert!(e.trace.is_empty());
    assert_eq!(e.occurred_at.to_rfc3339(), "2026-01-02T03:04:05.678+00:00");

    assert!(Envelope::from_json("not json").is_err());
    assert!(Envelope::from_json(r#"{"event_type": "X"}"#).is_err());
    assert_eq!(ATTR_EVENT_TYPE, "event_type");
}
