//! Creating the topic, the queues, their dead-letter queues and the subscriptions: idempotent,
//! so every service can run it at start-up (and tests before each scenario).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use aws_config::SdkConfig;
use aws_sdk_sns::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::QueueAttributeName;

use crate::envelope::{ATTR_EVENT_TYPE, ATTR_STATUS};

/// Suffix of the dead-letter queue of each queue: `<name>-dlq`.
pub const DLQ_SUFFIX: &str = "-dlq";
/// How long a dead-letter queue keeps messages: 14 days, the SQS maximum.
pub const DLQ_RETENTION_SECS: i32 = 14 * 24 * 3600;

/// One consumer queue subscribed to the topic.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// Queue name (≤ 76 characters, so that `<name>-dlq` fits SQS's 80).
    pub name: String,
    /// Event types delivered to this queue (SNS filter policy on the `event_type` attribute);
    /// empty means all.
    pub event_types: Vec<String>,
    /// Values of the `status` message attribute not delivered to this queue (an
    /// `anything-but` condition of the filter policy); empty means no condition on it. With
    /// a condition, a message without a `status` attribute is not delivered either.
    pub excluded_statuses: Vec<String>,
    /// Receives after which a message is moved to `<name>-dlq` (≥ 1).
    pub max_receive_count: i32,
    /// Default visibility timeout of the queue, in seconds (0..=43200).
    pub visibility_timeout_secs: i32,
}

/// The topic and what subscribes to it.
#[derive(Debug, Clone)]
pub struct Topology {
    /// SNS topic name (standard topic).
    pub topic_name: String,
    /// Queues subscribed to the topic.
    pub queues: Vec<QueueSpec>,
}

/// What [`provision`] created or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// ARN of the topic.
    pub topic_arn: String,
    /// Queue URL by queue name ([`QueueSpec::name`]).
    pub queue_urls: BTreeMap<String, String>,
    /// Dead-letter queue URL by queue name ([`QueueSpec::name`], without the suffix).
    pub dlq_urls: BTreeMap<String, String>,
}

/// The URL of an existing queue (when the topology was provisioned beforehand).
pub async fn queue_url(sdk: &SdkConfig, name: &str) -> anyhow::Result<String> {
    aws_sdk_sqs::Client::new(sdk)
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .with_context(|| format!("looking up queue {name}"))?
        .queue_url
        .with_context(|| format!("queue {name} has no URL"))
}

/// Creates the topic, each queue with its DLQ and redrive policy, the queue policy allowing the
/// topic to send, and a subscription with `RawMessageDelivery=true` and a `FilterPolicy` on the
/// `event_type` message attribute. Safe to run repeatedly and from several processes at once.
///
/// Queues are created without attributes (which SQS treats as idempotent whatever the existing
/// queue's attributes) and then configured with `SetQueueAttributes`, so a changed spec is
/// applied rather than refused. A subscription whose attributes differ from the spec is updated
/// in place. The queue policy is replaced: a queue receives from this topic only.
pub async fn provision(sdk: &SdkConfig, topology: &Topology) -> Result<Provisioned, anyhow::Error> {
    validate(topology)?;
    let sns = aws_sdk_sns::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);

    let topic_arn = sns
        .create_topic()
        .name(&topology.topic_name)
        .send()
        .await
        .with_context(|| format!("creating topic {}", topology.topic_name))?
        .topic_arn()
        .with_context(|| format!("CreateTopic {} returned no ARN", topology.topic_name))?
        .to_owned();

    let mut provisioned = Provisioned {
        topic_arn,
        queue_urls: BTreeMap::new(),
        dlq_urls: BTreeMap::new(),
    };
    for spec in &topology.queues {
        let (url, dlq_url) = provision_queue(&sns, &sqs, &provisioned.topic_arn, spec).await?;
        provisioned.queue_urls.insert(spec.name.clone(), url);
        provisioned.dlq_urls.insert(spec.name.clone(), dlq_url);
    }
    tracing::info!(
        topic = %topology.topic_name,
        queues = topology.queues.len(),
        "messaging topology provisioned"
    );
    Ok(provisioned)
}

fn validate(topology: &Topology) -> anyhow::Result<()> {
    if topology.topic_name.is_empty() {
        bail!("topology: empty topic name");
    }
    for q in &topology.queues {
        if q.name.is_empty() || q.name.len() + DLQ_SUFFIX.len() > 80 {
            bail!("queue {:?}: name must have 1 to 76 characters", q.name);
        }
        if q.max_receive_count < 1 {
            bail!("queue {}: max_receive_count must be at least 1", q.name);
        }
        if !(0..=43_200).contains(&q.visibility_timeout_secs) {
            bail!(
                "queue {}: visibility_timeout_secs must be in 0..=43200",
                q.name
            );
        }
    }
    Ok(())
}

