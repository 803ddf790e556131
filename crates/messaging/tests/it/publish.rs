use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use messaging::{Envelope, Publisher, Topology, provision};
use uuid::Uuid;

use crate::common::{drain, envelope, publish_all, queue, sdk, single_queue, teardown, unique};

#[tokio::test]
async fn publish_25_events_arrive_exactly_once() {
    let sdk = sdk().await;
    let (topology, name) = single_queue("pub25", 5, 30);
    let provisioned = provision(&sdk, &topology).await.unwrap();

    let types = ["ORDER_CREATED", "ORDER_CONFIRMED", "ORDER_CANCELLED"];
    let events: Vec<Envelope> = (0..25).map(|i| envelope(types[i % types.len()])).collect();
    let publisher = Publisher::new(&sdk, &provisioned.topic_arn, 3);
    let results = publisher.publish(&events).await;
    assert_eq!(
        results.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        "one result per event, in input order"
    );
    for (id, result) in &results {
        assert!(result.is_ok(), "{id}: {result:?}");
    }

    let messages = drain(
        &sdk,
        &provisioned.queue_urls[&name],
        25,
        Duration::from_secs(30),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(messages.len(), 25, "each event exactly once");
    let sent: BTreeMap<Uuid, &Envelope> = events.iter().map(|e| (e.event_id, e)).collect();
    let mut seen = BTreeSet::new();
    for m in &messages {
        // Raw delivery: the body is the envelope itself, not an SNS notification.
        let got = Envelope::from_json(m.body().unwrap()).unwrap();
        assert!(seen.insert(got.event_id), "duplicate {}", got.event_id);
        assert_eq!(&got, sent[&got.event_id]);
        let attrs = m.message_attributes().unwrap();
        assert_eq!(
            attrs["event_type"].string_value(),
            Some(got.event_type.as_str())
        );
        assert_eq!(attrs["event_type"].data_type(), "String");
        assert_eq!(
            attrs["aggregate_id"].string_value(),
            Some(got.aggregate_id.to_string().as_str())
        );
        assert_eq!(
            attrs["traceparent"].string_value().map(str::to_owned),
            got.trace.get("traceparent").cloned()
        );
    }

    teardown(&sdk, &provisioned).await;
}

#[tokio::test]
async fn filter_policy_routes_by_event_type() {
    let sdk = sdk().await;
    let created = unique("filt-created");
    let all = unique("filt-all");
    let topology = Topology {
        topic_name: unique("filt"),
        queues: vec![
            queue(&created, &["ORDER_CREATED"], 5, 30),
            queue(&all, &[], 5, 30),
        ],
    };
    let provisioned = provision(&sdk, &topology).await.unwrap();

    let events = [
        envelope("ORDER_CREATED"),
        envelope("ORDER_CANCELLED"),
        envelope("ORDER_CREATED"),
        envelope("ORDER_CONFIRMED"),
        envelope("ORDER_CREATED_V2"),
    ];
    publish_all(&sdk, &provisioned.topic_arn, &events).await;

    let ids = |messages: &[aws_sdk_sqs::types::Message]| -> BTreeSet<Uuid> {
        messages
            .iter()
            .map(|m| Envelope::from_json(m.body().unwrap()).unwrap().event_id)
            .collect()
    };
    let to_all = drain(
        &sdk,
        &provisioned.queue_urls[&all],
        5,
        Duration::from_secs(20),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(ids(&to_all), events.iter().map(|e| e.event_id).collect());
    // Everything published has reached the unfiltered queue, so anything misrouted would be
    // in the filtered one by now too.
    let to_created = drain(
        &sdk,
        &provisioned.queue_urls[&created],
        2,
        Duration::from_secs(20),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(to_created.len(), 2);
    assert_eq!(
        ids(&to_created),
        BTreeSet::from([events[0].event_id, events[2].event_id])
    );

    teardown(&sdk, &provisioned).await;
}

#[tokio::test]
async fn a_missing_topic_makes_every_event_unavailable_not_refused() {
    let sdk = sdk().await;
    let topic_arn = format!("arn:aws:sns:us-east-1:000000000000:{}", unique("missing"));
    let events: Vec<Envelope> = (0..12).map(|_| envelope("ORDER_CREATED")).collect();
    let results = Publisher::new(&sdk, topic_arn, 2).publish(&events).await;
    assert_eq!(results.len(), 12);
    for ((id, result), event) in results.iter().zip(&events) {
        assert_eq!(*id, event.event_id);
        let error = result.as_ref().unwrap_err();
        assert!(!error.message.is_empty());
        // A topic or credential problem is the broker's, not the event's: no dead letter.
        assert_eq!(error.kind, messaging::FailureKind::Unavailable, "{error}");
    }
    assert!(
        Publisher::new(&sdk, "arn:x", 1)
            .publish(&[])
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_repeated_event_is_published_in_separate_batches() {
    let sdk = sdk().await;
    let (topology, name) = single_queue("pubdup", 5, 30);
    let provisioned = provision(&sdk, &topology).await.unwrap();
    let e = envelope("ORDER_CREATED");
    let other = envelope("ORDER_CONFIRMED");
    let results = Publisher::new(&sdk, &provisioned.topic_arn, 2)
        .publish(&[e.clone(), other.clone(), e.clone()])
        .await;
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    let messages = drain(
        &sdk,
        &provisioned.queue_urls[&name],
        3,
        Duration::from_secs(20),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(messages.len(), 3);
    teardown(&sdk, &provisioned).await;
}

#[tokio::test]
async fn entries_the_broker_refuses_are_told_apart_from_their_neighbours() {
    let sdk = sdk().await;
    let (topology, name) = single_queue("pubrefused", 5, 30);
    let provisioned = provision(&sdk, &topology).await.unwrap();
    let mut events: Vec<Envelope> = (0..6).map(|_| envelope("ORDER_CREATED")).collect();
    // An empty attribute value makes SNS refuse the whole call it is in: the publisher
    // sends that batch's entries one by one, so only this entry is refused.
    events[1].event_type = String::new();
    // Over SNS's 256 KiB: refused however it is sent.
    events[4].payload = serde_json::json!({ "blob": "x".repeat(300_000) });
    let results = Publisher::new(&sdk, &provisioned.topic_arn, 2)
        .publish(&events)
        .await;
    for (i, (id, result)) in results.iter().enumerate() {
        assert_eq!(*id, events[i].event_id);
        match i {
            1 | 4 => {
                let error = result.as_ref().unwrap_err();
                assert_eq!(error.kind, messaging::FailureKind::Refused, "{i}: {error}");
            }
            _ => assert!(result.is_ok(), "{i}: {result:?}"),
        }
    }
    let messages = drain(
        &sdk,
        &provisioned.queue_urls[&name],
        4,
        Duration::from_secs(20),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(messages.len(), 4, "the four good events arrived");
    teardown(&sdk, &provisioned).await;
}
