//! PostgreSQL: production and multi-node.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Row, migrate::Migrator};
use uuid::Uuid;

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

mod listen;

pub(crate) use listen::parse_notice;

/// The channel claims are announced on to other nodes.
pub(crate) const CHANNEL: &str = "baton_finished";
const LEDGER: &str = "_baton_migrations";
/// `application_name` of baton's connections (`pg_stat_activity` shows it) unless the URL sets
/// one; the listener's session connection adds [`LISTENER_SUFFIX`].
const APPLICATION_NAME: &str = "baton";
const LISTENER_SUFFIX: &str = "-listener";

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// A PostgreSQL store over one pool.
#[derive(Clone, Debug)]
pub(crate) struct PgStore {
    pub(crate) pool: PgPool,
    /// Connections of their own for detection and the claim, so that an announcement never
    /// queues for a connection behind the runner's step writes.
    detection: PgPool,
    connect_options: PgConnectOptions,
}

impl PgStore {
    pub(crate) async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        // Step bookkeeping commits without waiting for the WAL flush: a crash can only undo a
        // recent step write (the step is then re-run, at least once as always). Transactions
        // whose effect must outlive a crash — inserting a workflow, the claim, cancel, retry —
        // turn it back on; the claim's flush also makes every write it read durable.
        let mut connect = PgConnectOptions::from_str(url)
            .map_err(|e| Error::InvalidUrl {
                url: redact_url(url),
                reason: e.to_string(),
            })?
            .options([("synchronous_commit", "off")]);
        if connect.get_application_name().is_none() {
            connect = connect.application_name(APPLICATION_NAME);
        }
        // A quarter of the connections (1 to 4) for detection, the rest for everything else.
        let detection_size = (options.max_connections / 4).clamp(1, 4);
        let main_size = options
            .max_connections
            .saturating_sub(detection_size)
            .max(1);
        let pool_of = |size: u32| {
            PgPoolOptions::new()
                .max_connections(size)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect.clone())
        };
        let ctx = "connecting to PostgreSQL";
        let pool = pool_of(main_size).await.map_err(Error::db(ctx))?;
        let detection = pool_of(detection_size).await.map_err(Error::db(ctx))?;
        Ok(Self {
            pool,
            detection,
            connect_options: connect,
        })
    }

    pub(crate) fn backend(&self) -> &'static str {
        "postgres"
    }

    /// A transaction whose commit waits for the WAL flush (see `connect`).
    async fn begin_durable(
        &self,
        ctx: &'static str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        const DURABLE: &str = "SET LOCAL synchronous_commit = on";
        let mut tx = self.pool.begin().await.map_err(Error::db(ctx))?;
        sqlx::query(DURABLE)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        Ok(tx)
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
        let ctx = "inserting a workflow";
        let mut tx = self.begin_durable(ctx).await?;
        sqlx::query(WORKFLOW)
            .bind(wf.id.0)
            .bind(&wf.name)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        insert_steps(&mut tx, wf.id, &wf.rows(), &wf.edges()).await?;
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
            .fetch_all(&self.detection)
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

    pub(crate) async fn claim(
        &self,
        wf: WorkflowId,
        overlay: &Overlay,
        detected_by: DetectedBy,
        node: &NodeId,
    ) -> Result<ClaimResult> {
        // Four round trips. The row lock serialises claims and step retries of one workflow, so
        // the outcome read here cannot change before the claim commits (NO KEY UPDATE leaves FK
        // inserts unblocked); the claim's commit waits for the WAL flush (see `connect`).
        const LOCK: &str = "SELECT name, finished_at IS NOT NULL, \
                 set_config('synchronous_commit', 'on', true) \
             FROM baton_workflows WHERE id = $1 FOR NO KEY UPDATE";
        // The completed steps as one count row (id NULL), then every other step.
        const STEPS: &str = "SELECT NULL::uuid, NULL::text, 'completed', count(*) FROM baton_steps \
                 WHERE workflow_id = $1 AND state = 'completed' \
             UNION ALL \
             SELECT id, name, state, 1 FROM baton_steps WHERE workflow_id = $1 AND state <> 'completed'";
        // Insert the claim, close the workflow and notify other nodes, all or nothing.
        const CLAIM: &str = "WITH claimed AS ( \
                 INSERT INTO baton_workflow_completions (workflow_id, name, outcome, failed_steps, \
                     completed, discarded, cancelled, detected_by, node, finished_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (workflow_id) DO NOTHING RETURNING seq), \
             closed AS ( \
                 UPDATE baton_workflows SET finished_at = $10 \
                 WHERE id = $1 AND EXISTS (SELECT 1 FROM claimed)), \
             notified AS (SELECT pg_notify($11, seq::text || ':' || $1::text) FROM claimed) \
             SELECT seq FROM claimed, notified";
        let ctx = "claiming a workflow";
        let mut tx = self.detection.begin().await.map_err(Error::db(ctx))?;
        let Some((name, closed, _)): Option<(String, bool, String)> = sqlx::query_as(LOCK)
            .bind(wf.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(ctx))?
        else {
            return Ok(ClaimResult::Unknown);
        };
        if closed {
            return Ok(ClaimResult::Lost);
        }
        let mut completed = 0;
        let mut not_completed = Vec::new();
        for r in sqlx::query(STEPS)
            .bind(wf.0)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(ctx))?
        {
            match r.get::<Option<Uuid>, _>(0) {
                None => completed = r.get::<i64, _>(3) as u64,
                Some(id) => {
                    let state: String = r.get(2);
                    not_completed.push((
                        StepId(id),
                        r.get::<String, _>(1),
                        state.parse().unwrap_or(StepState::Scheduled),
                    ));
                }
            }
        }
        let rows = SettlementRows {
            name,
            completed,
            not_completed,
        };
        let Some(mut event) = finished_event(wf, rows, overlay, detected_by, node) else {
            return Ok(ClaimResult::NotSettled);
        };
        let seq: Option<i64> = sqlx::query_scalar(CLAIM)
            .bind(wf.0)
            .bind(&event.name)
            .bind(event.outcome.as_str())
            .bind(sqlx::types::Json(&event.failed_steps))
            .bind(event.counts.completed as i64)
            .bind(event.counts.discarded as i64)
            .bind(event.counts.cancelled as i64)
            .bind(detected_by.as_str())
            .bind(&node.0)
            .bind(event.finished_at)
            .bind(CHANNEL)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        let Some(seq) = seq else {
            return Ok(ClaimResult::Lost);
        };
        event.seq = seq;
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(ClaimResult::Won(event))
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

    pub(crate) async fn open_workflows(&self) -> Result<u64> {
        const SQL: &str = "SELECT count(*) FROM baton_workflows WHERE finished_at IS NULL";
        let n: i64 = sqlx::query_scalar(SQL)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db("counting open workflows"))?;
        Ok(n as u64)
    }

    pub(crate) async fn completion(&self, wf: WorkflowId) -> Result<Option<WorkflowFinished>> {
        const SQL: &str = "SELECT workflow_id, seq, name, outcome, failed_steps, completed, discarded, \
             cancelled, detected_by, node, finished_at FROM baton_workflow_completions WHERE workflow_id = $1";
        let row = sqlx::query(SQL)
            .bind(wf.0)
            .fetch_optional(&self.detection)
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
        const SQL: &str = "SELECT workflow_id, seq, name, outcome, failed_steps, completed, discarded, \
             cancelled, detected_by, node, finished_at, xact_id::text::bigint \
             FROM baton_workflow_completions \
             WHERE xact_id > $1::text::xid8 AND seq > $2 \
               AND xact_id < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY xact_id LIMIT $3";
        let rows = sqlx::query(SQL)
            .bind(position.to_string())
            .bind(seq_floor)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db("following claims"))?;
        Ok(rows
            .iter()
            .map(|r| (completion_from_row(r), r.get::<i64, _>(11)))
            .collect())
    }

    pub(crate) async fn head_position(&self) -> Result<i64> {
        const SQL: &str = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint - 1";
        sqlx::query_scalar(SQL)
            .fetch_one(&self.pool)
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
        // One statement: the fenced write of the attempt's end — by (id, attempt, executing), so
        // a stale attempt changes nothing; a step whose workflow was cancelled while it ran ends
        // `cancelled` — with, after a completion, the promotion of its dependents, or, after a
        // failure, the cancellation of every transitive dependent. Without added steps it runs
        // alone, in one round trip.
        const END: &str = "WITH RECURSIVE ended AS ( \
                 UPDATE baton_steps SET \
                     state = CASE WHEN cancel_requested THEN 'cancelled' ELSE $3 END, \
                     finished_at = CASE WHEN cancel_requested OR $3 <> 'retryable' THEN now() END, \
                     last_error = CASE WHEN $3 = 'completed' THEN last_error ELSE $4 END, \
                     run_at = CASE WHEN $3 = 'retryable' \
                         THEN now() + $5 * interval '1 millisecond' ELSE run_at END, \
                     owner = NULL, lease_expires_at = NULL \
                 WHERE id = $1 AND attempt = $2 AND state = 'executing' RETURNING state), \
             promoted AS ( \
                 UPDATE baton_steps SET pending_deps = pending_deps - 1, \
                     state = CASE WHEN pending_deps = 1 THEN 'available' ELSE state END, run_at = now() \
                 WHERE state = 'scheduled' AND EXISTS (SELECT 1 FROM ended WHERE state = 'completed') \
                   AND id IN (SELECT step_id FROM baton_step_deps WHERE depends_on = $1) \
                 RETURNING 1), \
             dependents(id) AS ( \
                 SELECT step_id FROM baton_step_deps WHERE depends_on = $1 \
                   AND EXISTS (SELECT 1 FROM ended WHERE state IN ('discarded', 'cancelled')) \
                 UNION SELECT d.step_id FROM baton_step_deps d JOIN dependents x ON d.depends_on = x.id), \
             cancelled AS ( \
                 UPDATE baton_steps SET state = 'cancelled', finished_at = now(), last_error = $6 \
                 WHERE id IN (SELECT id FROM dependents) \
                   AND state IN ('scheduled', 'available', 'executing', 'retryable') \
                 RETURNING id) \
             SELECT NULL::uuid, state, (SELECT count(*) FROM promoted) FROM ended \
             UNION ALL SELECT id, 'cancelled', 0 FROM cancelled";
        let ctx = "ending a step's attempt";
        let (target, error, delay, added) = match end {
            AttemptEnd::Completed { added } => ("completed", None, 0.0, added.as_slice()),
            AttemptEnd::Retry { error, delay } => {
                ("retryable", Some(error), delay.as_millis() as f64, &[][..])
            }
            AttemptEnd::Discarded { error } => ("discarded", Some(error), 0.0, &[][..]),
        };
        let query = sqlx::query(END)
            .bind(step.id.0)
            .bind(step.attempt as i32)
            .bind(target)
            .bind(error)
            .bind(delay)
            .bind(format!("dependency {:?} did not complete", step.name));
        let mut tx = None;
        let rows = if added.is_empty() {
            query.fetch_all(&self.pool).await
        } else {
            let tx = tx.insert(self.pool.begin().await.map_err(Error::db(ctx))?);
            query.fetch_all(&mut **tx).await
        }
        .map_err(Error::db(ctx))?;
        let mut transitions = Vec::new();
        for r in &rows {
            let state = r.get::<&str, _>(1).parse::<StepState>().ok();
            let Some(Ok(state)) = state.map(TerminalState::try_from) else {
                continue; // a retry: not terminal
            };
            match r.get::<Option<Uuid>, _>(0) {
                None => {
                    let mut this = Transition::new(step.workflow_id, step.id, state);
                    this.dependents_waiting = r.get::<i64, _>(2) > 0;
                    transitions.push(this);
                }
                Some(id) => transitions.push(Transition::new(step.workflow_id, StepId(id), state)),
            }
        }
        if let Some(mut tx) = tx {
            // After the promotion above, so new steps that depend on this one are not counted
            // twice; only if this attempt really completed the step (not stale, not cancelled).
            if transitions
                .first()
                .is_some_and(|t| t.state == TerminalState::Completed)
            {
                add_steps(&mut tx, step.workflow_id, added, &mut transitions).await?;
            }
            tx.commit().await.map_err(Error::db(ctx))?;
        }
        Ok(transitions)
    }

    pub(crate) async fn heartbeat(&self, node: &NodeId, lease: Duration) -> Result<Vec<StepId>> {
        const RENEW: &str = "INSERT INTO baton_nodes (id, lease_expires_at) \
             VALUES ($1, now() + $2 * interval '1 millisecond') \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), lease_expires_at = EXCLUDED.lease_expires_at";
        const CANCELLING: &str = "SELECT id FROM baton_steps \
             WHERE owner = $1 AND state = 'executing' AND cancel_requested";
        let ctx = "renewing this node's lease";
        sqlx::query(RENEW)
            .bind(&node.0)
            .bind(lease.as_millis() as f64)
            .execute(&self.pool)
            .await
            .map_err(Error::db(ctx))?;
        let ids: Vec<Uuid> = sqlx::query_scalar(CANCELLING)
            .bind(&node.0)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db(ctx))?;
        Ok(ids.into_iter().map(StepId).collect())
    }

    pub(crate) async fn release_node(&self, node: &NodeId) -> Result<()> {
        const SQL: &str = "DELETE FROM baton_nodes WHERE id = $1";
        sqlx::query(SQL)
            .bind(&node.0)
            .execute(&self.pool)
            .await
            .map_err(Error::db("releasing this node's lease"))?;
        Ok(())
    }

    pub(crate) async fn rescue_lost(&self, limit: u32) -> Result<Rescued> {
        // Only steps whose owner's lease expired (or whose owner left): provably gone, never
        // merely slow. Compare-and-set on `executing` under SKIP LOCKED.
        const SQL: &str = "WITH lost AS ( \
                 SELECT s.id FROM baton_steps s LEFT JOIN baton_nodes n ON n.id = s.owner \
                 WHERE s.state = 'executing' AND (n.id IS NULL OR n.lease_expires_at < now()) \
                 LIMIT $1 FOR UPDATE OF s SKIP LOCKED) \
             UPDATE baton_steps s SET \
                 state = CASE WHEN s.cancel_requested THEN 'cancelled' \
                              WHEN s.attempt < s.max_attempts THEN 'retryable' ELSE 'discarded' END, \
                 finished_at = CASE WHEN s.cancel_requested OR s.attempt >= s.max_attempts THEN now() END, \
                 last_error = 'lost: owner ' || coalesce(s.owner, '?') || ' stopped renewing its lease', \
                 run_at = now(), owner = NULL, lease_expires_at = NULL \
             FROM lost WHERE s.id = lost.id \
             RETURNING s.id, s.workflow_id, s.name, s.state";
        let ctx = "rescuing steps of lost nodes";
        let mut tx = self.pool.begin().await.map_err(Error::db(ctx))?;
        let rows = sqlx::query(SQL)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        let mut rescued = Rescued::default();
        for r in &rows {
            let state: String = r.get(3);
            let state = state.parse().unwrap_or(StepState::Retryable);
            rescued.count += 1;
            after_rescue(
                &mut tx,
                WorkflowId(r.get(1)),
                StepId(r.get(0)),
                r.get::<&str, _>(2),
                state,
                &mut rescued.transitions,
            )
            .await?;
        }
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(rescued)
    }

    pub(crate) async fn cancel_workflow(&self, wf: WorkflowId) -> Result<Cancelled> {
        const LOCK: &str = "SELECT finished_at IS NOT NULL FROM baton_workflows \
             WHERE id = $1 FOR NO KEY UPDATE";
        const WAITING: &str = "UPDATE baton_steps SET state = 'cancelled', finished_at = now(), \
                 last_error = 'cancelled by operator' \
             WHERE workflow_id = $1 AND state IN ('scheduled', 'available', 'retryable') RETURNING id";
        const RUNNING: &str = "UPDATE baton_steps SET cancel_requested = true \
             WHERE workflow_id = $1 AND state = 'executing' RETURNING id";
        let ctx = "cancelling a workflow";
        let mut tx = self.begin_durable(ctx).await?;
        let closed: Option<bool> = sqlx::query_scalar(LOCK)
            .bind(wf.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        match closed {
            None => return Err(Error::WorkflowNotFound(wf)),
            Some(true) => return Ok(Cancelled::already_finished()),
            Some(false) => {}
        }
        let waiting: Vec<Uuid> = sqlx::query_scalar(WAITING)
            .bind(wf.0)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        let running: Vec<Uuid> = sqlx::query_scalar(RUNNING)
            .bind(wf.0)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(Cancelled {
            already_finished: false,
            transitions: waiting
                .into_iter()
                .map(|id| Transition::new(wf, StepId(id), TerminalState::Cancelled))
                .collect(),
            executing: running.into_iter().map(StepId).collect(),
        })
    }

    pub(crate) async fn retry_step(&self, wf: WorkflowId, name: &str) -> Result<()> {
        const LOCK: &str = "SELECT finished_at IS NOT NULL FROM baton_workflows \
             WHERE id = $1 FOR NO KEY UPDATE";
        const RETRY: &str = "UPDATE baton_steps SET state = 'available', run_at = now(), \
                 max_attempts = attempt + 1, finished_at = NULL, cancel_requested = false \
             WHERE workflow_id = $1 AND name = $2 AND state IN ('discarded', 'cancelled') \
               AND pending_deps = 0";
        let ctx = "retrying a step";
        let mut tx = self.begin_durable(ctx).await?;
        let closed: Option<bool> = sqlx::query_scalar(LOCK)
            .bind(wf.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        match closed {
            None => return Err(Error::WorkflowNotFound(wf)),
            Some(true) => return Err(Error::WorkflowClosed(wf)),
            Some(false) => {}
        }
        let done = sqlx::query(RETRY)
            .bind(wf.0)
            .bind(name)
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
        // their workflow (ON DELETE CASCADE); the claim row goes last.
        const WORKFLOWS: &str = "DELETE FROM baton_workflows WHERE id IN ( \
                 SELECT id FROM baton_workflows \
                 WHERE finished_at IS NOT NULL AND finished_at < now() - $1 * interval '1 millisecond' \
                 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING id";
        const CLAIMS: &str = "DELETE FROM baton_workflow_completions WHERE workflow_id = ANY($1)";
        let ctx = "pruning announced workflows";
        let mut tx = self.pool.begin().await.map_err(Error::db(ctx))?;
        let ids: Vec<Uuid> = sqlx::query_scalar(WORKFLOWS)
            .bind(older_than.as_millis() as f64)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        sqlx::query(CLAIMS)
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(ctx))?;
        tx.commit().await.map_err(Error::db(ctx))?;
        Ok(ids.len() as u64)
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
        self.detection.close().await;
    }
}