/// Returns (queue URL, DLQ URL).
async fn provision_queue(
    sns: &aws_sdk_sns::Client,
    sqs: &aws_sdk_sqs::Client,
    topic_arn: &str,
    spec: &QueueSpec,
) -> anyhow::Result<(String, String)> {
    let dlq_name = format!("{}{DLQ_SUFFIX}", spec.name);
    let dlq_url = ensure_queue(sqs, &dlq_name).await?;
    set_attributes(
        sqs,
        &dlq_url,
        &[(
            QueueAttributeName::MessageRetentionPeriod,
            DLQ_RETENTION_SECS.to_string(),
        )],
    )
    .await?;
    let dlq_arn = queue_arn(sqs, &dlq_url).await?;

    let url = ensure_queue(sqs, &spec.name).await?;
    let arn = queue_arn(sqs, &url).await?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": spec.max_receive_count,
    });
    set_attributes(
        sqs,
        &url,
        &[
            (
                QueueAttributeName::VisibilityTimeout,
                spec.visibility_timeout_secs.to_string(),
            ),
            (QueueAttributeName::RedrivePolicy, redrive.to_string()),
            (QueueAttributeName::Policy, queue_policy(&arn, topic_arn)),
        ],
    )
    .await?;

    subscribe(sns, topic_arn, &arn, spec).await?;
    tracing::debug!(queue = %spec.name, dlq = %dlq_name, "queue provisioned");
    Ok((url, dlq_url))
}

async fn ensure_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> anyhow::Result<String> {
    let created = sqs.create_queue().queue_name(name).send().await;
    let url = match created {
        Ok(out) => out.queue_url().map(str::to_owned),
        // Only if a stricter implementation compares against the existing attributes.
        Err(e)
            if e.as_service_error()
                .is_some_and(|se| se.is_queue_name_exists()) =>
        {
            sqs.get_queue_url()
                .queue_name(name)
                .send()
                .await
                .with_context(|| format!("getting the URL of existing queue {name}"))?
                .queue_url()
                .map(str::to_owned)
        }
        Err(e) => return Err(e).with_context(|| format!("creating queue {name}")),
    };
    url.with_context(|| format!("no URL returned for queue {name}"))
}

async fn set_attributes(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    attributes: &[(QueueAttributeName, String)],
) -> anyhow::Result<()> {
    let mut req = sqs.set_queue_attributes().queue_url(url);
    for (name, value) in attributes {
        req = req.attributes(name.clone(), value);
    }
    req.send()
        .await
        .with_context(|| format!("setting attributes of queue {url}"))?;
    Ok(())
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> anyhow::Result<String> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .with_context(|| format!("getting the ARN of queue {url}"))?;
    out.attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .with_context(|| format!("no QueueArn returned for queue {url}"))
}

/// Lets the topic (and only it) send to the queue.
fn queue_policy(queue_arn: &str, topic_arn: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AllowTopicToSend",
            "Effect": "Allow",
            "Principal": { "Service": "sns.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": { "ArnEquals": { "aws:SourceArn": topic_arn } },
        }],
    })
    .to_string()
}

/// The subscription's filter policy, or `None` for all events. Deterministic (sorted,
/// deduplicated), because an existing subscription is compared attribute by attribute as strings.
pub fn filter_policy(event_types: &[String]) -> Option<String> {
    filter_policy_excluding(event_types, &[])
}

/// [`filter_policy`] that also drops the messages whose `status` attribute is one of
/// `excluded_statuses`: `{"event_type":[…],"status":[{"anything-but":[…]}]}`.
pub fn filter_policy_excluding(
    event_types: &[String],
    excluded_statuses: &[String],
) -> Option<String> {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    let mut policy = serde_json::Map::new();
    if !event_types.is_empty() {
        policy.insert(ATTR_EVENT_TYPE.into(), sorted(event_types).into());
    }
    if !excluded_statuses.is_empty() {
        policy.insert(
            ATTR_STATUS.into(),
            serde_json::json!([{ "anything-but": sorted(excluded_statuses) }]),
        );
    }
    (!policy.is_empty()).then(|| serde_json::Value::Object(policy).to_string())
}

