-- baton's tables. Workflows and their steps; the completions table is the exactly-once claim.
CREATE TABLE IF NOT EXISTS baton_workflows (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    -- Set in the claim transaction: the workflow is announced and closed to changes.
    finished_at timestamptz
);
-- The sweep's scan: open workflows only, never the history.
CREATE INDEX IF NOT EXISTS baton_workflows_open ON baton_workflows (inserted_at) WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS baton_workflows_finished ON baton_workflows (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS baton_steps (
    id               uuid PRIMARY KEY,
    workflow_id      uuid NOT NULL REFERENCES baton_workflows (id) ON DELETE CASCADE,
    name             text NOT NULL,
    kind             text NOT NULL,
    args             jsonb NOT NULL DEFAULT 'null',
    state            text NOT NULL CHECK (state IN ('scheduled', 'available', 'executing', 'retryable', 'completed', 'discarded', 'cancelled')),
    attempt          integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL CHECK (max_attempts >= 1),
    -- Dependencies not yet completed; the step becomes available when this reaches 0.
    pending_deps     integer NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),
    owner            text,
    lease_expires_at timestamptz,
    last_error       text,
    inserted_at      timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    UNIQUE (workflow_id, name)
);
-- Detection: the non-terminal steps of one workflow.
CREATE INDEX IF NOT EXISTS baton_steps_outstanding ON baton_steps (workflow_id)
    WHERE state IN ('scheduled', 'available', 'executing', 'retryable');
-- The runner's fetch: runnable steps by due time.
CREATE INDEX IF NOT EXISTS baton_steps_runnable ON baton_steps (run_at)
    WHERE state IN ('available', 'retryable');
-- Rescue: executing steps by lease.
CREATE INDEX IF NOT EXISTS baton_steps_leased ON baton_steps (lease_expires_at)
    WHERE state = 'executing';

CREATE TABLE IF NOT EXISTS baton_step_deps (
    step_id    uuid NOT NULL REFERENCES baton_steps (id) ON DELETE CASCADE,
    depends_on uuid NOT NULL REFERENCES baton_steps (id) ON DELETE CASCADE,
    PRIMARY KEY (step_id, depends_on)
);
CREATE INDEX IF NOT EXISTS baton_step_deps_depends_on ON baton_step_deps (depends_on);

CREATE TABLE IF NOT EXISTS baton_workflow_completions (
    workflow_id  uuid PRIMARY KEY,
    -- Monotonic position of the claim: the cursor nodes catch up from.
    seq          bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    name         text NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('completed', 'failed')),
    failed_steps jsonb NOT NULL,
    completed    bigint NOT NULL,
    discarded    bigint NOT NULL,
    cancelled    bigint NOT NULL,
    detected_by  text NOT NULL CHECK (detected_by IN ('prompt', 'sweep')),
    node         text NOT NULL,
    finished_at  timestamptz NOT NULL
);
