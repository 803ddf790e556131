-- Staff accounts, one per person: the secret is kept only as an argon2id hash
-- (PHC string). A revoked account keeps its row (audits name it) and a new
-- account may reuse its name.
CREATE TABLE staff_accounts (
    id uuid PRIMARY KEY,
    name text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    secret_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE UNIQUE INDEX staff_accounts_active_name ON staff_accounts (name) WHERE revoked_at IS NULL;

-- Console sessions: the cookie's token is kept only as its SHA-256 digest; the
-- CSRF token every form carries is the session's. A session unused for the idle
-- timeout is over (and deleted when next seen).
CREATE TABLE staff_sessions (
    token_digest bytea PRIMARY KEY,
    staff_id uuid NOT NULL REFERENCES staff_accounts (id) ON DELETE CASCADE,
    csrf_token text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX staff_sessions_staff ON staff_sessions (staff_id);