async fn subscribe(
    sns: &aws_sdk_sns::Client,
    topic_arn: &str,
    queue_arn: &str,
    spec: &QueueSpec,
) -> anyhow::Result<()> {
    let policy = filter_policy_excluding(&spec.event_types, &spec.excluded_statuses);
    let mut req = sns
        .subscribe()
        .topic_arn(topic_arn)
        .protocol("sqs")
        .endpoint(queue_arn)
        .return_subscription_arn(true)
        .attributes("RawMessageDelivery", "true");
    if let Some(policy) = &policy {
        req = req.attributes("FilterPolicy", policy);
    }
    match req.send().await {
        Ok(out) => {
            if policy.is_none() {
                // Subscribing without a filter leaves an existing subscription's filter in place.
                if let Some(arn) = out.subscription_arn() {
                    clear_filter_policy(sns, arn).await?;
                }
            }
            Ok(())
        }
        // The endpoint is subscribed already, with other attributes (e.g. an older filter).
        Err(e)
            if e.as_service_error()
                .is_some_and(|se| se.is_invalid_parameter_exception())
                && e.message().is_some_and(|m| m.contains("already exists")) =>
        {
            let arn = find_subscription(sns, topic_arn, queue_arn).await?;
            tracing::info!(subscription = %arn, "updating an existing subscription's attributes");
            set_subscription_attribute(sns, &arn, "RawMessageDelivery", "true").await?;
            match &policy {
                Some(policy) => set_subscription_attribute(sns, &arn, "FilterPolicy", policy).await,
                None => clear_filter_policy(sns, &arn).await,
            }
        }
        Err(e) => Err(e).with_context(|| format!("subscribing {queue_arn} to {topic_arn}")),
    }
}

async fn clear_filter_policy(
    sns: &aws_sdk_sns::Client,
    subscription_arn: &str,
) -> anyhow::Result<()> {
    let attrs = sns
        .get_subscription_attributes()
        .subscription_arn(subscription_arn)
        .send()
        .await
        .with_context(|| format!("reading attributes of subscription {subscription_arn}"))?;
    let has_filter = attrs
        .attributes()
        .and_then(|a| a.get("FilterPolicy"))
        .is_some_and(|p| !p.trim().is_empty() && p.trim() != "{}");
    if has_filter {
        set_subscription_attribute(sns, subscription_arn, "FilterPolicy", "").await?;
    }
    Ok(())
}

async fn set_subscription_attribute(
    sns: &aws_sdk_sns::Client,
    subscription_arn: &str,
    name: &str,
    value: &str,
) -> anyhow::Result<()> {
    sns.set_subscription_attributes()
        .subscription_arn(subscription_arn)
        .attribute_name(name)
        .attribute_value(value)
        .send()
        .await
        .with_context(|| format!("setting {name} of subscription {subscription_arn}"))?;
    Ok(())
}

async fn find_subscription(
    sns: &aws_sdk_sns::Client,
    topic_arn: &str,
    queue_arn: &str,
) -> anyhow::Result<String> {
    let mut pages = sns
        .list_subscriptions_by_topic()
        .topic_arn(topic_arn)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.with_context(|| format!("listing subscriptions of {topic_arn}"))?;
        if let Some(arn) = page
            .subscriptions()
            .iter()
            .find(|s| s.protocol() == Some("sqs") && s.endpoint() == Some(queue_arn))
            .and_then(|s| s.subscription_arn())
        {
            return Ok(arn.to_owned());
        }
    }
    bail!("no subscription of {queue_arn} to {topic_arn} found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_policy_is_sorted_and_deduplicated() {
        assert_eq!(filter_policy(&[]), None);
        let types = ["ORDER_CREATED", "ORDER_CANCELLED", "ORDER_CREATED"].map(String::from);
        assert_eq!(
            filter_policy(&types).as_deref(),
            Some(r#"{"event_type":["ORDER_CANCELLED","ORDER_CREATED"]}"#)
        );
        let types = ["DELIVERY_STATUS_CHANGED".to_owned()];
        assert_eq!(
            filter_policy_excluding(&types, &["CREATED".to_owned()]).as_deref(),
            Some(
                r#"{"event_type":["DELIVERY_STATUS_CHANGED"],"status":[{"anything-but":["CREATED"]}]}"#
            )
        );
    }

    #[test]
    fn rejects_bad_specs() {
        let spec = |name: &str, max_receive_count, visibility_timeout_secs| Topology {
            topic_name: "t".into(),
            queues: vec![QueueSpec {
                name: name.into(),
                event_types: vec![],
                excluded_statuses: vec![],
                max_receive_count,
                visibility_timeout_secs,
            }],
        };
        assert!(validate(&spec("q", 3, 30)).is_ok());
        assert!(validate(&spec("", 3, 30)).is_err());
        assert!(validate(&spec(&"q".repeat(77), 3, 30)).is_err());
        assert!(validate(&spec("q", 0, 30)).is_err());
        assert!(validate(&spec("q", 3, 43_201)).is_err());
    }
}
