-- baton's tables. Ids are hyphenated UUID text; times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS baton_workflows (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    inserted_at INTEGER NOT NULL,
    -- Set in the claim transaction: the workflow is announced and closed to changes.
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS baton_workflows_open ON baton_workflows (inserted_at) WHERE finished_at IS NULL;
CREATE INDEX IF NOT EXISTS baton_workflows_finished ON baton_workflows (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS baton_steps (
    id               TEXT PRIMARY KEY,
    workflow_id      TEXT NOT NULL REFERENCES baton_workflows (id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    kind             TEXT NOT NULL,
    args             TEXT NOT NULL DEFAULT 'null',
    state            TEXT NOT NULL CHECK (state IN ('scheduled', 'available', 'executing', 'retryable', 'completed', 'discarded', 'cancelled')),
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    pending_deps     INTEGER NOT NULL DEFAULT 0,
    run_at           INTEGER NOT NULL,
    owner            TEXT,
    lease_expires_at INTEGER,
    last_error       TEXT,
    inserted_at      INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    UNIQUE (workflow_id, name)
);
CREATE INDEX IF NOT EXISTS baton_steps_outstanding ON baton_steps (workflow_id)
    WHERE state IN ('scheduled', 'available', 'executing', 'retryable');
CREATE INDEX IF NOT EXISTS baton_steps_runnable ON baton_steps (run_at)
    WHERE state IN ('available', 'retryable');
CREATE INDEX IF NOT EXISTS baton_steps_leased ON baton_steps (lease_expires_at)
    WHERE state = 'executing';

CREATE TABLE IF NOT EXISTS baton_step_deps (
    step_id    TEXT NOT NULL REFERENCES baton_steps (id) ON DELETE CASCADE,
    depends_on TEXT NOT NULL REFERENCES baton_steps (id) ON DELETE CASCADE,
    PRIMARY KEY (step_id, depends_on)
);
CREATE INDEX IF NOT EXISTS baton_step_deps_depends_on ON baton_step_deps (depends_on);

CREATE TABLE IF NOT EXISTS baton_workflow_completions (
    workflow_id  TEXT PRIMARY KEY,
    -- Monotonic position of the claim: the cursor `baton watch` follows.
    seq          INTEGER NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    outcome      TEXT NOT NULL CHECK (outcome IN ('completed', 'failed')),
    failed_steps TEXT NOT NULL,
    completed    INTEGER NOT NULL,
    discarded    INTEGER NOT NULL,
    cancelled    INTEGER NOT NULL,
    detected_by  TEXT NOT NULL CHECK (detected_by IN ('prompt', 'sweep')),
    node         TEXT NOT NULL,
    finished_at  INTEGER NOT NULL
);
-- A counter that never goes down, even when old claims are pruned.
CREATE TABLE IF NOT EXISTS baton_sequence (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO baton_sequence (name, value) VALUES ('completions', 0);
