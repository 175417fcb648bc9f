//! SQLite: the embedded default. One process, one file, WAL mode.
//!
//! Writes go through a pool of exactly one connection, so write transactions never meet
//! `SQLITE_BUSY` from each other; reads use a separate pool that WAL lets run beside the writer.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, migrate::Migrator};

use super::{
    AttemptEnd, Cancelled, FetchedStep, Outstanding, Rescued, SettlementRows, StoreOptions,
    Transition, WorkflowStatus, finished_event, redact_url,
};
use crate::completion::{ClaimResult, Overlay};
use crate::error::{Error, Result};
use crate::event::{DetectedBy, Outcome, StepCounts, WorkflowFinished};
use crate::ids::{NodeId, StepId, WorkflowId};
use crate::state::{StepState, TerminalState};
use crate::workflow::{NewStepRow, Step, Workflow, plan_additions};

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

    /// A write transaction that holds the write lock from its first statement, so it never fails
    /// with `SQLITE_BUSY` halfway (other processes may share the file).
    async fn begin_write(&self, ctx: &'static str) -> Result<sqlx::Transaction<'static, Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::db(ctx))
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
        let mut tx = self.begin_write(ctx).await?;
        sqlx::query(WORKFLOW)
            .bind(wf.id.to_string())
            .bind(&wf.name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        insert_steps(&mut tx, wf.id, &wf.rows(), &wf.edges(), now).await?;
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

    pub(crate) async fn claim(
        &self,
        wf: WorkflowId,
        overlay: &Overlay,
        detected_by: DetectedBy,
        node: &NodeId,
    ) -> Result<ClaimResult> {
        // BEGIN IMMEDIATE takes the write lock first: the outcome read here cannot change
        // before the claim commits, even with other processes on the same file.
        const WORKFLOW: &str =
            "SELECT name, finished_at IS NOT NULL FROM baton_workflows WHERE id = $1";
        const COMPLETED: &str =
            "SELECT count(*) FROM baton_steps WHERE workflow_id = $1 AND state = 'completed'";
        const OTHERS: &str = "SELECT id, name, state FROM baton_steps \
             WHERE workflow_id = $1 AND state <> 'completed'";
        const BUMP: &str = "UPDATE baton_sequence SET value = value + 1 WHERE name = 'completions' \
             RETURNING value";
        const INSERT: &str = "INSERT INTO baton_workflow_completions \
             (workflow_id, seq, name, outcome, failed_steps, completed, discarded, cancelled, detected_by, node, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (workflow_id) DO NOTHING RETURNING seq";
        const CLOSE: &str = "UPDATE baton_workflows SET finished_at = $2 WHERE id = $1";
        let ctx = "claiming a workflow";
        let id = wf.to_string();
        let mut tx = self.begin_write(ctx).await?;
        let Some((name, closed)): Option<(String, bool)> = sqlx::query_as(WORKFLOW)
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(ctx))?
        else {
            return Ok(ClaimResult::Unknown);
        };
        if closed {
            return Ok(ClaimResult::Lost);
        }
        let completed: i64 = sqlx::query_scalar(COMPLETED)
            .bind(&id)
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        let not_completed = sqlx::query(OTHERS)
            .bind(&id)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(ctx))?
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
        let rows = SettlementRows {
            name,
            completed: completed as u64,
            not_completed,
        };
        let Some(mut event) = finished_event(wf, rows, overlay, detected_by, node) else {
            return Ok(ClaimResult::NotSettled);
        };
        let seq: i64 = sqlx::query_scalar(BUMP)
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        let finished_at = event.finished_at.timestamp_millis();
        let won: Option<i64> = sqlx::query_scalar(INSERT)
            .bind(&id)
            .bind(seq)
            .bind(&event.name)
            .bind(event.outcome.as_str())
            .bind(serde_json::to_string(&event.failed_steps).unwrap_or_default())
            .bind(event.counts.completed as i64)
            .bind(event.counts.discarded as i64)
            .bind(event.counts.cancelled as i64)
            .bind(detected_by.as_str())
            .bind(&node.0)
            .bind(finished_at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        if won.is_none() {
            return Ok(ClaimResult::Lost);
        }
        event.seq = seq;
        sqlx::query(CLOSE)
            .bind(&id)
            .bind(finished_at)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(ClaimResult::Won(event))
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

    pub(crate) async fn open_workflows(&self) -> Result<u64> {
        const SQL: &str = "SELECT count(*) FROM baton_workflows INDEXED BY baton_workflows_open WHERE finished_at IS NULL";
        let n: i64 = sqlx::query_scalar(SQL)
            .fetch_one(&self.reader)
            .await
            .map_err(Error::db("counting open workflows"))?;
        Ok(n as u64)
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

    pub(crate) async fn follow(
        &self,
        position: i64,
        seq_floor: i64,
        limit: u32,
    ) -> Result<Vec<(WorkflowFinished, i64)>> {
        // `seq` is assigned under the single write lock, so it is also the commit order.
        Ok(self
            .completions_after(position.max(seq_floor), limit)
            .await?
            .into_iter()
            .map(|e| {
                let seq = e.seq;
                (e, seq)
            })
            .collect())
    }

    pub(crate) async fn head_position(&self) -> Result<i64> {
        const SQL: &str = "SELECT coalesce(max(seq), 0) FROM baton_workflow_completions";
        sqlx::query_scalar(SQL)
            .fetch_one(&self.reader)
            .await
            .map_err(Error::db("reading the claim cursor"))
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
        // Every write is fenced by (id, attempt, executing): a stale attempt changes nothing. A
        // step whose workflow was cancelled while it ran ends `cancelled`, whatever the handler did.
        const COMPLETE: &str = "UPDATE baton_steps SET \
                 state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'completed' END, \
                 finished_at = $3, owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND attempt = $2 AND state = 'executing' RETURNING state";
        const RETRY: &str = "UPDATE baton_steps SET \
                 state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'retryable' END, \
                 finished_at = CASE WHEN cancel_requested THEN $3 END, last_error = $4, \
                 run_at = $3 + $5, owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND attempt = $2 AND state = 'executing' RETURNING state";
        const DISCARD: &str = "UPDATE baton_steps SET \
                 state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'discarded' END, \
                 finished_at = $3, last_error = $4, owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND attempt = $2 AND state = 'executing' RETURNING state";
        let ctx = "ending a step's attempt";
        let now = now_ms();
        let id = step.id.to_string();
        let attempt = step.attempt as i64;
        let query = match end {
            AttemptEnd::Completed { .. } => sqlx::query_scalar(COMPLETE)
                .bind(&id)
                .bind(attempt)
                .bind(now),
            AttemptEnd::Retry { error, delay } => sqlx::query_scalar(RETRY)
                .bind(&id)
                .bind(attempt)
                .bind(now)
                .bind(error)
                .bind(delay.as_millis() as i64),
            AttemptEnd::Discarded { error } => sqlx::query_scalar(DISCARD)
                .bind(&id)
                .bind(attempt)
                .bind(now)
                .bind(error),
        };
        let mut tx = self.begin_write(ctx).await?;
        let state: Option<String> = query
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        let mut transitions = Vec::new();
        let state = state.and_then(|s| s.parse::<StepState>().ok());
        if let Some(state) = state {
            after_terminal(
                &mut tx,
                step.workflow_id,
                step.id,
                &step.name,
                state,
                now,
                &mut transitions,
            )
            .await?;
        }
        // After the promotion above, so new steps that depend on this one are not counted twice.
        if let (Some(StepState::Completed), AttemptEnd::Completed { added }) = (state, end)
            && !added.is_empty()
        {
            add_steps(&mut tx, step.workflow_id, added, now, &mut transitions).await?;
        }
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(transitions)
    }

    pub(crate) async fn heartbeat(&self, node: &NodeId, lease: Duration) -> Result<Vec<StepId>> {
        const RENEW: &str = "INSERT INTO baton_nodes (id, started_at, heartbeat_at, lease_expires_at) \
             VALUES ($1, $2, $2, $2 + $3) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, \
                 lease_expires_at = excluded.lease_expires_at";
        const CANCELLING: &str = "SELECT id FROM baton_steps \
             WHERE owner = $1 AND state = 'executing' AND cancel_requested";
        let ctx = "renewing this node's lease";
        sqlx::query(RENEW)
            .bind(&node.0)
            .bind(now_ms())
            .bind(lease.as_millis() as i64)
            .execute(&self.writer)
            .await
            .map_err(Error::db(ctx))?;
        let ids: Vec<String> = sqlx::query_scalar(CANCELLING)
            .bind(&node.0)
            .fetch_all(&self.reader)
            .await
            .map_err(Error::db(ctx))?;
        Ok(ids.iter().map(|s| StepId(parse_id(s))).collect())
    }

    pub(crate) async fn release_node(&self, node: &NodeId) -> Result<()> {
        const SQL: &str = "DELETE FROM baton_nodes WHERE id = $1";
        sqlx::query(SQL)
            .bind(&node.0)
            .execute(&self.writer)
            .await
            .map_err(Error::db("releasing this node's lease"))?;
        Ok(())
    }

    pub(crate) async fn rescue_lost(&self, limit: u32) -> Result<Rescued> {
        // Only steps whose owner's lease expired (or whose owner left): provably gone, never
        // merely slow. Compare-and-set on `executing`, under the write lock.
        const SQL: &str = "UPDATE baton_steps SET \
                 state = CASE WHEN cancel_requested THEN 'cancelled' \
                              WHEN attempt < max_attempts THEN 'retryable' ELSE 'discarded' END, \
                 finished_at = CASE WHEN cancel_requested OR attempt >= max_attempts THEN $1 END, \
                 last_error = 'lost: owner ' || coalesce(owner, '?') || ' stopped renewing its lease', \
                 run_at = $1, owner = NULL, lease_expires_at = NULL \
             WHERE id IN (SELECT s.id FROM baton_steps s INDEXED BY baton_steps_owner \
                 LEFT JOIN baton_nodes n ON n.id = s.owner \
                 WHERE s.state = 'executing' AND (n.id IS NULL OR n.lease_expires_at < $1) LIMIT $2) \
               AND state = 'executing' \
             RETURNING id, workflow_id, name, state";
        let ctx = "rescuing steps of lost nodes";
        let now = now_ms();
        let mut tx = self.begin_write(ctx).await?;
        let rows = sqlx::query(SQL)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        let mut rescued = Rescued::default();
        for r in &rows {
            let state: String = r.get(3);
            rescued.count += 1;
            after_terminal(
                &mut tx,
                WorkflowId(parse_id(r.get(1))),
                StepId(parse_id(r.get(0))),
                r.get::<&str, _>(2),
                state.parse().unwrap_or(StepState::Retryable),
                now,
                &mut rescued.transitions,
            )
            .await?;
        }
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(rescued)
    }

    pub(crate) async fn cancel_workflow(&self, wf: WorkflowId) -> Result<Cancelled> {
        const CLOSED: &str = "SELECT finished_at IS NOT NULL FROM baton_workflows WHERE id = $1";
        const WAITING: &str = "UPDATE baton_steps SET state = 'cancelled', finished_at = $2, \
                 last_error = 'cancelled by operator' \
             WHERE workflow_id = $1 AND state IN ('scheduled', 'available', 'retryable') RETURNING id";
        const RUNNING: &str = "UPDATE baton_steps SET cancel_requested = 1 \
             WHERE workflow_id = $1 AND state = 'executing' RETURNING id";
        let ctx = "cancelling a workflow";
        let id = wf.to_string();
        let mut tx = self.begin_write(ctx).await?;
        let closed: Option<bool> = sqlx::query_scalar(CLOSED)
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        match closed {
            None => return Err(Error::WorkflowNotFound(wf)),
            Some(true) => return Ok(Cancelled::already_finished()),
            Some(false) => {}
        }
        let waiting: Vec<String> = sqlx::query_scalar(WAITING)
            .bind(&id)
            .bind(now_ms())
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        let running: Vec<String> = sqlx::query_scalar(RUNNING)
            .bind(&id)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(Cancelled {
            already_finished: false,
            transitions: waiting
                .iter()
                .map(|s| Transition::new(wf, StepId(parse_id(s)), TerminalState::Cancelled))
                .collect(),
            executing: running.iter().map(|s| StepId(parse_id(s))).collect(),
        })
    }

    pub(crate) async fn retry_step(&self, wf: WorkflowId, name: &str) -> Result<()> {
        const CLOSED: &str = "SELECT finished_at IS NOT NULL FROM baton_workflows WHERE id = $1";
        const RETRY: &str = "UPDATE baton_steps SET state = 'available', run_at = $3, \
                 max_attempts = attempt + 1, finished_at = NULL, cancel_requested = 0 \
             WHERE workflow_id = $1 AND name = $2 AND state IN ('discarded', 'cancelled') \
               AND pending_deps = 0";
        let ctx = "retrying a step";
        let id = wf.to_string();
        let mut tx = self.begin_write(ctx).await?;
        let closed: Option<bool> = sqlx::query_scalar(CLOSED)
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        match closed {
            None => return Err(Error::WorkflowNotFound(wf)),
            Some(true) => return Err(Error::WorkflowClosed(wf)),
            Some(false) => {}
        }
        let done = sqlx::query(RETRY)
            .bind(&id)
            .bind(name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        if done.rows_affected() == 0 {
            return Err(Error::InvalidWorkflow(format!(
                "step {name:?} of workflow {wf} is not a discarded or cancelled step whose dependencies completed"
            )));
        }
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(())
    }

    pub(crate) async fn prune(&self, older_than: Duration, limit: u32) -> Result<u64> {
        // Announced workflows only (finished_at is set by the claim); steps and edges go with
        // their workflow (ON DELETE CASCADE); the claim rows go last.
        const PICK: &str = "SELECT id FROM baton_workflows INDEXED BY baton_workflows_finished \
             WHERE finished_at IS NOT NULL AND finished_at < $1 ORDER BY finished_at LIMIT $2";
        const WORKFLOWS: &str =
            "DELETE FROM baton_workflows WHERE id IN (SELECT value FROM json_each($1))";
        const CLAIMS: &str = "DELETE FROM baton_workflow_completions \
             WHERE workflow_id IN (SELECT value FROM json_each($1))";
        let ctx = "pruning announced workflows";
        let cutoff = now_ms() - older_than.as_millis() as i64;
        let mut tx = self.begin_write(ctx).await?;
        let ids: Vec<String> = sqlx::query_scalar(PICK)
            .bind(cutoff)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        let json = serde_json::to_string(&ids).unwrap_or_default();
        for sql in [WORKFLOWS, CLAIMS] {
            sqlx::query(sql)
                .bind(&json)
                .execute(&mut *tx)
                .await
                .map_err(Error::db(ctx))?;
        }
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(ids.len() as u64)
    }

    pub(crate) async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// Inserts steps and their dependency edges, in chunked multi-row statements.
async fn insert_steps(
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    wf: WorkflowId,
    rows: &[NewStepRow<'_>],
    edges: &[(StepId, StepId)],
    now: i64,
) -> Result<()> {
    let ctx = "inserting steps";
    let wf_id = wf.to_string();
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO baton_steps (id, workflow_id, name, kind, args, state, max_attempts, \
             pending_deps, run_at, inserted_at, finished_at) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.step.id.to_string())
                .push_bind(&wf_id)
                .push_bind(&r.step.name)
                .push_bind(&r.step.kind)
                .push_bind(r.step.args.to_string())
                .push_bind(r.state.as_str())
                .push_bind(r.step.max_attempts as i64)
                .push_bind(r.pending as i64)
                .push_bind(now)
                .push_bind(now)
                .push_bind((r.state == StepState::Cancelled).then_some(now));
        });
        q.build().execute(&mut **tx).await.map_err(Error::db(ctx))?;
    }
    for chunk in edges.chunks(INSERT_CHUNK) {
        let mut q =
            QueryBuilder::<Sqlite>::new("INSERT INTO baton_step_deps (step_id, depends_on) ");
        q.push_values(chunk, |mut b, (from, to)| {
            b.push_bind(from.to_string()).push_bind(to.to_string());
        });
        q.build().execute(&mut **tx).await.map_err(Error::db(ctx))?;
    }
    Ok(())
}

