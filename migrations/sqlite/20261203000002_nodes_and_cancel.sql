-- Process incarnations and their leases (see the Postgres migration for the rationale).
CREATE TABLE IF NOT EXISTS baton_nodes (
    id               TEXT PRIMARY KEY,
    started_at       INTEGER NOT NULL,
    heartbeat_at     INTEGER NOT NULL,
    lease_expires_at INTEGER NOT NULL
);
ALTER TABLE baton_steps ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS baton_steps_owner ON baton_steps (owner) WHERE state = 'executing';
