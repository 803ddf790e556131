-- Deliveries (one per order at most) and their status history.

CREATE TABLE deliveries (
    id         UUID PRIMARY KEY,
    order_id   UUID NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('CREATED', 'PICKED_UP', 'IN_TRANSIT', 'DELIVERED', 'FAILED', 'CANCELLED')),
    address    JSONB NOT NULL,
    items      JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Initiation is idempotent by order: a retry finds this row instead of making a second.
    CONSTRAINT deliveries_one_per_order UNIQUE (order_id)
);

CREATE TABLE delivery_status_history (
    id          BIGSERIAL PRIMARY KEY,
    delivery_id UUID NOT NULL REFERENCES deliveries (id),
    from_status TEXT,
    to_status   TEXT NOT NULL,
    note        TEXT,
    changed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX delivery_status_history_by_delivery ON delivery_status_history (delivery_id, id);
