#!/usr/bin/env bash
# Creates delivery's messaging topology, as sales would provision it at start
# (services/sales/src/app.rs with SALES_DELIVERY_EVENTS_PROVISION=true): the SNS
# topic delivery's outbox relay publishes DELIVERY_STATUS_CHANGED to, and sales'
# SQS queue with its dead-letter queue, redrive policy, queue policy and a
# raw-delivery subscription whose filter policy takes DELIVERY_STATUS_CHANGED
# except status CREATED (sales records the delivery it created itself).
#
# The same steps as 10-sales-events.sh (it runs that script with delivery's
# settings); LocalStack runs both as "ready" hooks, in name order. Idempotent.
#
# Settings (environment):
#   DELIVERY_TOPIC_NAME          delivery-events        (DELIVERY_BROKER_TOPIC_NAME,
#                                                        SALES_DELIVERY_EVENTS_TOPIC_NAME)
#   DELIVERY_QUEUE_NAME          sales-delivery-events  (SALES_DELIVERY_EVENTS_QUEUE_NAME)
#   DELIVERY_MAX_RECEIVE_COUNT   5                      (SALES_DELIVERY_EVENTS_MAX_RECEIVE_COUNT)
#   DELIVERY_VISIBILITY_TIMEOUT  30                     (SALES_DELIVERY_EVENTS_VISIBILITY_TIMEOUT_SECS)
#   and those of 10-sales-events.sh for the endpoint, region and PROVISION_WITH.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOPIC_NAME=${DELIVERY_TOPIC_NAME:-delivery-events} \
QUEUE_NAME=${DELIVERY_QUEUE_NAME:-sales-delivery-events} \
MAX_RECEIVE_COUNT=${DELIVERY_MAX_RECEIVE_COUNT:-5} \
VISIBILITY_TIMEOUT=${DELIVERY_VISIBILITY_TIMEOUT:-30} \
EVENT_TYPES=DELIVERY_STATUS_CHANGED \
EXCLUDED_STATUSES=CREATED \
  exec bash "$here/10-sales-events.sh"
