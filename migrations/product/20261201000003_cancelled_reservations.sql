-- A reservation released because its order was cancelled is never taken again: a late
-- ORDER_CREATED (the broker was down) for it changes nothing. Set by a release with the
-- cancellation as its reason (the direct call from sales, or ORDER_CANCELLED).
ALTER TABLE reservations ADD COLUMN order_cancelled_at TIMESTAMPTZ;