/// Inserts steps and their dependency edges, in two multi-row statements.
async fn insert_steps(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    wf: WorkflowId,
    rows: &[NewStepRow<'_>],
    edges: &[(StepId, StepId)],
) -> Result<()> {
    const STEPS: &str = "INSERT INTO baton_steps \
         (id, workflow_id, name, kind, args, state, max_attempts, pending_deps, finished_at) \
         SELECT u.id, $1, u.name, u.kind, u.args::jsonb, u.state, u.max_attempts, u.pending, \
                CASE WHEN u.state = 'cancelled' THEN now() END \
         FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[], $8::int4[]) \
              AS u(id, name, kind, args, state, max_attempts, pending)";
    const DEPS: &str = "INSERT INTO baton_step_deps (step_id, depends_on) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[])";
    let ctx = "inserting steps";
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.step.id.0).collect();
    let names: Vec<&str> = rows.iter().map(|r| r.step.name.as_str()).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.step.kind.as_str()).collect();
    let args: Vec<String> = rows.iter().map(|r| r.step.args.to_string()).collect();
    let states: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
    let max: Vec<i32> = rows.iter().map(|r| r.step.max_attempts as i32).collect();
    let pending: Vec<i32> = rows.iter().map(|r| r.pending as i32).collect();
    sqlx::query(STEPS)
        .bind(wf.0)
        .bind(ids)
        .bind(names)
        .bind(kinds)
        .bind(args)
        .bind(states)
        .bind(max)
        .bind(pending)
        .execute(&mut **tx)
        .await
        .map_err(Error::db(ctx))?;
    if !edges.is_empty() {
        let (from, to): (Vec<Uuid>, Vec<Uuid>) = edges.iter().map(|(a, b)| (a.0, b.0)).unzip();
        sqlx::query(DEPS)
            .bind(from)
            .bind(to)
            .execute(&mut **tx)
            .await
            .map_err(Error::db(ctx))?;
    }
    Ok(())
}

