-- No outage makes a dead letter: `retry_count` counts the broker's refusals of the entry
-- itself (an outage is never charged), and a row becomes FAILED only once it was refused
-- SALES_OUTBOX_MAX_ATTEMPTS times and its first refusal is SALES_OUTBOX_DEAD_LETTER_MIN_AGE_MS
-- old; this is when the first refusal came.
ALTER TABLE outbox_events ADD COLUMN first_refused_at TIMESTAMPTZ;

-- A flagged order holds its delivery: why it waits (NULL: nothing holds it). The order's
-- delivery_retries row is HELD meanwhile, so the retry worker leaves it alone.
ALTER TABLE orders ADD COLUMN delivery_hold TEXT
    CHECK (delivery_hold IN ('AVAILABILITY_UNVERIFIED', 'MANUAL_REVIEW'));
ALTER TABLE delivery_retries DROP CONSTRAINT delivery_retries_status_check;
ALTER TABLE delivery_retries ADD CONSTRAINT delivery_retries_status_check
    CHECK (status IN ('PENDING', 'HELD', 'DONE', 'EXHAUSTED'));

-- No unit of stock depends on one message: a cancelled order's reservation is released by a
-- direct call to product, and this records when product confirmed it. Reconciliation
-- releases those of cancelled orders still unconfirmed (ORDER_CANCELLED is the guarantee).
ALTER TABLE orders ADD COLUMN stock_released_at TIMESTAMPTZ;
CREATE INDEX orders_cancelled_stock_unconfirmed ON orders (updated_at, id)
    WHERE status = 'CANCELLED' AND stock_released_at IS NULL;

-- The re-check tells staff when a fallback order's product does not exist.
ALTER TABLE manual_reviews DROP CONSTRAINT manual_reviews_reason_check;
ALTER TABLE manual_reviews ADD CONSTRAINT manual_reviews_reason_check CHECK (reason IN (
    'AVAILABILITY_UNVERIFIED', 'OUT_OF_STOCK_AFTER_FALLBACK', 'UNKNOWN_PRODUCT',
    'INVALID_STATUS_TRANSITION', 'DELIVERY_RETRIES_EXHAUSTED', 'DELIVERY_FAILED',
    'STALE_PENDING_SHIPMENT'));
