#!/usr/bin/env bash
# Creates the messaging topology the services would provision themselves
# (crates/messaging/src/provision.rs): the SNS topic sales' outbox relay
# publishes to, and product's SQS queue with its dead-letter queue, redrive
# policy, queue policy and filtered raw-delivery subscription.
#
# LocalStack runs it on every start as a "ready" hook (docker-compose.yml mounts
# localstack/init at /etc/localstack/init). It also runs against the host-mode
# LocalStack of scripts/ensure-localstack (scripts/demo and the system test
# tests/tests/localstack_init.rs do):
#
#   AWS_ENDPOINT_URL=http://127.0.0.1:4566 localstack/init/ready.d/10-sales-events.sh
#
# Idempotent: run it as often as you like; a changed setting is applied in place.
#
# Settings (environment):
#   TOPIC_NAME           sales-events            (SALES_/PRODUCT_BROKER_TOPIC_NAME)
#   QUEUE_NAME           product-order-events    (PRODUCT_BROKER_QUEUE_NAME); the DLQ is <name>-dlq
#   MAX_RECEIVE_COUNT    5                       (PRODUCT_BROKER_MAX_RECEIVE_COUNT)
#   VISIBILITY_TIMEOUT   30                      (PRODUCT_BROKER_VISIBILITY_TIMEOUT_SECS)
#   EVENT_TYPES          ORDER_CANCELLED,ORDER_CREATED  (product's order_events::CONSUMED)
#   EXCLUDED_STATUSES    (none)                  values of the `status` attribute the subscription
#                                                drops (20-delivery-events.sh: CREATED)
#   AWS_ENDPOINT_URL     http://localhost:4566   (never real AWS unless you point it there)
#   AWS_REGION           us-east-1; credentials default to LocalStack's test/test
#   PROVISION_WITH       auto | cli | python     (auto: python + boto3, else awslocal, else aws)
#
# Two implementations of the same steps: localstack/init/provision.py (boto3: in
# LocalStack's image, and in the project's LocalStack venv) and the AWS CLI below
# (awslocal, or aws --endpoint-url); tests/tests/localstack_init.rs checks both.
# The strings it writes are byte-for-byte those of the Rust code (serde_json
# prints object keys sorted and without spaces), so the code's provisioning finds
# nothing to change and a subscription made by either is "the same" to SNS.
set -euo pipefail

TOPIC_NAME=${TOPIC_NAME:-sales-events}
QUEUE_NAME=${QUEUE_NAME:-product-order-events}
DLQ_NAME=${QUEUE_NAME}-dlq
MAX_RECEIVE_COUNT=${MAX_RECEIVE_COUNT:-5}
VISIBILITY_TIMEOUT=${VISIBILITY_TIMEOUT:-30}
EVENT_TYPES=${EVENT_TYPES:-ORDER_CANCELLED,ORDER_CREATED}
EXCLUDED_STATUSES=${EXCLUDED_STATUSES:-}
DLQ_RETENTION_SECS=1209600 # 14 days, the SQS maximum (messaging::provision::DLQ_RETENTION_SECS)
PROVISION_WITH=${PROVISION_WITH:-auto}

export AWS_ENDPOINT_URL=${AWS_ENDPOINT_URL:-http://localhost:4566}
export AWS_REGION=${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}
export AWS_DEFAULT_REGION=$AWS_REGION
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export TOPIC_NAME QUEUE_NAME MAX_RECEIVE_COUNT VISIBILITY_TIMEOUT EVENT_TYPES EXCLUDED_STATUSES DLQ_RETENTION_SECS

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "sales-events init: $*" >&2; }

# A python interpreter that has boto3: LocalStack's own (in its image), the
# project's LocalStack venv (scripts/ensure-localstack), or python3.
boto3_python() {
  local root candidates
  root=$(cd "$here/../../.." && pwd)
  candidates=("${PROVISION_PYTHON:-}" /opt/code/localstack/.venv/bin/python
              "$root/.local/localstack/venv/bin/python" python3)
  local py
  for py in "${candidates[@]}"; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import boto3' >/dev/null 2>&1; then
      echo "$py"
      return 0
    fi
  done
  return 1
}

with_python() {
  local py
  py=$(boto3_python) || { log "no python with boto3 found"; return 1; }
  log "provisioning with $py + boto3 at $AWS_ENDPOINT_URL"
  "$py" "$here/../provision.py"
}

# ---- the same with the AWS CLI --------------------------------------------
AWS=()
pick_cli() {
  if command -v awslocal >/dev/null 2>&1; then
    AWS=(awslocal)
  elif command -v aws >/dev/null 2>&1; then
    AWS=(aws --endpoint-url "$AWS_ENDPOINT_URL")
  else
    return 1
  fi
}