/// Adds steps to a running workflow, inside the transaction that completes the adding step.
async fn add_steps(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    wf: WorkflowId,
    added: &[Step],
    out: &mut Vec<Transition>,
) -> Result<()> {
    const EXISTING: &str = "SELECT id, name, state FROM baton_steps \
         WHERE workflow_id = $1 AND name = ANY($2)";
    let mentioned: Vec<&str> = added
        .iter()
        .flat_map(|s| {
            std::iter::once(s.name.as_str()).chain(s.depends_on.iter().map(String::as_str))
        })
        .collect();
    let existing: HashMap<String, (StepId, StepState)> = sqlx::query(EXISTING)
        .bind(wf.0)
        .bind(mentioned)
        .fetch_all(&mut **tx)
        .await
        .map_err(Error::db("adding steps"))?
        .iter()
        .map(|r| {
            let state: String = r.get(2);
            (
                r.get::<String, _>(1),
                (
                    StepId(r.get(0)),
                    state.parse().unwrap_or(StepState::Scheduled),
                ),
            )
        })
        .collect();
    let (rows, edges) = plan_additions(added, &existing)?;
    insert_steps(tx, wf, &rows, &edges).await?;
    out.extend(
        rows.iter()
            .filter(|r| r.state == StepState::Cancelled)
            .map(|r| Transition::new(wf, r.step.id, TerminalState::Cancelled)),
    );
    Ok(())
}

