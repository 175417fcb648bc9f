//! Plain SQL on a test database, behind baton's back.
//!
//! Ids are `uuid` on Postgres and hyphenated `TEXT` on SQLite; every helper binds the right one.

use std::str::FromStr;
use std::time::Duration;

use baton::{NodeId, Outcome, StepCounts, StepId, WorkflowFinished, WorkflowId};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection, SqliteConnection};

use super::Backend;

/// A raw sqlx pool on a test database.
#[derive(Clone, Debug)]
pub(crate) enum Raw {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

/// The public tables, for row counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Table {
    Workflows,
    Steps,
    StepDeps,
    Completions,
}

impl Table {
    fn count_sql(self) -> &'static str {
        match self {
            Table::Workflows => "SELECT count(*) FROM baton_workflows",
            Table::Steps => "SELECT count(*) FROM baton_steps",
            Table::StepDeps => "SELECT count(*) FROM baton_step_deps",
            Table::Completions => "SELECT count(*) FROM baton_workflow_completions",
        }
    }
}

pub(crate) fn sqlite_options(url: &str) -> SqliteConnectOptions {
    SqliteConnectOptions::from_str(url)
        .expect("a SQLite URL")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10))
}

impl Raw {
    pub(crate) async fn connect(backend: Backend, url: &str) -> Raw {
        match backend {
            Backend::Postgres => Raw::Pg(
                PgPoolOptions::new()
                    .max_connections(4)
                    .connect(url)
                    .await
                    .unwrap_or_else(|e| panic!("raw Postgres pool: {e}")),
            ),
            Backend::Sqlite => Raw::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(sqlite_options(url))
                    .await
                    .unwrap_or_else(|e| panic!("raw SQLite pool: {e}")),
            ),
        }
    }

    /// Sets the state of every step of `wf`.
    pub(crate) async fn set_all_states(&self, wf: WorkflowId, state: &str) {
        const SQL: &str = "UPDATE baton_steps SET state = $2 WHERE workflow_id = $1";
        match self {
            Raw::Pg(p) => sqlx::query(SQL)
                .bind(wf.0)
                .bind(state)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Raw::Sqlite(p) => sqlx::query(SQL)
                .bind(wf.to_string())
                .bind(state)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        }
        .expect("setting step states");
    }

    /// Sets the state of the given steps.
    pub(crate) async fn set_states(&self, steps: &[StepId], state: &str) {
        const PG: &str = "UPDATE baton_steps SET state = $2 WHERE id = ANY($1)";
        const SQLITE: &str =
            "UPDATE baton_steps SET state = $2 WHERE id IN (SELECT value FROM json_each($1))";
        match self {
            Raw::Pg(p) => {
                let ids: Vec<uuid::Uuid> = steps.iter().map(|s| s.0).collect();
                sqlx::query(PG)
                    .bind(ids)
                    .bind(state)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected())
            }
            Raw::Sqlite(p) => {
                let ids: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
                let ids = serde_json::to_string(&ids).expect("json");
                sqlx::query(SQLITE)
                    .bind(ids)
                    .bind(state)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected())
            }
        }
        .expect("setting step states");
    }

    pub(crate) async fn count(&self, table: Table) -> i64 {
        match self {
            Raw::Pg(p) => sqlx::query_scalar(table.count_sql()).fetch_one(p).await,
            Raw::Sqlite(p) => sqlx::query_scalar(table.count_sql()).fetch_one(p).await,
        }
        .expect("counting rows")
    }

    /// Claim rows of one workflow in `baton_workflow_completions`.
    pub(crate) async fn completions(&self, wf: WorkflowId) -> i64 {
        const SQL: &str = "SELECT count(*) FROM baton_workflow_completions WHERE workflow_id = $1";
        match self {
            Raw::Pg(p) => sqlx::query_scalar(SQL).bind(wf.0).fetch_one(p).await,
            Raw::Sqlite(p) => {
                sqlx::query_scalar(SQL)
                    .bind(wf.to_string())
                    .fetch_one(p)
                    .await
            }
        }
        .expect("counting completions")
    }

    /// `(name, state, attempt)` of every step of `wf`, sorted by name.
    pub(crate) async fn steps(&self, wf: WorkflowId) -> Vec<(String, String, i64)> {
        const PG: &str = "SELECT name, state, attempt::int8 FROM baton_steps \
                          WHERE workflow_id = $1 ORDER BY name";
        const SQLITE: &str =
            "SELECT name, state, attempt FROM baton_steps WHERE workflow_id = $1 ORDER BY name";
        match self {
            Raw::Pg(p) => sqlx::query_as(PG).bind(wf.0).fetch_all(p).await,
            Raw::Sqlite(p) => {
                sqlx::query_as(SQLITE)
                    .bind(wf.to_string())
                    .fetch_all(p)
                    .await
            }
        }
        .expect("reading steps")
    }

    /// The stored name of a workflow.
    pub(crate) async fn workflow_name(&self, wf: WorkflowId) -> String {
        const SQL: &str = "SELECT name FROM baton_workflows WHERE id = $1";
        match self {
            Raw::Pg(p) => sqlx::query_scalar(SQL).bind(wf.0).fetch_one(p).await,
            Raw::Sqlite(p) => {
                sqlx::query_scalar(SQL)
                    .bind(wf.to_string())
                    .fetch_one(p)
                    .await
            }
        }
        .expect("reading a workflow's name")
    }

    /// `(outcome, detected_by)` of the claim row of `wf`.
    pub(crate) async fn claim_row(&self, wf: WorkflowId) -> (String, String) {
        const SQL: &str = "SELECT outcome, detected_by FROM baton_workflow_completions \
                           WHERE workflow_id = $1";
        match self {
            Raw::Pg(p) => sqlx::query_as(SQL).bind(wf.0).fetch_one(p).await,
            Raw::Sqlite(p) => sqlx::query_as(SQL).bind(wf.to_string()).fetch_one(p).await,
        }
        .expect("reading a claim row")
    }
}

