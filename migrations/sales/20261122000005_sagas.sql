-- Sagas run by crates/saga: one row per saga instance, one row per step execution.

-- A saga's state. The orchestrator that runs it holds a lease (locked_by, locked_until)
-- and renews it while running; an expired lease on an unfinished saga means its owner
-- crashed, and a recovery sweep resumes it.
CREATE TABLE saga_instances (
    id                 UUID PRIMARY KEY,
    saga_type          TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN (
                           'RUNNING', 'COMPENSATING', 'COMPLETED', 'COMPENSATED', 'FAILED', 'WAITING')),
    -- The saga context as the last completed sequential step left it.
    context            JSONB NOT NULL,
    -- Outputs of parallel steps, keyed by step name.
    outputs            JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- The step being run or compensated; where it waits (WAITING) or which compensation failed (FAILED).
    current_step       TEXT,
    -- The action whose failure started compensation (NULL when compensation was requested).
    failed_step        TEXT,
    -- Why the saga left the happy path: the failing step's error, the cancel reason, or the park reason.
    error              TEXT,
    -- Set when the saga ended FAILED: the compensation that could not be done, and why.
    compensation_error TEXT,
    locked_by          TEXT,
    locked_until       TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at       TIMESTAMPTZ
);

-- The recovery sweep reads only unfinished sagas, by lease expiry.
CREATE INDEX saga_instances_unfinished ON saga_instances (locked_until)
    WHERE status IN ('RUNNING', 'COMPENSATING');
-- Staff look for sagas waiting for a person or a retry.
CREATE INDEX saga_instances_needing_attention ON saga_instances (status, updated_at)
    WHERE status IN ('FAILED', 'WAITING');

-- Every execution of an action or a compensation, attempt by attempt. A row still RUNNING
-- when a saga is resumed belonged to a crashed owner and is marked INTERRUPTED.
CREATE TABLE saga_steps (
    id          BIGSERIAL PRIMARY KEY,
    saga_id     UUID NOT NULL REFERENCES saga_instances (id) ON DELETE CASCADE,
    step        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('ACTION', 'COMPENSATION')),
    -- 1, 2, ... per step and kind across resumptions; 0 for a skipped step.
    attempt     INTEGER NOT NULL CHECK (attempt >= 0),
    status      TEXT NOT NULL CHECK (status IN (
                    'RUNNING', 'SUCCEEDED', 'FAILED', 'SKIPPED', 'PARKED', 'INTERRUPTED')),
    -- What a successful action produced: the new context, or a parallel step's output.
    result      JSONB,
    error       TEXT,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ
);

CREATE INDEX saga_steps_by_saga ON saga_steps (saga_id, id);
