-- Process incarnations and their leases: a step's owner is a node; the node's heartbeat renews
-- the lease of every step it runs. Steps of a node whose lease expired are rescued by others.
CREATE TABLE IF NOT EXISTS baton_nodes (
    id               text PRIMARY KEY,
    started_at       timestamptz NOT NULL DEFAULT now(),
    heartbeat_at     timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz NOT NULL
);
-- An operator cancelled the step's workflow while the step was executing: its owner stops it
-- cooperatively and its end is written as `cancelled`.
ALTER TABLE baton_steps ADD COLUMN IF NOT EXISTS cancel_requested boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS baton_steps_owner ON baton_steps (owner) WHERE state = 'executing';