impl Raw {
    /// Runs a parameterless query that reads the same on both backends and returns one integer.
    pub(crate) async fn scalar(&self, sql: &'static str) -> i64 {
        match self {
            Raw::Pg(p) => sqlx::query_scalar(sql).fetch_one(p).await,
            Raw::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Marks `node`'s lease expired, as if it had stopped renewing it. Returns whether its row
    /// existed.
    pub(crate) async fn expire_node(&self, node: &NodeId) -> bool {
        const PG: &str = "UPDATE baton_nodes SET lease_expires_at = now() - interval '1 hour' \
                          WHERE id = $1";
        const SQLITE: &str = "UPDATE baton_nodes SET lease_expires_at = 0 WHERE id = $1";
        match self {
            Raw::Pg(p) => sqlx::query(PG)
                .bind(&node.0)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Raw::Sqlite(p) => sqlx::query(SQLITE)
                .bind(&node.0)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        }
        .map(|rows| rows == 1)
        .expect("expiring a node's lease")
    }

    /// `(state, attempt, last_error)` of step `name` of `wf`.
    pub(crate) async fn step(&self, wf: WorkflowId, name: &str) -> (String, i64, Option<String>) {
        const PG: &str = "SELECT state, attempt::int8, last_error FROM baton_steps \
                          WHERE workflow_id = $1 AND name = $2";
        const SQLITE: &str = "SELECT state, attempt, last_error FROM baton_steps \
                              WHERE workflow_id = $1 AND name = $2";
        match self {
            Raw::Pg(p) => sqlx::query_as(PG).bind(wf.0).bind(name).fetch_one(p).await,
            Raw::Sqlite(p) => {
                sqlx::query_as(SQLITE)
                    .bind(wf.to_string())
                    .bind(name)
                    .fetch_one(p)
                    .await
            }
        }
        .unwrap_or_else(|e| panic!("reading step {name} of {wf}: {e}"))
    }

    /// Moves a workflow, its steps and its claim (if any) a year into the past.
    pub(crate) async fn age(&self, wf: WorkflowId) {
        const PG: [&str; 3] = [
            "UPDATE baton_workflows SET inserted_at = inserted_at - interval '365 days', \
             finished_at = finished_at - interval '365 days' WHERE id = $1",
            "UPDATE baton_steps SET inserted_at = inserted_at - interval '365 days', \
             finished_at = finished_at - interval '365 days' WHERE workflow_id = $1",
            "UPDATE baton_workflow_completions SET finished_at = finished_at - interval '365 days' \
             WHERE workflow_id = $1",
        ];
        const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;
        const SQLITE: [&str; 3] = [
            "UPDATE baton_workflows SET inserted_at = inserted_at - $2, \
             finished_at = finished_at - $2 WHERE id = $1",
            "UPDATE baton_steps SET inserted_at = inserted_at - $2, \
             finished_at = finished_at - $2 WHERE workflow_id = $1",
            "UPDATE baton_workflow_completions SET finished_at = finished_at - $2 \
             WHERE workflow_id = $1",
        ];
        for (pg, sqlite) in PG.into_iter().zip(SQLITE) {
            match self {
                Raw::Pg(p) => sqlx::query(pg).bind(wf.0).execute(p).await.map(drop),
                Raw::Sqlite(p) => sqlx::query(sqlite)
                    .bind(wf.to_string())
                    .bind(YEAR_MS)
                    .execute(p)
                    .await
                    .map(drop),
            }
            .unwrap_or_else(|e| panic!("ageing workflow {wf}: {e}"));
        }
    }

    /// Asserts that an announcement agrees with the steps table: every step terminal, the
    /// counts, the failed steps and the outcome those states give.
    pub(crate) async fn assert_agrees_with_steps(&self, event: &WorkflowFinished) {
        let wf = event.workflow_id;
        let mut counts = StepCounts::default();
        let mut failed = Vec::new();
        for (name, state, _) in self.steps(wf).await {
            match state.as_str() {
                "completed" => counts.completed += 1,
                "discarded" => {
                    counts.discarded += 1;
                    failed.push(name);
                }
                "cancelled" => {
                    counts.cancelled += 1;
                    failed.push(name);
                }
                other => panic!("step {name} of announced workflow {wf} is {other}"),
            }
        }
        failed.sort();
        let outcome = if failed.is_empty() {
            Outcome::Completed
        } else {
            Outcome::Failed
        };
        assert_eq!(event.counts, counts, "counts of workflow {wf}");
        assert_eq!(event.failed_steps, failed, "failed steps of workflow {wf}");
        assert_eq!(event.outcome, outcome, "outcome of workflow {wf}");
    }
}

/// SQLite only: a connection holding the database's write lock (`BEGIN IMMEDIATE`), the
/// embedded equivalent of an unreachable server for baton's writes.
pub(crate) struct SqliteWriteLock {
    conn: SqliteConnection,
}

impl SqliteWriteLock {
    pub(crate) async fn take(url: &str) -> SqliteWriteLock {
        let mut conn = SqliteConnection::connect_with(&sqlite_options(url))
            .await
            .expect("a SQLite connection");
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .expect("taking the write lock");
        SqliteWriteLock { conn }
    }

    /// Sets every step of `wf` to `state` inside the locked transaction: invisible to baton
    /// until [`release`](Self::release).
    pub(crate) async fn set_all_states(&mut self, wf: WorkflowId, state: &str) {
        const SQL: &str = "UPDATE baton_steps SET state = $2 WHERE workflow_id = $1";
        sqlx::query(SQL)
            .bind(wf.to_string())
            .bind(state)
            .execute(&mut self.conn)
            .await
            .expect("setting step states under the lock");
    }

    /// Commits and releases the lock.
    pub(crate) async fn release(mut self) {
        sqlx::raw_sql("COMMIT")
            .execute(&mut self.conn)
            .await
            .expect("releasing the write lock");
        let _ = self.conn.close().await;
    }
}
