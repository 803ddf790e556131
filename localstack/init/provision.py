"""The messaging topology of localstack/init/ready.d/10-sales-events.sh (and of
20-delivery-events.sh, which runs it with delivery's settings), with boto3.

Used by that script when neither `awslocal` nor `aws` is installed (boto3 is in
LocalStack's own Python and in the project's LocalStack venv). Same settings
(environment variables), same resources, same attribute strings as the shell
version and as crates/messaging/src/provision.rs. Idempotent.
"""

import json
import os
import sys

import boto3
from botocore.exceptions import ClientError


def compact(value):
    # serde_json::json!(..).to_string(): keys sorted, no spaces.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def main():
    env = os.environ
    topic_name = env.get("TOPIC_NAME") or "sales-events"
    queue_name = env.get("QUEUE_NAME") or "product-order-events"
    dlq_name = queue_name + "-dlq"
    max_receive_count = int(env.get("MAX_RECEIVE_COUNT") or 5)
    visibility_timeout = int(env.get("VISIBILITY_TIMEOUT") or 30)
    dlq_retention = int(env.get("DLQ_RETENTION_SECS") or 1209600)
    event_types = sorted({t for t in (env.get("EVENT_TYPES") or "ORDER_CANCELLED,ORDER_CREATED").split(",") if t})
    excluded_statuses = sorted({t for t in (env.get("EXCLUDED_STATUSES") or "").split(",") if t})
    session = boto3.session.Session(
        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or "test",
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or "test",
    )
    endpoint = env.get("AWS_ENDPOINT_URL") or "http://localhost:4566"
    sns = session.client("sns", endpoint_url=endpoint)
    sqs = session.client("sqs", endpoint_url=endpoint)

    def ensure_queue(name):
        try:
            return sqs.create_queue(QueueName=name)["QueueUrl"]
        except ClientError as e:
            if e.response["Error"]["Code"] not in ("QueueAlreadyExists", "QueueNameExists"):
                raise
            return sqs.get_queue_url(QueueName=name)["QueueUrl"]

    def queue_arn(url):
        return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    dlq_url = ensure_queue(dlq_name)
    sqs.set_queue_attributes(QueueUrl=dlq_url, Attributes={"MessageRetentionPeriod": str(dlq_retention)})
    dlq_arn = queue_arn(dlq_url)

    url = ensure_queue(queue_name)
    arn = queue_arn(url)
    redrive = compact({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count})
    sqs.set_queue_attributes(QueueUrl=url, Attributes={
        "VisibilityTimeout": str(visibility_timeout),
        "RedrivePolicy": redrive,
    })

    # The topic last, the subscription right after it: a publisher already running (LocalStack
    # restarted under the services) gets "topic not found" and retries until the topic exists,
    # and SNS drops only what is published in the moment between these two calls.
    topic_arn = sns.create_topic(Name=topic_name)["TopicArn"]
    subscribe(sns, topic_arn, arn, event_types, excluded_statuses)
    policy = compact({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AllowTopicToSend",
            "Effect": "Allow",
            "Principal": {"Service": "sns.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
        }],
    })
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy})
    print(f"sales-events init: topic {topic_arn}; queue {url} (DLQ {dlq_url}, "
          f"maxReceiveCount {max_receive_count}); filter {filter_policy(event_types, excluded_statuses)}",
          file=sys.stderr)


def filter_policy(event_types, excluded_statuses):
    # messaging::provision::filter_policy_excluding
    policy = {}
    if event_types:
        policy["event_type"] = event_types
    if excluded_statuses:
        policy["status"] = [{"anything-but": excluded_statuses}]
    return compact(policy) if policy else None


def subscribe(sns, topic_arn, arn, event_types, excluded_statuses):
    attributes = {"RawMessageDelivery": "true"}
    policy = filter_policy(event_types, excluded_statuses)
    if policy:
        attributes["FilterPolicy"] = policy
    try:
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn,
                      Attributes=attributes, ReturnSubscriptionArn=True)
    except ClientError as e:
        if e.response["Error"]["Code"] != "InvalidParameter" or "already exists" not in str(e):
            raise
        # Subscribed already with other attributes: update them in place.
        sub_arn = None
        for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn):
            for s in page["Subscriptions"]:
                if s.get("Protocol") == "sqs" and s.get("Endpoint") == arn:
                    sub_arn = s["SubscriptionArn"]
        if sub_arn is None:
            raise
        for name, value in attributes.items():
            sns.set_subscription_attributes(SubscriptionArn=sub_arn, AttributeName=name, AttributeValue=value)


if __name__ == "__main__":
    main()
