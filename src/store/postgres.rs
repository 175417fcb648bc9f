//! PostgreSQL: production and multi-node.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Row, migrate::Migrator};
use uuid::Uuid;

use super::{
    AttemptEnd, FetchedStep, NewClaim, Outstanding, SettlementRows, StoreOptions, Transition,
    WorkflowStatus, redact_url,
};
use crate::error::{Error, Result};
use crate::event::{DetectedBy, Outcome, StepCounts, WorkflowFinished};
use crate::ids::{NodeId, StepId, WorkflowId};
use crate::state::{StepState, TerminalState};
use crate::workflow::Workflow;

/// The channel claims are announced on to other nodes.
pub(crate) const CHANNEL: &str = "baton_finished";
const LEDGER: &str = "_baton_migrations";

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// A PostgreSQL store over one pool.
#[derive(Clone, Debug)]
pub(crate) struct PgStore {
    pub(crate) pool: PgPool,
}

impl PgStore {
    pub(crate) async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        let connect = PgConnectOptions::from_str(url).map_err(|e| Error::InvalidUrl {
            url: redact_url(url),
            reason: e.to_string(),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(Error::db("connecting to PostgreSQL"))?;
        Ok(Self { pool })
    }

    pub(crate) fn backend(&self) -> &'static str {
        "postgres"
    }

    fn migrator() -> Migrator {
        let mut m = Migrator {
            migrations: MIGRATOR.migrations.clone(),
            ..Migrator::DEFAULT
        };
        m.dangerous_set_table_name(LEDGER);
        m
    }

    pub(crate) async fn migrate(&self) -> Result<()> {
        Self::migrator().run(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn ensure_migrated(&self) -> Result<()> {
        const SQL: &str = "SELECT count(*) FROM _baton_migrations WHERE success";
        let applied: i64 = sqlx::query_scalar(SQL)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(ref db) if db.code().as_deref() == Some("42P01") => {
                    Error::NotMigrated
                }
                e => Error::db("reading the migration ledger")(e),
            })?;
        if (applied as usize) < MIGRATOR.migrations.len() {
            return Err(Error::NotMigrated);
        }
        Ok(())
    }

