-- The reservation keeper opens RESERVATION_LAPSED when an order's reservation expired while
-- its ORDER_CREATED waited for the broker and product no longer has the stock to take it again.
ALTER TABLE manual_reviews DROP CONSTRAINT manual_reviews_reason_check;
ALTER TABLE manual_reviews ADD CONSTRAINT manual_reviews_reason_check CHECK (reason IN (
    'AVAILABILITY_UNVERIFIED', 'OUT_OF_STOCK_AFTER_FALLBACK', 'UNKNOWN_PRODUCT',
    'RESERVATION_LAPSED', 'INVALID_STATUS_TRANSITION', 'DELIVERY_RETRIES_EXHAUSTED',
    'DELIVERY_FAILED', 'STALE_PENDING_SHIPMENT'));
