-- W3C trace context (traceparent, tracestate) of the span that wrote the event, so
-- the relay and the consumers continue the order's trace across the broker.
ALTER TABLE outbox_events ADD COLUMN trace JSONB NOT NULL DEFAULT '{}';
