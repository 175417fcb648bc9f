//! SQLite: the embedded default. One process, one file, WAL mode.
//!
//! Writes go through a pool of exactly one connection, so write transactions never meet
//! `SQLITE_BUSY` from each other; reads use a separate pool that WAL lets run beside the writer.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, migrate::Migrator};

use super::{
    AttemptEnd, FetchedStep, NewClaim, Outstanding, SettlementRows, StoreOptions, Transition,
    WorkflowStatus, redact_url,
};
use crate::error::{Error, Result};
use crate::event::{DetectedBy, Outcome, StepCounts, WorkflowFinished};
use crate::ids::{NodeId, StepId, WorkflowId};
use crate::state::{StepState, TerminalState};
use crate::workflow::Workflow;

const LEDGER: &str = "_baton_migrations";
/// Rows per multi-row INSERT (8 parameters each, well under SQLite's 32,766).
const INSERT_CHUNK: usize = 1_000;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// A SQLite store: one writer connection and a pool of readers.
#[derive(Clone, Debug)]
pub(crate) struct SqliteStore {
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn parse_id(s: &str) -> uuid::Uuid {
    uuid::Uuid::parse_str(s).unwrap_or_default()
}

impl SqliteStore {
    pub(crate) async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::InvalidUrl {
                url: redact_url(url),
                reason: e.to_string(),
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let ctx = "opening the SQLite database";
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await
            .map_err(Error::db(ctx))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.max_connections.clamp(1, 8))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(Error::db(ctx))?;
        Ok(Self { writer, reader })
    }

