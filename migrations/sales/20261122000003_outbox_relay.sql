-- The outbox relay: wake it on commit, keep discarded dead letters, audit operators.

-- Statement-level: one notification per inserting statement, delivered at commit.
CREATE FUNCTION outbox_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_events', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_events_notify AFTER INSERT ON outbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_events_notify();

-- A FAILED row (dead letter) is kept until an operator replays it (back to
-- PENDING) or discards it (DISCARDED, kept for the record).
ALTER TABLE outbox_events DROP CONSTRAINT outbox_events_status_check;
ALTER TABLE outbox_events ADD CONSTRAINT outbox_events_status_check
    CHECK (status IN ('PENDING', 'SENT', 'FAILED', 'DISCARDED'));

CREATE INDEX outbox_events_failed ON outbox_events (created_at) WHERE status = 'FAILED';
CREATE INDEX outbox_events_sent_by_age ON outbox_events (sent_at) WHERE status = 'SENT';

CREATE TABLE outbox_audit (
    id       BIGSERIAL PRIMARY KEY,
    event_id UUID NOT NULL,
    action   TEXT NOT NULL CHECK (action IN ('REPLAYED', 'DISCARDED')),
    actor    TEXT NOT NULL,
    reason   TEXT,
    at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
