-- W3C trace context (traceparent, tracestate) of the order's request, so a delivery
-- initiated later by the retry worker continues the order's trace.
ALTER TABLE delivery_retries ADD COLUMN trace JSONB NOT NULL DEFAULT '{}';