    pub(crate) fn backend(&self) -> &'static str {
        "sqlite"
    }

    pub(crate) async fn migrate(&self) -> Result<()> {
        let mut m = Migrator {
            migrations: MIGRATOR.migrations.clone(),
            ..Migrator::DEFAULT
        };
        m.dangerous_set_table_name(LEDGER);
        m.run(&self.writer).await?;
        Ok(())
    }

    pub(crate) async fn ensure_migrated(&self) -> Result<()> {
        const SQL: &str = "SELECT count(*) FROM _baton_migrations WHERE success";
        let applied: i64 = sqlx::query_scalar(SQL)
            .fetch_one(&self.reader)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(ref db) if db.message().contains("no such table") => {
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
        const WORKFLOW: &str =
            "INSERT INTO baton_workflows (id, name, inserted_at) VALUES ($1, $2, $3)";
        let ctx = "inserting a workflow";
        let now = now_ms();
        let wf_id = wf.id.to_string();
        let mut tx = self.writer.begin().await.map_err(Error::db(ctx))?;
        sqlx::query(WORKFLOW)
            .bind(&wf_id)
            .bind(&wf.name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        for chunk in wf.steps.chunks(INSERT_CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO baton_steps (id, workflow_id, name, kind, args, state, max_attempts, \
                 pending_deps, run_at, inserted_at) ",
            );
            q.push_values(chunk, |mut b, s| {
                let state = if s.depends_on.is_empty() {
                    "available"
                } else {
                    "scheduled"
                };
                b.push_bind(s.id.to_string())
                    .push_bind(&wf_id)
                    .push_bind(&s.name)
                    .push_bind(&s.kind)
                    .push_bind(s.args.to_string())
                    .push_bind(state)
                    .push_bind(s.max_attempts as i64)
                    .push_bind(s.depends_on.len() as i64)
                    .push_bind(now)
                    .push_bind(now);
            });
            q.build().execute(&mut *tx).await.map_err(Error::db(ctx))?;
        }
        for chunk in wf.edges().chunks(INSERT_CHUNK) {
            let mut q =
                QueryBuilder::<Sqlite>::new("INSERT INTO baton_step_deps (step_id, depends_on) ");
            q.push_values(chunk, |mut b, (from, to)| {
                b.push_bind(from.to_string()).push_bind(to.to_string());
            });
            q.build().execute(&mut *tx).await.map_err(Error::db(ctx))?;
        }
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(())
    }

    pub(crate) async fn outstanding(
        &self,
        wf: WorkflowId,
        believed_terminal: &[StepId],
    ) -> Result<Outstanding> {
        const SQL: &str = "SELECT s.id FROM baton_steps s \
             WHERE s.id IN (SELECT value FROM json_each($2)) \
               AND s.state IN ('scheduled', 'available', 'executing', 'retryable') \
             UNION ALL \
             SELECT * FROM (SELECT NULL FROM baton_steps s INDEXED BY baton_steps_outstanding \
                 WHERE s.workflow_id = $1 \
                   AND s.state IN ('scheduled', 'available', 'executing', 'retryable') \
                   AND s.id NOT IN (SELECT value FROM json_each($2)) LIMIT 1)";
        let ids: Vec<String> = believed_terminal.iter().map(|s| s.to_string()).collect();
        let rows: Vec<Option<String>> = sqlx::query_scalar(SQL)
            .bind(wf.to_string())
            .bind(serde_json::to_string(&ids).unwrap_or_default())
            .fetch_all(&self.reader)
            .await
            .map_err(Error::db("reading outstanding steps"))?;
        let mut out = Outstanding::default();
        for row in rows {
            match row {
                Some(id) => out.lagging.push(StepId(parse_id(&id))),
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
        let id = wf.to_string();
        let mut tx = self.reader.begin().await.map_err(Error::db(ctx))?;
        let Some(name): Option<String> = sqlx::query_scalar(NAME)
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(ctx))?
        else {
            return Ok(None);
        };
        let completed: i64 = sqlx::query_scalar(COMPLETED)
            .bind(&id)
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        let rows = sqlx::query(OTHERS)
            .bind(&id)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        tx.commit().await.map_err(Error::db(ctx))?;
        let not_completed = rows
            .iter()
            .map(|r| {
                let state: String = r.get(2);
                (
                    StepId(parse_id(r.get(0))),
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
        // One writer connection: the sequence bump, insert and close cannot interleave.
        const EXISTS: &str = "SELECT 1 FROM baton_workflow_completions WHERE workflow_id = $1";
        const BUMP: &str = "UPDATE baton_sequence SET value = value + 1 WHERE name = 'completions' \
             RETURNING value";
        const INSERT: &str = "INSERT INTO baton_workflow_completions \
             (workflow_id, seq, name, outcome, failed_steps, completed, discarded, cancelled, detected_by, node, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (workflow_id) DO NOTHING RETURNING seq";
        const CLOSE: &str = "UPDATE baton_workflows SET finished_at = $2 WHERE id = $1";
        let ctx = "claiming a workflow";
        let id = c.workflow_id.to_string();
        let mut tx = self.writer.begin().await.map_err(Error::db(ctx))?;
        let exists: Option<i64> = sqlx::query_scalar(EXISTS)
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        if exists.is_some() {
            tx.rollback().await.map_err(Error::db(ctx))?;
            return Ok(None);
        }
        let seq: i64 = sqlx::query_scalar(BUMP)
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        let finished_at = c.finished_at.timestamp_millis();
        let won: Option<i64> = sqlx::query_scalar(INSERT)
            .bind(&id)
            .bind(seq)
            .bind(c.name)
            .bind(c.outcome.as_str())
            .bind(serde_json::to_string(c.failed_steps).unwrap_or_default())
            .bind(c.counts.completed as i64)
            .bind(c.counts.discarded as i64)
            .bind(c.counts.cancelled as i64)
            .bind(c.detected_by.as_str())
            .bind(&c.node.0)
            .bind(finished_at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        if won.is_none() {
            tx.rollback().await.map_err(Error::db(ctx))?;
            return Ok(None);
        }
        sqlx::query(CLOSE)
            .bind(&id)
            .bind(finished_at)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(won)
    }

    pub(crate) async fn settled_open_workflows(&self, limit: u32) -> Result<Vec<WorkflowId>> {
        const SQL: &str = "SELECT w.id FROM baton_workflows w INDEXED BY baton_workflows_open \
             WHERE w.finished_at IS NULL \
             AND NOT EXISTS (SELECT 1 FROM baton_steps s WHERE s.workflow_id = w.id \
                 AND s.state IN ('scheduled', 'available', 'executing', 'retryable')) \
             ORDER BY w.inserted_at LIMIT $1";
        let ids: Vec<String> = sqlx::query_scalar(SQL)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(Error::db("sweeping for settled workflows"))?;
        Ok(ids.iter().map(|s| WorkflowId(parse_id(s))).collect())
    }

    pub(crate) async fn completion(&self, wf: WorkflowId) -> Result<Option<WorkflowFinished>> {
        const SQL: &str = "SELECT workflow_id, seq, name, outcome, failed_steps, completed, discarded, \
             cancelled, detected_by, node, finished_at FROM baton_workflow_completions WHERE workflow_id = $1";
        let row = sqlx::query(SQL)
            .bind(wf.to_string())
            .fetch_optional(&self.reader)
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
            .fetch_all(&self.reader)
            .await
            .map_err(Error::db("reading completions"))?;
        Ok(rows.iter().map(completion_from_row).collect())
    }

    pub(crate) async fn status(&self, wf: WorkflowId) -> Result<Option<WorkflowStatus>> {
        const NAME: &str = "SELECT name FROM baton_workflows WHERE id = $1";
        const COUNTS: &str =
            "SELECT state, count(*) FROM baton_steps WHERE workflow_id = $1 GROUP BY state";
        let ctx = "reading a workflow's status";
        let id = wf.to_string();
        let Some(name): Option<String> = sqlx::query_scalar(NAME)
            .bind(&id)
            .fetch_optional(&self.reader)
            .await
            .map_err(Error::db(ctx))?
        else {
            return Ok(None);
        };
        let rows = sqlx::query(COUNTS)
            .bind(&id)
            .fetch_all(&self.reader)
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
        // A single statement on the single writer: picking and marking cannot interleave.
        const SQL: &str = "UPDATE baton_steps SET state = 'executing', attempt = attempt + 1, \
                 owner = $1, started_at = $4, lease_expires_at = $4 + $5 \
             WHERE id IN (SELECT id FROM baton_steps INDEXED BY baton_steps_runnable \
                 WHERE state IN ('available', 'retryable') AND run_at <= $4 \
                   AND kind IN (SELECT value FROM json_each($2)) \
                 ORDER BY run_at LIMIT $3) \
             RETURNING id, workflow_id, name, kind, args, attempt, max_attempts";
        let rows = sqlx::query(SQL)
            .bind(&node.0)
            .bind(serde_json::to_string(kinds).unwrap_or_default())
            .bind(i64::from(limit))
            .bind(now_ms())
            .bind(lease.as_millis() as i64)
            .fetch_all(&self.writer)
            .await
            .map_err(Error::db("fetching steps"))?;
        Ok(rows
            .iter()
            .map(|r| FetchedStep {
                id: StepId(parse_id(r.get(0))),
                workflow_id: WorkflowId(parse_id(r.get(1))),
                name: r.get(2),
                kind: r.get(3),
                args: serde_json::from_str(r.get(4)).unwrap_or_default(),
                attempt: r.get::<i64, _>(5) as u32,
                max_attempts: r.get::<i64, _>(6) as u32,
            })
            .collect())
    }

    pub(crate) async fn end_attempt(
        &self,
        step: &FetchedStep,
        end: &AttemptEnd,
    ) -> Result<Vec<Transition>> {
        // Every write is fenced by (id, attempt, executing): a stale attempt changes nothing.
        const COMPLETE: &str = "UPDATE baton_steps SET state = 'completed', finished_at = $3, \
                 owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND attempt = $2 AND state = 'executing'";
        const PROMOTE: &str = "UPDATE baton_steps SET pending_deps = pending_deps - 1, \
                 state = CASE WHEN pending_deps = 1 THEN 'available' ELSE state END, run_at = $2 \
             WHERE state = 'scheduled' \
               AND id IN (SELECT step_id FROM baton_step_deps WHERE depends_on = $1)";
        const RETRY: &str = "UPDATE baton_steps SET state = 'retryable', last_error = $3, \
                 run_at = $4, owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND attempt = $2 AND state = 'executing'";
        const DISCARD: &str = "UPDATE baton_steps SET state = 'discarded', last_error = $3, \
                 finished_at = $4, owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND attempt = $2 AND state = 'executing'";
        const CASCADE: &str = "WITH RECURSIVE dependents(id) AS ( \
                 SELECT step_id FROM baton_step_deps WHERE depends_on = $1 \
                 UNION SELECT d.step_id FROM baton_step_deps d JOIN dependents x ON d.depends_on = x.id) \
             UPDATE baton_steps SET state = 'cancelled', finished_at = $3, last_error = $2 \
             WHERE id IN (SELECT id FROM dependents) \
               AND state IN ('scheduled', 'available', 'executing', 'retryable') \
             RETURNING id";
        let ctx = "ending a step's attempt";
        let now = now_ms();
        let id = step.id.to_string();
        let attempt = step.attempt as i64;
        let mut tx = self.writer.begin().await.map_err(Error::db(ctx))?;
        let mut transitions = Vec::new();
        match end {
            AttemptEnd::Completed => {
                let done = sqlx::query(COMPLETE)
                    .bind(&id)
                    .bind(attempt)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db(ctx))?;
                if done.rows_affected() == 1 {
                    sqlx::query(PROMOTE)
                        .bind(&id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(Error::db(ctx))?;
                    transitions.push(transition(step, step.id, TerminalState::Completed));
                }
            }
            AttemptEnd::Retry { error, delay } => {
                sqlx::query(RETRY)
                    .bind(&id)
                    .bind(attempt)
                    .bind(error)
                    .bind(now + delay.as_millis() as i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db(ctx))?;
            }
            AttemptEnd::Discarded { error } => {
                let done = sqlx::query(DISCARD)
                    .bind(&id)
                    .bind(attempt)
                    .bind(error)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db(ctx))?;
                if done.rows_affected() == 1 {
                    transitions.push(transition(step, step.id, TerminalState::Discarded));
                    let reason = format!("dependency {:?} did not complete", step.name);
                    let cancelled: Vec<String> = sqlx::query_scalar(CASCADE)
                        .bind(&id)
                        .bind(reason)
                        .bind(now)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(Error::db(ctx))?;
                    transitions.extend(
                        cancelled.iter().map(|c| {
                            transition(step, StepId(parse_id(c)), TerminalState::Cancelled)
                        }),
                    );
                }
            }
        }
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(transitions)
    }

    pub(crate) async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

fn transition(step: &FetchedStep, id: StepId, state: TerminalState) -> Transition {
    Transition {
        workflow_id: step.workflow_id,
        step_id: id,
        state,
    }
}

fn completion_from_row(r: &SqliteRow) -> WorkflowFinished {
    let failed: String = r.get(4);
    WorkflowFinished {
        workflow_id: WorkflowId(parse_id(r.get(0))),
        seq: r.get(1),
        name: r.get(2),
        outcome: Outcome::parse(r.get(3)),
        failed_steps: serde_json::from_str(&failed).unwrap_or_default(),
        counts: StepCounts {
            completed: r.get::<i64, _>(5) as u64,
            discarded: r.get::<i64, _>(6) as u64,
            cancelled: r.get::<i64, _>(7) as u64,
        },
        detected_by: DetectedBy::parse(r.get(8)),
        node: NodeId(r.get(9)),
        finished_at: Utc
            .timestamp_millis_opt(r.get(10))
            .single()
            .unwrap_or_else(|| DateTime::<Utc>::UNIX_EPOCH),
    }
}