# JSON strings, exactly as serde_json::json!(..).to_string() prints them.
json_escape() { local s=$1; s=${s//\\/\\\\}; printf '%s' "${s//\"/\\\"}"; }

json_list() { # comma-separated values -> sorted, deduplicated JSON array of strings
  local sorted first=1 out='['
  sorted=$(tr ',' '\n' <<<"$1" | sed '/^$/d' | LC_ALL=C sort -u)
  while IFS= read -r t; do
    [ -n "$t" ] || continue
    [ $first = 1 ] || out+=','
    out+="\"$t\""
    first=0
  done <<<"$sorted"
  printf '%s]' "$out"
}

filter_policy() {
  local out
  out='{"event_type":'"$(json_list "$EVENT_TYPES")"
  if [ -n "$EXCLUDED_STATUSES" ]; then
    out+=',"status":[{"anything-but":'"$(json_list "$EXCLUDED_STATUSES")"'}]'
  fi
  printf '%s}' "$out"
}

queue_policy() { # queue ARN, topic ARN
  printf '{"Statement":[{"Action":"sqs:SendMessage","Condition":{"ArnEquals":{"aws:SourceArn":"%s"}},"Effect":"Allow","Principal":{"Service":"sns.amazonaws.com"},"Resource":"%s","Sid":"AllowTopicToSend"}],"Version":"2012-10-17"}' "$2" "$1"
}

ensure_queue() { # name -> URL
  "${AWS[@]}" sqs create-queue --queue-name "$1" --query QueueUrl --output text 2>/dev/null \
    || "${AWS[@]}" sqs get-queue-url --queue-name "$1" --query QueueUrl --output text
}

queue_arn() {
  "${AWS[@]}" sqs get-queue-attributes --queue-url "$1" --attribute-names QueueArn \
    --query Attributes.QueueArn --output text
}

with_cli() {
  log "provisioning with ${AWS[*]}"
  local topic_arn dlq_url dlq_arn url arn redrive filter attrs sub_arn
  dlq_url=$(ensure_queue "$DLQ_NAME")
  "${AWS[@]}" sqs set-queue-attributes --queue-url "$dlq_url" \
    --attributes "{\"MessageRetentionPeriod\":\"$DLQ_RETENTION_SECS\"}"
  dlq_arn=$(queue_arn "$dlq_url")

  url=$(ensure_queue "$QUEUE_NAME")
  arn=$(queue_arn "$url")
  redrive=$(printf '{"deadLetterTargetArn":"%s","maxReceiveCount":%d}' "$dlq_arn" "$MAX_RECEIVE_COUNT")
  attrs=$(printf '{"VisibilityTimeout":"%d","RedrivePolicy":"%s"}' "$VISIBILITY_TIMEOUT" "$(json_escape "$redrive")")
  "${AWS[@]}" sqs set-queue-attributes --queue-url "$url" --attributes "$attrs"

  # The topic last, the subscription right after it (see provision.py).
  topic_arn=$("${AWS[@]}" sns create-topic --name "$TOPIC_NAME" --query TopicArn --output text)
  filter=$(filter_policy)
  attrs=$(printf '{"RawMessageDelivery":"true","FilterPolicy":"%s"}' "$(json_escape "$filter")")
  if ! "${AWS[@]}" sns subscribe --topic-arn "$topic_arn" --protocol sqs --notification-endpoint "$arn" \
        --attributes "$attrs" --return-subscription-arn >/dev/null 2>&1; then
    # Subscribed already with other attributes: update them in place.
    sub_arn=$("${AWS[@]}" sns list-subscriptions-by-topic --topic-arn "$topic_arn" \
      --query "Subscriptions[?Protocol=='sqs' && Endpoint=='$arn'].SubscriptionArn | [0]" --output text)
    if [ -z "$sub_arn" ] || [ "$sub_arn" = None ]; then
      log "cannot subscribe $arn to $topic_arn"
      return 1
    fi
    log "updating the attributes of $sub_arn"
    "${AWS[@]}" sns set-subscription-attributes --subscription-arn "$sub_arn" \
      --attribute-name RawMessageDelivery --attribute-value true
    "${AWS[@]}" sns set-subscription-attributes --subscription-arn "$sub_arn" \
      --attribute-name FilterPolicy --attribute-value "$filter"
  fi
  attrs=$(printf '{"Policy":"%s"}' "$(json_escape "$(queue_policy "$arn" "$topic_arn")")")
  "${AWS[@]}" sqs set-queue-attributes --queue-url "$url" --attributes "$attrs"
  log "topic $topic_arn; queue $url (DLQ $dlq_url, maxReceiveCount $MAX_RECEIVE_COUNT); filter $filter"
}

case "$PROVISION_WITH" in
  cli) pick_cli || { log "neither awslocal nor aws is installed"; exit 1; }; with_cli ;;
  python) with_python ;;
  auto)
    # boto3 first: one process for every call (about 0.5 s, where the CLI takes about
    # 10 s), which keeps the moment between the topic and its subscription short.
    if boto3_python >/dev/null; then with_python
    elif pick_cli; then with_cli
    else log "need awslocal, aws, or a python with boto3"; exit 1; fi ;;
  *) log "PROVISION_WITH must be auto, cli or python, not $PROVISION_WITH"; exit 2 ;;
esac
