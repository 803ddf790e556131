-- The writer publishes its own events: each row names the service process that wrote it
-- (`owner`), and its notification carries the row itself, so the owner publishes it
-- without reading or claiming it, and marks it SENT later, many rows per statement.
-- Other instances' claims take such a row only once it is older than the takeover
-- delay (the owner crashed, or could not publish it). A row without owner (written by
-- hand, replayed by staff) is claimable at once, as before.
ALTER TABLE outbox_events ADD COLUMN owner UUID;

DROP TRIGGER outbox_events_notify ON outbox_events;

-- Row-level, delivered at commit. Notifications are limited to 8000 bytes: a larger row
-- is announced by id and read by its owner. Identical notifications of one transaction
-- are folded into one by PostgreSQL (the ownerless wake-up).
CREATE OR REPLACE FUNCTION outbox_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    body TEXT;
BEGIN
    IF NEW.owner IS NULL THEN
        PERFORM pg_notify('outbox_events', '');
        RETURN NULL;
    END IF;
    body := json_build_object('owner', NEW.owner, 'row', row_to_json(NEW))::text;
    IF octet_length(body) >= 7900 THEN
        body := json_build_object('owner', NEW.owner, 'id', NEW.id)::text;
    END IF;
    PERFORM pg_notify('outbox_events', body);
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_events_notify AFTER INSERT ON outbox_events
    FOR EACH ROW EXECUTE FUNCTION outbox_events_notify();
