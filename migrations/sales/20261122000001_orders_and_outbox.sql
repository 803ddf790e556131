-- Orders with their items and status history, the transactional outbox, and
-- idempotency keys of order requests.

CREATE TABLE orders (
    id                     UUID PRIMARY KEY,
    customer_id            TEXT NOT NULL,
    status                 TEXT NOT NULL CHECK (status IN ('PENDING_SHIPMENT', 'SHIPPED', 'DELIVERED', 'CANCELLED', 'DELIVERY_FAILED')),
    shipping_address       JSONB NOT NULL,
    requires_manual_review BOOLEAN NOT NULL DEFAULT false,
    fallback_used          BOOLEAN NOT NULL DEFAULT false,
    delivery_id            UUID,
    -- Per-order sequence, bumped on every change; events carry it as aggregate_version.
    version                INTEGER NOT NULL DEFAULT 1,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Keyset pagination, newest first, overall / per customer / per status.
CREATE INDEX orders_by_created ON orders (created_at DESC, id DESC);
CREATE INDEX orders_by_customer ON orders (customer_id, created_at DESC, id DESC);
CREATE INDEX orders_by_status ON orders (status, created_at DESC, id DESC);

CREATE TABLE order_items (
    order_id   UUID NOT NULL REFERENCES orders (id),
    line_no    INTEGER NOT NULL,
    product_id TEXT NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE order_status_history (
    id          BIGSERIAL PRIMARY KEY,
    order_id    UUID NOT NULL REFERENCES orders (id),
    from_status TEXT,
    to_status   TEXT NOT NULL,
    reason      TEXT,
    changed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX order_status_history_by_order ON order_status_history (order_id, id);

-- Events written in the same transaction as the change they describe; a relay
-- publishes PENDING rows and marks them SENT (or FAILED after its retries).
CREATE TABLE outbox_events (
    id                UUID PRIMARY KEY,
    aggregate_type    TEXT NOT NULL,
    aggregate_id      UUID NOT NULL,
    aggregate_version INTEGER NOT NULL,
    event_type        TEXT NOT NULL,
    schema_version    INTEGER NOT NULL DEFAULT 1,
    payload           JSONB NOT NULL,
    status            TEXT NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
    retry_count       INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT,
    next_attempt_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at           TIMESTAMPTZ
);

-- The relay's claim reads only PENDING rows, due first, in creation order.
CREATE INDEX outbox_events_pending ON outbox_events (next_attempt_at, created_at) WHERE status = 'PENDING';
CREATE INDEX outbox_events_by_aggregate ON outbox_events (aggregate_id, aggregate_version);

-- A repeated Idempotency-Key (per customer) with the same body replays the first answer.
CREATE TABLE idempotency_keys (
    customer_id     TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    order_id        UUID NOT NULL REFERENCES orders (id),
    response_status SMALLINT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, key)
);