/// Adds steps to a running workflow, inside the transaction that completes the adding step.
async fn add_steps(
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    wf: WorkflowId,
    added: &[Step],
    now: i64,
    out: &mut Vec<Transition>,
) -> Result<()> {
    const EXISTING: &str = "SELECT id, name, state FROM baton_steps \
         WHERE workflow_id = $1 AND name IN (SELECT value FROM json_each($2))";
    let mentioned: Vec<&str> = added
        .iter()
        .flat_map(|s| {
            std::iter::once(s.name.as_str()).chain(s.depends_on.iter().map(String::as_str))
        })
        .collect();
    let existing: HashMap<String, (StepId, StepState)> = sqlx::query(EXISTING)
        .bind(wf.to_string())
        .bind(serde_json::to_string(&mentioned).unwrap_or_default())
        .fetch_all(&mut **tx)
        .await
        .map_err(Error::db("adding steps"))?
        .iter()
        .map(|r| {
            let state: String = r.get(2);
            (
                r.get::<String, _>(1),
                (
                    StepId(parse_id(r.get(0))),
                    state.parse().unwrap_or(StepState::Scheduled),
                ),
            )
        })
        .collect();
    let (rows, edges) = plan_additions(added, &existing)?;
    insert_steps(tx, wf, &rows, &edges, now).await?;
    out.extend(
        rows.iter()
            .filter(|r| r.state == StepState::Cancelled)
            .map(|r| Transition::new(wf, r.step.id, TerminalState::Cancelled)),
    );
    Ok(())
}

