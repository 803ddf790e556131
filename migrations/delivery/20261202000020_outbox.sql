-- Delivery's transactional outbox: every status change of a delivery writes a
-- DELIVERY_STATUS_CHANGED event (the full delivery, its version) in the same transaction
-- as the change and its history row; the relay publishes PENDING rows to delivery's SNS
-- topic. The same shape as sales' outbox (one implementation, the outbox crate).

-- Per-delivery sequence, bumped on every status change; events carry it as aggregate_version.
ALTER TABLE deliveries ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

CREATE TABLE outbox_events (
    id                UUID PRIMARY KEY,
    aggregate_type    TEXT NOT NULL,
    aggregate_id      UUID NOT NULL,
    aggregate_version INTEGER NOT NULL,
    event_type        TEXT NOT NULL,
    schema_version    INTEGER NOT NULL DEFAULT 1,
    payload           JSONB NOT NULL,
    status            TEXT NOT NULL DEFAULT 'PENDING'
                      CHECK (status IN ('PENDING', 'SENT', 'FAILED', 'DISCARDED')),
    -- Refusals of the entry by the broker (an outage is never charged); FAILED once refused
    -- DELIVERY_OUTBOX_MAX_ATTEMPTS times and the first refusal is old enough.
    retry_count       INTEGER NOT NULL DEFAULT 0,
    first_refused_at  TIMESTAMPTZ,
    last_error        TEXT,
    next_attempt_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at           TIMESTAMPTZ,
    -- W3C trace context of the writer, continued by the relay and the consumers.
    trace             JSONB NOT NULL DEFAULT '{}'
);

-- The relay's claim reads only PENDING rows, due first, in creation order.
CREATE INDEX outbox_events_pending ON outbox_events (next_attempt_at, created_at) WHERE status = 'PENDING';
CREATE INDEX outbox_events_by_aggregate ON outbox_events (aggregate_id, aggregate_version);
CREATE INDEX outbox_events_failed ON outbox_events (created_at) WHERE status = 'FAILED';
CREATE INDEX outbox_events_sent_by_age ON outbox_events (sent_at) WHERE status = 'SENT';

-- Statement-level: one notification per inserting statement, delivered at commit.
CREATE FUNCTION outbox_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_events', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_events_notify AFTER INSERT ON outbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_events_notify();

-- Replays and discards of dead letters, with who did them.
CREATE TABLE outbox_audit (
    id       BIGSERIAL PRIMARY KEY,
    event_id UUID NOT NULL,
    action   TEXT NOT NULL CHECK (action IN ('REPLAYED', 'DISCARDED')),
    actor    TEXT NOT NULL,
    reason   TEXT,
    at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
