-- A gap-free cursor over claims. `seq` is taken at insert but a claim becomes visible at commit,
-- so a reader following `seq` can pass over one that commits late. The claiming transaction's id
-- can be followed safely: rows whose id is below the oldest running transaction
-- (pg_snapshot_xmin) can no longer be joined by earlier ones.
ALTER TABLE baton_workflow_completions
    ADD COLUMN IF NOT EXISTS xact_id xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS baton_workflow_completions_xact ON baton_workflow_completions (xact_id);