/// What follows a rescued step's new state inside the same transaction: a discarded or cancelled
/// step is a terminal transition and cancels every transitive dependent (a retryable one is
/// neither). Terminal transitions are appended to `out`. (An attempt's own end does the same
/// within its one statement, see `end_attempt`.)
async fn after_rescue(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    workflow_id: WorkflowId,
    step_id: StepId,
    name: &str,
    state: StepState,
    out: &mut Vec<Transition>,
) -> Result<()> {
    const CASCADE: &str = "WITH RECURSIVE dependents(id) AS ( \
             SELECT step_id FROM baton_step_deps WHERE depends_on = $1 \
             UNION SELECT d.step_id FROM baton_step_deps d JOIN dependents x ON d.depends_on = x.id) \
         UPDATE baton_steps SET state = 'cancelled', finished_at = now(), last_error = $2 \
         WHERE id IN (SELECT id FROM dependents) \
           AND state IN ('scheduled', 'available', 'executing', 'retryable') \
         RETURNING id";
    let Ok(terminal) = TerminalState::try_from(state) else {
        return Ok(());
    };
    out.push(Transition::new(workflow_id, step_id, terminal));
    let cancelled: Vec<Uuid> = sqlx::query_scalar(CASCADE)
        .bind(step_id.0)
        .bind(format!("dependency {name:?} did not complete"))
        .fetch_all(&mut **tx)
        .await
        .map_err(Error::db("cancelling a rescued step's dependents"))?;
    out.extend(
        cancelled
            .into_iter()
            .map(|id| Transition::new(workflow_id, StepId(id), TerminalState::Cancelled)),
    );
    Ok(())
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
