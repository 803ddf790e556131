-- Consuming sales' order events idempotently.

-- One row per applied (or deliberately ignored) event, written in the same
-- transaction as its effect: a redelivered event finds its row and does nothing.
CREATE TABLE inbox (
    event_id          UUID PRIMARY KEY,
    event_type        TEXT NOT NULL,
    aggregate_id      UUID NOT NULL,
    aggregate_version INTEGER NOT NULL,
    outcome           TEXT NOT NULL,
    received_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The newest order version applied: an older event is acknowledged and ignored.
CREATE TABLE order_versions (
    order_id     UUID PRIMARY KEY,
    last_version INTEGER NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Orders accepted by sales without a reservation (product was unavailable), so
-- the availability re-check can find them; and orders whose reservation had
-- expired and could not be taken again (stock ran out): both need sales' attention.
CREATE TABLE unreserved_orders (
    order_id   UUID PRIMARY KEY,
    reason     TEXT NOT NULL CHECK (reason IN ('NO_RESERVATION', 'EXPIRED_OUT_OF_STOCK')),
    items      JSONB NOT NULL,
    noted_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
