-- A saga step may reject with a typed value (e.g. insufficient stock and the short items):
-- kept as JSON beside the error text, for the caller to match on.
ALTER TABLE saga_instances ADD COLUMN rejection JSONB;
