use std::collections::BTreeMap;

use aws_config::SdkConfig;
use aws_sdk_sqs::types::QueueAttributeName;
use messaging::{Topology, provision};

use crate::common::{queue, queue_attribute, sdk, teardown, unique};

/// Subscription attributes by queue ARN.
async fn subscriptions(
    sdk: &SdkConfig,
    topic_arn: &str,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let sns = aws_sdk_sns::Client::new(sdk);
    let listed = sns
        .list_subscriptions_by_topic()
        .topic_arn(topic_arn)
        .send()
        .await
        .unwrap();
    let mut by_endpoint = BTreeMap::new();
    for s in listed.subscriptions() {
        let attrs = sns
            .get_subscription_attributes()
            .subscription_arn(s.subscription_arn().unwrap())
            .send()
            .await
            .unwrap()
            .attributes()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>();
        let previous = by_endpoint.insert(s.endpoint().unwrap().to_owned(), attrs);
        assert!(
            previous.is_none(),
            "two subscriptions for {:?}",
            s.endpoint()
        );
    }
    by_endpoint
}

fn filter_of(attrs: &BTreeMap<String, String>) -> Option<serde_json::Value> {
    attrs
        .get("FilterPolicy")
        .filter(|p| !p.trim().is_empty())
        .map(|p| serde_json::from_str(p).unwrap())
}

#[tokio::test]
async fn provision_twice_is_idempotent() {
    let sdk = sdk().await;
    let created = unique("prov-created");
    let all = unique("prov-all");
    let topology = Topology {
        topic_name: unique("prov"),
        queues: vec![
            queue(&created, &["ORDER_CREATED"], 3, 20),
            queue(&all, &[], 5, 30),
        ],
    };

    let first = provision(&sdk, &topology).await.unwrap();
    let second = provision(&sdk, &topology).await.unwrap();
    assert_eq!(first, second);
    // Several processes starting at once.
    let (a, b) = tokio::join!(provision(&sdk, &topology), provision(&sdk, &topology));
    assert_eq!(a.unwrap(), first);
    assert_eq!(b.unwrap(), first);

    assert!(
        first
            .topic_arn
            .ends_with(&format!(":{}", topology.topic_name))
    );
    assert_eq!(first.queue_urls.keys().collect::<Vec<_>>(), {
        let mut names = vec![&created, &all];
        names.sort();
        names
    });
    assert!(first.queue_urls[&created].ends_with(&format!("/{created}")));
    assert!(first.dlq_urls[&created].ends_with(&format!("/{created}-dlq")));

    // Redrive and visibility as specified.
    let redrive: serde_json::Value = serde_json::from_str(
        &queue_attribute(
            &sdk,
            &first.queue_urls[&created],
            QueueAttributeName::RedrivePolicy,
        )
        .await,
    )
    .unwrap();
    let dlq_arn = queue_attribute(
        &sdk,
        &first.dlq_urls[&created],
        QueueAttributeName::QueueArn,
    )
    .await;
    assert_eq!(redrive["deadLetterTargetArn"], dlq_arn.as_str());
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "3"
    );
    assert_eq!(
        queue_attribute(
            &sdk,
            &first.queue_urls[&all],
            QueueAttributeName::VisibilityTimeout
        )
        .await,
        "30"
    );

    // One subscription per queue, raw delivery, filtered as specified.
    let subs = subscriptions(&sdk, &first.topic_arn).await;
    assert_eq!(subs.len(), 2, "{subs:#?}");
    let created_arn = queue_attribute(
        &sdk,
        &first.queue_urls[&created],
        QueueAttributeName::QueueArn,
    )
    .await;
    let all_arn =
        queue_attribute(&sdk, &first.queue_urls[&all], QueueAttributeName::QueueArn).await;
    assert_eq!(subs[&created_arn]["RawMessageDelivery"], "true");
    assert_eq!(subs[&all_arn]["RawMessageDelivery"], "true");
    assert_eq!(
        filter_of(&subs[&created_arn]),
        Some(serde_json::json!({ "event_type": ["ORDER_CREATED"] }))
    );
    assert_eq!(filter_of(&subs[&all_arn]), None);

    teardown(&sdk, &first).await;
}

#[tokio::test]
async fn provision_applies_a_changed_spec() {
    let sdk = sdk().await;
    let name = unique("prov-change");
    let mut topology = Topology {
        topic_name: unique("prov-change"),
        queues: vec![queue(&name, &["ORDER_CREATED"], 3, 20)],
    };
    let first = provision(&sdk, &topology).await.unwrap();
    let queue_arn =
        queue_attribute(&sdk, &first.queue_urls[&name], QueueAttributeName::QueueArn).await;

    topology.queues[0] = queue(&name, &["ORDER_CANCELLED", "ORDER_CONFIRMED"], 4, 45);
    assert_eq!(provision(&sdk, &topology).await.unwrap(), first);
    let subs = subscriptions(&sdk, &first.topic_arn).await;
    assert_eq!(subs.len(), 1);
    assert_eq!(
        filter_of(&subs[&queue_arn]),
        Some(serde_json::json!({ "event_type": ["ORDER_CANCELLED", "ORDER_CONFIRMED"] }))
    );
    assert_eq!(
        queue_attribute(
            &sdk,
            &first.queue_urls[&name],
            QueueAttributeName::VisibilityTimeout
        )
        .await,
        "45"
    );
    let redrive: serde_json::Value = serde_json::from_str(
        &queue_attribute(
            &sdk,
            &first.queue_urls[&name],
            QueueAttributeName::RedrivePolicy,
        )
        .await,
    )
    .unwrap();
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "4"
    );

    // An empty list of event types removes the filter.
    topology.queues[0] = queue(&name, &[], 4, 45);
    assert_eq!(provision(&sdk, &topology).await.unwrap(), first);
    let subs = subscriptions(&sdk, &first.topic_arn).await;
    assert_eq!(subs.len(), 1);
    assert_eq!(filter_of(&subs[&queue_arn]), None, "{subs:#?}");

    teardown(&sdk, &first).await;
}
