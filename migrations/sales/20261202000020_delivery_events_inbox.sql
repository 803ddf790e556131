-- Following delivery's DELIVERY_STATUS_CHANGED events idempotently.

-- One row per delivery event applied (or deliberately ignored), written in the same
-- transaction as its effect: a redelivered event finds its row and changes nothing.
CREATE TABLE delivery_events_inbox (
    event_id         UUID PRIMARY KEY,
    delivery_id      UUID NOT NULL,
    delivery_version INTEGER NOT NULL,
    order_id         UUID NOT NULL,
    outcome          TEXT NOT NULL,
    received_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX delivery_events_inbox_by_age ON delivery_events_inbox (received_at);

-- The newest delivery version applied to the order: an event not newer is ignored.
ALTER TABLE orders ADD COLUMN delivery_version INTEGER NOT NULL DEFAULT 0;
