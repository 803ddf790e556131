-- Reconciliation with delivery, and the staff review queue.

-- When reconciliation last compared the order with delivery: each run takes the
-- least recently checked candidates first, so a large backlog rotates.
ALTER TABLE orders ADD COLUMN last_reconciled_at TIMESTAMPTZ;

-- Reconciliation candidates: orders with a delivery that are still moving, or flagged.
CREATE INDEX orders_reconciliation_candidates ON orders (last_reconciled_at NULLS FIRST, updated_at, id)
    WHERE delivery_id IS NOT NULL AND (status IN ('PENDING_SHIPMENT', 'SHIPPED') OR requires_manual_review);

-- One row per reconciliation run (runs never overlap: an advisory lock serialises them).
CREATE TABLE reconciliation_runs (
    id          UUID PRIMARY KEY,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    checked     INTEGER NOT NULL DEFAULT 0,
    fixed       INTEGER NOT NULL DEFAULT 0,
    flagged     INTEGER NOT NULL DEFAULT 0,
    errors      INTEGER NOT NULL DEFAULT 0,
    -- RUNNING; SUCCEEDED; PARTIAL (some orders failed); FAILED (the run itself failed).
    status      TEXT NOT NULL CHECK (status IN ('RUNNING', 'SUCCEEDED', 'PARTIAL', 'FAILED')),
    error       TEXT
);

CREATE INDEX reconciliation_runs_by_start ON reconciliation_runs (started_at DESC);

-- The staff queue: reviews by status, oldest first (keyset on created_at, id).
CREATE INDEX manual_reviews_by_status ON manual_reviews (status, created_at, id);
-- An order's reviews, for its detail view and for resolving them.
CREATE INDEX manual_reviews_by_order ON manual_reviews (order_id, created_at);