    pub(crate) async fn insert_workflow(&self, wf: &Workflow) -> Result<()> {
        const WORKFLOW: &str = "INSERT INTO baton_workflows (id, name) VALUES ($1, $2)";
        const STEPS: &str = "INSERT INTO baton_steps \
             (id, workflow_id, name, kind, args, state, max_attempts, pending_deps) \
             SELECT u.id, $1, u.name, u.kind, u.args::jsonb, \
                    CASE WHEN u.deps = 0 THEN 'available' ELSE 'scheduled' END, u.max_attempts, u.deps \
             FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int4[]) \
                  AS u(id, name, kind, args, max_attempts, deps)";
        const DEPS: &str = "INSERT INTO baton_step_deps (step_id, depends_on) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[])";
        let ctx = "inserting a workflow";
        let mut tx = self.pool.begin().await.map_err(Error::db(ctx))?;
        sqlx::query(WORKFLOW)
            .bind(wf.id.0)
            .bind(&wf.name)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        if !wf.steps.is_empty() {
            let ids: Vec<Uuid> = wf.steps.iter().map(|s| s.id.0).collect();
            let names: Vec<&str> = wf.steps.iter().map(|s| s.name.as_str()).collect();
            let kinds: Vec<&str> = wf.steps.iter().map(|s| s.kind.as_str()).collect();
            let args: Vec<String> = wf.steps.iter().map(|s| s.args.to_string()).collect();
            let max: Vec<i32> = wf.steps.iter().map(|s| s.max_attempts as i32).collect();
            let deps: Vec<i32> = wf.steps.iter().map(|s| s.depends_on.len() as i32).collect();
            sqlx::query(STEPS)
                .bind(wf.id.0)
                .bind(ids)
                .bind(names)
                .bind(kinds)
                .bind(args)
                .bind(max)
                .bind(deps)
                .execute(&mut *tx)
                .await
                .map_err(Error::db(ctx))?;
            let edges = wf.edges();
            if !edges.is_empty() {
                let (from, to): (Vec<Uuid>, Vec<Uuid>) =
                    edges.iter().map(|(a, b)| (a.0, b.0)).unzip();
                sqlx::query(DEPS)
                    .bind(from)
                    .bind(to)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db(ctx))?;
            }
        }
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(())
    }

    pub(crate) async fn outstanding(
        &self,
        wf: WorkflowId,
        believed_terminal: &[StepId],
    ) -> Result<Outstanding> {
        // Lagging overlay entries by primary key, plus at most one other outstanding step through
        // the partial index: O(|believed_terminal| + 1) rows, whatever the workflow's width.
        const SQL: &str = "SELECT s.id FROM baton_steps s \
             WHERE s.id = ANY($2) AND s.state IN ('scheduled', 'available', 'executing', 'retryable') \
             UNION ALL \
             (SELECT NULL FROM baton_steps s WHERE s.workflow_id = $1 \
                AND s.state IN ('scheduled', 'available', 'executing', 'retryable') \
                AND s.id <> ALL($2) LIMIT 1)";
        let ids: Vec<Uuid> = believed_terminal.iter().map(|s| s.0).collect();
        let rows: Vec<Option<Uuid>> = sqlx::query_scalar(SQL)
            .bind(wf.0)
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db("reading outstanding steps"))?;
        let mut out = Outstanding::default();
        for row in rows {
            match row {
                Some(id) => out.lagging.push(StepId(id)),
                None => out.others = true,
            }
        }
        Ok(out)
    }

    pub(crate) async fn settlement_rows(&self, wf: WorkflowId) -> Result<Option<SettlementRows>> {
        const NAME: &str = "SELECT name FROM baton_workflows WHERE id = $1";
        const COMPLETED: &str =
            "SELECT count(*) FROM baton_steps WHERE workflow_id = $1 AND state = 'completed'";
        const OTHERS: &str = "SELECT id, name, state FROM baton_steps \
             WHERE workflow_id = $1 AND state <> 'completed'";
        let ctx = "reading a workflow's outcome";
        let mut tx = self.pool.begin().await.map_err(Error::db(ctx))?;
        let Some(name): Option<String> = sqlx::query_scalar(NAME)
            .bind(wf.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(ctx))?
        else {
            return Ok(None);
        };
        let completed: i64 = sqlx::query_scalar(COMPLETED)
            .bind(wf.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        let rows = sqlx::query(OTHERS)
            .bind(wf.0)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        tx.commit().await.map_err(Error::db(ctx))?;
        let not_completed = rows
            .iter()
            .map(|r| {
                let state: String = r.get(2);
                (
                    StepId(r.get(0)),
                    r.get::<String, _>(1),
                    state.parse().unwrap_or(StepState::Scheduled),
                )
            })
            .collect();
        Ok(Some(SettlementRows {
            name,
            completed: completed as u64,
            not_completed,
        }))
    }

    pub(crate) async fn claim(&self, c: &NewClaim<'_>) -> Result<Option<i64>> {
        const INSERT: &str = "INSERT INTO baton_workflow_completions \
             (workflow_id, name, outcome, failed_steps, completed, discarded, cancelled, detected_by, node, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (workflow_id) DO NOTHING RETURNING seq";
        const CLOSE: &str = "UPDATE baton_workflows SET finished_at = $2 WHERE id = $1";
        const NOTIFY: &str = "SELECT pg_notify($1, $2)";
        let ctx = "claiming a workflow";
        let mut tx = self.pool.begin().await.map_err(Error::db(ctx))?;
        let seq: Option<i64> = sqlx::query_scalar(INSERT)
            .bind(c.workflow_id.0)
            .bind(c.name)
            .bind(c.outcome.as_str())
            .bind(sqlx::types::Json(c.failed_steps))
            .bind(c.counts.completed as i64)
            .bind(c.counts.discarded as i64)
            .bind(c.counts.cancelled as i64)
            .bind(c.detected_by.as_str())
            .bind(&c.node.0)
            .bind(c.finished_at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        let Some(seq) = seq else {
            tx.rollback().await.map_err(Error::db(ctx))?;
            return Ok(None);
        };
        sqlx::query(CLOSE)
            .bind(c.workflow_id.0)
            .bind(c.finished_at)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        // Inside the claim transaction: other nodes hear of it if and only if it commits.
        sqlx::query(NOTIFY)
            .bind(CHANNEL)
            .bind(format!("{}:{}", seq, c.workflow_id))
            .execute(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(Some(seq))
    }

    pub(crate) async fn settled_open_workflows(&self, limit: u32) -> Result<Vec<WorkflowId>> {
        const SQL: &str = "SELECT w.id FROM baton_workflows w WHERE w.finished_at IS NULL \
             AND NOT EXISTS (SELECT 1 FROM baton_steps s WHERE s.workflow_id = w.id \
                 AND s.state IN ('scheduled', 'available', 'executing', 'retryable')) \
             ORDER BY w.inserted_at LIMIT $1";
        let ids: Vec<Uuid> = sqlx::query_scalar(SQL)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db("sweeping for settled workflows"))?;
        Ok(ids.into_iter().map(WorkflowId).collect())
    }

    pub(crate) async fn completion(&self, wf: WorkflowId) -> Result<Option<WorkflowFinished>> {
        const SQL: &str = "SELECT workflow_id, seq, name, outcome, failed_steps, completed, discarded, \
             cancelled, detected_by, node, finished_at FROM baton_workflow_completions WHERE workflow_id = $1";
        let row = sqlx::query(SQL)
            .bind(wf.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db("reading a completion"))?;
        Ok(row.as_ref().map(completion_from_row))
    }

    pub(crate) async fn completions_after(
        &self,
        seq: i64,
        limit: u32,
    ) -> Result<Vec<WorkflowFinished>> {
        const SQL: &str = "SELECT workflow_id, seq, name, outcome, failed_steps, completed, discarded, \
             cancelled, detected_by, node, finished_at FROM baton_workflow_completions \
             WHERE seq > $1 ORDER BY seq LIMIT $2";
        let rows = sqlx::query(SQL)
            .bind(seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db("reading completions"))?;
        Ok(rows.iter().map(completion_from_row).collect())
    }

    pub(crate) async fn status(&self, wf: WorkflowId) -> Result<Option<WorkflowStatus>> {
        const NAME: &str = "SELECT name FROM baton_workflows WHERE id = $1";
        const COUNTS: &str =
            "SELECT state, count(*) FROM baton_steps WHERE workflow_id = $1 GROUP BY state";
        let ctx = "reading a workflow's status";
        let Some(name): Option<String> = sqlx::query_scalar(NAME)
            .bind(wf.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(ctx))?
        else {
            return Ok(None);
        };
        let rows = sqlx::query(COUNTS)
            .bind(wf.0)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db(ctx))?;
        let counts: BTreeMap<String, u64> = rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u64))
            .collect();
        Ok(Some(WorkflowStatus {
            id: wf,
            name,
            counts,
            finished: self.completion(wf).await?,
        }))
    }

    pub(crate) async fn fetch(
        &self,
        node: &NodeId,
        kinds: &[String],
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<FetchedStep>> {
        const SQL: &str = "UPDATE baton_steps SET state = 'executing', attempt = attempt + 1, \
                 owner = $1, started_at = now(), lease_expires_at = now() + $4 * interval '1 millisecond' \
             WHERE id IN (SELECT id FROM baton_steps \
                 WHERE state IN ('available', 'retryable') AND run_at <= now() AND kind = ANY($2) \
                 ORDER BY run_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING id, workflow_id, name, kind, args, attempt, max_attempts";
        let rows = sqlx::query(SQL)
            .bind(&node.0)
            .bind(kinds)
            .bind(i64::from(limit))
            .bind(lease.as_millis() as f64)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db("fetching steps"))?;
        Ok(rows
            .iter()
            .map(|r| FetchedStep {
                id: StepId(r.get(0)),
                workflow_id: WorkflowId(r.get(1)),
                name: r.get(2),
                kind: r.get(3),
                args: r.get(4),
                attempt: r.get::<i32, _>(5) as u32,
                max_attempts: r.get::<i32, _>(6) as u32,
            })
            .collect())
    }

    pub(crate) async fn end_attempt(
        &self,
        step: &FetchedStep,
        end: &AttemptEnd,
    ) -> Result<Vec<Transition>> {
        // Every write is fenced by (id, attempt, executing): a stale attempt changes nothing.
        const COMPLETE: &str = "UPDATE baton_steps SET state = 'completed', finished_at = now(), \
                 owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND attempt = $2 AND state = 'executing'";
        const PROMOTE: &str = "UPDATE baton_steps SET pending_deps = pending_deps - 1, \
                 state = CASE WHEN pending_deps = 1 THEN 'available' ELSE state END, run_at = now() \
             WHERE state = 'scheduled' \
               AND id IN (SELECT step_id FROM baton_step_deps WHERE depends_on = $1)";
        const RETRY: &str = "UPDATE baton_steps SET state = 'retryable', last_error = $3, \
                 run_at = now() + $4 * interval '1 millisecond', owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND attempt = $2 AND state = 'executing'";
        const DISCARD: &str = "UPDATE baton_steps SET state = 'discarded', last_error = $3, \
                 finished_at = now(), owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND attempt = $2 AND state = 'executing'";
        const CASCADE: &str = "WITH RECURSIVE dependents(id) AS ( \
                 SELECT step_id FROM baton_step_deps WHERE depends_on = $1 \
                 UNION SELECT d.step_id FROM baton_step_deps d JOIN dependents x ON d.depends_on = x.id) \
             UPDATE baton_steps SET state = 'cancelled', finished_at = now(), last_error = $2 \
             WHERE id IN (SELECT id FROM dependents) \
               AND state IN ('scheduled', 'available', 'executing', 'retryable') \
             RETURNING id";
        let ctx = "ending a step's attempt";
        let mut tx = self.pool.begin().await.map_err(Error::db(ctx))?;
        let mut transitions = Vec::new();
        let attempt = step.attempt as i32;
        match end {
            AttemptEnd::Completed => {
                let done = sqlx::query(COMPLETE)
                    .bind(step.id.0)
                    .bind(attempt)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db(ctx))?;
                if done.rows_affected() == 1 {
                    sqlx::query(PROMOTE)
                        .bind(step.id.0)
                        .execute(&mut *tx)
                        .await
                        .map_err(Error::db(ctx))?;
                    transitions.push(transition(step, step.id, TerminalState::Completed));
                }
            }
            AttemptEnd::Retry { error, delay } => {
                sqlx::query(RETRY)
                    .bind(step.id.0)
                    .bind(attempt)
                    .bind(error)
                    .bind(delay.as_millis() as f64)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db(ctx))?;
            }
            AttemptEnd::Discarded { error } => {
                let done = sqlx::query(DISCARD)
                    .bind(step.id.0)
                    .bind(attempt)
                    .bind(error)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db(ctx))?;
                if done.rows_affected() == 1 {
                    transitions.push(transition(step, step.id, TerminalState::Discarded));
                    let reason = format!("dependency {:?} did not complete", step.name);
                    let cancelled: Vec<Uuid> = sqlx::query_scalar(CASCADE)
                        .bind(step.id.0)
                        .bind(reason)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(Error::db(ctx))?;
                    transitions.extend(
                        cancelled
                            .into_iter()
                            .map(|id| transition(step, StepId(id), TerminalState::Cancelled)),
                    );
                }
            }
        }
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(transitions)
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

fn transition(step: &FetchedStep, id: StepId, state: TerminalState) -> Transition {
    Transition {
        workflow_id: step.workflow_id,
        step_id: id,
        state,
    }
}

fn completion_from_row(r: &sqlx::postgres::PgRow) -> WorkflowFinished {
    let failed: sqlx::types::Json<Vec<String>> = r.get(4);
    WorkflowFinished {
        workflow_id: WorkflowId(r.get(0)),
        seq: r.get(1),
        name: r.get(2),
        outcome: Outcome::parse(r.get(3)),
        failed_steps: failed.0,
        counts: StepCounts {
            completed: r.get::<i64, _>(5) as u64,
            discarded: r.get::<i64, _>(6) as u64,
            cancelled: r.get::<i64, _>(7) as u64,
        },
        detected_by: DetectedBy::parse(r.get(8)),
        node: NodeId(r.get(9)),
        finished_at: r.get::<DateTime<Utc>, _>(10),
    }
}
