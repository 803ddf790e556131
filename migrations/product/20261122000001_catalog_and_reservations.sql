-- Catalog with stock, and reservations holding stock for orders.

CREATE TABLE products (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    price_cents   BIGINT NOT NULL CHECK (price_cents >= 0),
    -- Units in the warehouse not yet shipped to an order (reserved units included).
    stock_on_hand INTEGER NOT NULL CHECK (stock_on_hand >= 0),
    -- Units held by ACTIVE reservations.
    reserved      INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT products_reserved_within_stock CHECK (reserved <= stock_on_hand)
);

CREATE TABLE reservations (
    order_id   UUID PRIMARY KEY,
    status     TEXT NOT NULL CHECK (status IN ('ACTIVE', 'COMMITTED', 'RELEASED', 'EXPIRED')),
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The expiry sweep reads only ACTIVE rows, oldest deadline first.
CREATE INDEX reservations_active_by_expiry ON reservations (expires_at) WHERE status = 'ACTIVE';

CREATE TABLE reservation_items (
    order_id   UUID NOT NULL REFERENCES reservations (order_id),
    product_id TEXT NOT NULL REFERENCES products (id),
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);

CREATE INDEX reservation_items_by_product ON reservation_items (product_id);
