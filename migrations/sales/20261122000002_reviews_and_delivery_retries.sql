-- Manual reviews of orders, and durable delivery initiation retries.

-- Orders waiting for a person: accepted on a fallback, or that automation could not settle.
CREATE TABLE manual_reviews (
    id          UUID PRIMARY KEY,
    order_id    UUID NOT NULL REFERENCES orders (id),
    reason      TEXT NOT NULL CHECK (reason IN (
                    'AVAILABILITY_UNVERIFIED', 'OUT_OF_STOCK_AFTER_FALLBACK', 'INVALID_STATUS_TRANSITION',
                    'DELIVERY_RETRIES_EXHAUSTED', 'DELIVERY_FAILED', 'STALE_PENDING_SHIPMENT')),
    status      TEXT NOT NULL DEFAULT 'OPEN' CHECK (status IN ('OPEN', 'APPROVED', 'REJECTED', 'RESOLVED')),
    details     JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at TIMESTAMPTZ,
    resolved_by TEXT,
    resolution  TEXT,
    note        TEXT
);

-- At most one open review per order and reason.
CREATE UNIQUE INDEX manual_reviews_one_open_per_reason ON manual_reviews (order_id, reason) WHERE status = 'OPEN';
CREATE INDEX manual_reviews_open_by_age ON manual_reviews (created_at) WHERE status = 'OPEN';

-- One row per order whose delivery is not yet initiated. Written in the order's
-- own transaction, so a crash between commit and the delivery call loses nothing.
CREATE TABLE delivery_retries (
    order_id        UUID PRIMARY KEY REFERENCES orders (id),
    status          TEXT NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'DONE', 'EXHAUSTED')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The retry worker's claim reads only due PENDING rows.
CREATE INDEX delivery_retries_due ON delivery_retries (next_attempt_at) WHERE status = 'PENDING';
