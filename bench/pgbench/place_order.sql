-- The transaction sales commits when it records an order (services/sales/src/order_saga.rs
-- `write` and orders/store.rs `insert`): the order, its items, the first history row, the
-- ORDER_CREATED outbox row carrying the full order, the delivery retry row and the
-- idempotency key. Run by tests/benches/orders.rs with `pgbench --protocol=prepared`
-- against a database migrated like sales', as the ceiling an order can reach.
\set qty random(1, 3)
BEGIN;
INSERT INTO orders (id, customer_id, status, shipping_address, requires_manual_review, fallback_used)
VALUES (gen_random_uuid(), 'pgbench-customer', 'PENDING_SHIPMENT',
        '{"recipient": "Bench", "line1": "1 Example Street", "city": "Berlin", "postal_code": "10115", "country": "DE"}',
        false, false)
RETURNING id AS order_id, version AS order_version \gset
INSERT INTO order_items (order_id, line_no, product_id, quantity)
SELECT :order_id::uuid, * FROM unnest(ARRAY[1]::int[], ARRAY['SKU-KEYBOARD']::text[], ARRAY[:qty::int]);
INSERT INTO order_status_history (order_id, from_status, to_status, reason)
VALUES (:order_id::uuid, NULL, 'PENDING_SHIPMENT', 'order placed');
INSERT INTO outbox_events (id, aggregate_type, aggregate_id, aggregate_version, event_type, payload)
VALUES (gen_random_uuid(), 'order', :order_id::uuid, :order_version::int, 'ORDER_CREATED',
        jsonb_build_object(
          'id', :order_id::text, 'customer_id', 'pgbench-customer', 'status', 'PENDING_SHIPMENT',
          'items', jsonb_build_array(jsonb_build_object('product_id', 'SKU-KEYBOARD', 'quantity', :qty::int)),
          'shipping_address', jsonb_build_object('recipient', 'Bench', 'line1', '1 Example Street',
                                                 'city', 'Berlin', 'postal_code', '10115', 'country', 'DE'),
          'requires_manual_review', false, 'fallback_used', false, 'delivery_id', NULL,
          'version', :order_version::int, 'created_at', now(), 'updated_at', now()));
INSERT INTO delivery_retries (order_id, next_attempt_at) VALUES (:order_id::uuid, now() + interval '60 seconds');
INSERT INTO idempotency_keys (customer_id, key, request_hash, order_id, response_status)
VALUES ('pgbench-customer', gen_random_uuid()::text, 'request-hash', :order_id::uuid, 201);
COMMIT;
