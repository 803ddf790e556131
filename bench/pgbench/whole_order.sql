-- The whole order's least database work, on the project's own schemas (one database holding
-- the three services' schemas `sales`, `product`, `delivery`, migrated as each service's):
-- the five transactions an order needs whatever the code around them, with the same three
-- products as tests/benches/orders.rs.
--   1. product reserves (reservation, its item, the product's reserved count);
--   2. sales records the order (order, item, history, ORDER_CREATED, delivery retry row,
--      idempotency key, the saga with its first two steps);
--   3. delivery creates the delivery (and its first history row);
--   4. sales stores the delivery id (DELIVERY_INITIATED, retry row done, saga completed);
--   5. product's consumer commits the reservation (inbox, version, stock), the relay marking
--      the order's two events SENT beside it.
-- Run by tests/benches/orders.rs with `pgbench --protocol=prepared`; one script run is one
-- order.
\set p random(1, 3)
\set qty random(1, 3)
BEGIN;
INSERT INTO product.reservations (order_id, status, expires_at)
VALUES (gen_random_uuid(), 'ACTIVE', now() + interval '15 minutes') RETURNING order_id \gset
SELECT id, stock_on_hand - reserved FROM product.products
WHERE id = (ARRAY['SKU-KEYBOARD', 'SKU-MOUSE', 'SKU-DOCK'])[:p] FOR UPDATE;
UPDATE product.products SET reserved = reserved + :qty, updated_at = now()
WHERE id = (ARRAY['SKU-KEYBOARD', 'SKU-MOUSE', 'SKU-DOCK'])[:p];
INSERT INTO product.reservation_items (order_id, product_id, quantity)
VALUES (:order_id::uuid, (ARRAY['SKU-KEYBOARD', 'SKU-MOUSE', 'SKU-DOCK'])[:p], :qty);
COMMIT;
BEGIN;
INSERT INTO sales.orders (id, customer_id, status, shipping_address, requires_manual_review, fallback_used)
VALUES (:order_id::uuid, 'pgbench-customer', 'PENDING_SHIPMENT',
        '{"recipient": "Bench", "line1": "1 Example Street", "city": "Berlin", "postal_code": "10115", "country": "DE"}',
        false, false)
RETURNING version AS order_version \gset
INSERT INTO sales.order_items (order_id, line_no, product_id, quantity)
VALUES (:order_id::uuid, 1, (ARRAY['SKU-KEYBOARD', 'SKU-MOUSE', 'SKU-DOCK'])[:p], :qty);
INSERT INTO sales.order_status_history (order_id, from_status, to_status, reason)
VALUES (:order_id::uuid, NULL, 'PENDING_SHIPMENT', 'order placed');
INSERT INTO sales.outbox_events (id, aggregate_type, aggregate_id, aggregate_version, event_type, payload)
VALUES (gen_random_uuid(), 'order', :order_id::uuid, :order_version::int, 'ORDER_CREATED',
        jsonb_build_object('id', :order_id::text, 'customer_id', 'pgbench-customer', 'status', 'PENDING_SHIPMENT',
          'items', jsonb_build_array(jsonb_build_object('product_id', 'SKU', 'quantity', :qty::int)),
          'version', :order_version::int))
RETURNING id AS created_event \gset
INSERT INTO sales.delivery_retries (order_id, next_attempt_at) VALUES (:order_id::uuid, now() + interval '60 seconds');
INSERT INTO sales.idempotency_keys (customer_id, key, request_hash, order_id, response_status)
VALUES ('pgbench-customer', gen_random_uuid()::text, 'request-hash', :order_id::uuid, 201);
INSERT INTO sales.saga_instances (id, saga_type, status, context, locked_by, locked_until)
VALUES (:order_id::uuid, 'order', 'RUNNING', jsonb_build_object('order_id', :order_id::text), 'pgbench',
        now() + interval '30 seconds');
INSERT INTO sales.saga_steps (saga_id, step, kind, attempt, status, started_at, finished_at)
VALUES (:order_id::uuid, 'reserve_inventory', 'ACTION', 1, 'SUCCEEDED', now(), now()),
       (:order_id::uuid, 'record_order', 'ACTION', 1, 'SUCCEEDED', now(), now());
COMMIT;
BEGIN;
INSERT INTO delivery.deliveries (id, order_id, status, address, items)
VALUES (gen_random_uuid(), :order_id::uuid, 'CREATED', '{"recipient": "Bench"}', '[]')
ON CONFLICT (order_id) DO NOTHING RETURNING id AS delivery_id \gset
INSERT INTO delivery.delivery_status_history (delivery_id, from_status, to_status)
VALUES (:delivery_id::uuid, NULL, 'CREATED');
COMMIT;
BEGIN;
UPDATE sales.orders SET delivery_id = :delivery_id::uuid, version = version + 1, updated_at = now()
WHERE id = :order_id::uuid AND delivery_id IS NULL RETURNING version AS delivered_version \gset
INSERT INTO sales.outbox_events (id, aggregate_type, aggregate_id, aggregate_version, event_type, payload)
VALUES (gen_random_uuid(), 'order', :order_id::uuid, :delivered_version::int, 'DELIVERY_INITIATED',
        jsonb_build_object('id', :order_id::text, 'delivery_id', :delivery_id::text))
RETURNING id AS initiated_event \gset
UPDATE sales.delivery_retries SET status = 'DONE', updated_at = now() WHERE order_id = :order_id::uuid;
UPDATE sales.saga_instances SET status = 'COMPLETED', locked_by = NULL, locked_until = NULL,
       completed_at = now(), updated_at = now()
WHERE id = :order_id::uuid AND locked_by = 'pgbench';
INSERT INTO sales.saga_steps (saga_id, step, kind, attempt, status, started_at, finished_at)
VALUES (:order_id::uuid, 'initiate_delivery', 'ACTION', 1, 'SUCCEEDED', now(), now()),
       (:order_id::uuid, 'record_delivery', 'ACTION', 1, 'SUCCEEDED', now(), now());
COMMIT;
BEGIN;
INSERT INTO product.inbox (event_id, event_type, aggregate_id, aggregate_version, outcome)
VALUES (:created_event::uuid, 'ORDER_CREATED', :order_id::uuid, 1, 'COMMITTED');
INSERT INTO product.order_versions (order_id, last_version) VALUES (:order_id::uuid, 1)
ON CONFLICT (order_id) DO UPDATE SET last_version = EXCLUDED.last_version;
UPDATE product.reservations SET status = 'COMMITTED', updated_at = now() WHERE order_id = :order_id::uuid;
UPDATE product.products SET reserved = reserved - :qty, stock_on_hand = stock_on_hand - :qty, updated_at = now()
WHERE id = (ARRAY['SKU-KEYBOARD', 'SKU-MOUSE', 'SKU-DOCK'])[:p];
UPDATE sales.outbox_events SET status = 'SENT', sent_at = now()
WHERE id IN (:created_event::uuid, :initiated_event::uuid);
COMMIT;