/// What follows a step's new state inside the same transaction: a completed step promotes its
/// dependents; a discarded or cancelled one cancels every transitive dependent. Terminal
/// transitions are appended to `out`.
async fn after_terminal(
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    workflow_id: WorkflowId,
    step_id: StepId,
    name: &str,
    state: StepState,
    now: i64,
    out: &mut Vec<Transition>,
) -> Result<()> {
    const PROMOTE: &str = "UPDATE baton_steps SET pending_deps = pending_deps - 1, \
             state = CASE WHEN pending_deps = 1 THEN 'available' ELSE state END, run_at = $2 \
         WHERE state = 'scheduled' \
           AND id IN (SELECT step_id FROM baton_step_deps WHERE depends_on = $1)";
    const CASCADE: &str = "WITH RECURSIVE dependents(id) AS ( \
             SELECT step_id FROM baton_step_deps WHERE depends_on = $1 \
             UNION SELECT d.step_id FROM baton_step_deps d JOIN dependents x ON d.depends_on = x.id) \
         UPDATE baton_steps SET state = 'cancelled', finished_at = $3, last_error = $2 \
         WHERE id IN (SELECT id FROM dependents) \
           AND state IN ('scheduled', 'available', 'executing', 'retryable') \
         RETURNING id";
    let ctx = "updating a step's dependents";
    let Ok(terminal) = TerminalState::try_from(state) else {
        return Ok(());
    };
    let mut this = Transition::new(workflow_id, step_id, terminal);
    let id = step_id.to_string();
    if terminal == TerminalState::Completed {
        let promoted = sqlx::query(PROMOTE)
            .bind(&id)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(Error::db(ctx))?
            .rows_affected();
        this.dependents_waiting = promoted > 0;
        out.push(this);
    } else {
        out.push(this);
        let cancelled: Vec<String> = sqlx::query_scalar(CASCADE)
            .bind(&id)
            .bind(format!("dependency {name:?} did not complete"))
            .bind(now)
            .fetch_all(&mut **tx)
            .await
            .map_err(Error::db(ctx))?;
        out.extend(
            cancelled.iter().map(|c| {
                Transition::new(workflow_id, StepId(parse_id(c)), TerminalState::Cancelled)
            }),
        );
    }
    Ok(())
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
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
    }
}
