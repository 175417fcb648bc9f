//! Fresh databases per scenario and plain SQL behind baton's back.
//!
//! Postgres: a `baton_bench_<random>` database on the server named by `BATON_BENCH_PG_URL`,
//! `BATON_TEST_PG_URL` or the local default, dropped `WITH (FORCE)` afterwards. SQLite: a file
//! in a temporary directory. Ids are `uuid` on Postgres and hyphenated `TEXT` on SQLite; every
//! helper binds the right one.

use std::str::FromStr;
use std::time::Duration;

use baton::{Baton, StepId, WorkflowId};
use sqlx::Connection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use uuid::Uuid;

/// A database backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The Postgres server the benchmarks create their databases on.
pub(crate) fn admin_url() -> String {
    std::env::var("BATON_BENCH_PG_URL")
        .or_else(|_| std::env::var("BATON_TEST_PG_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn admin_connection(admin: &str) -> sqlx::PgConnection {
    match tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(admin)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "PostgreSQL at {} is unreachable ({e}); the benchmarks need it (set BATON_BENCH_PG_URL, \
             or start the local cluster with `pg_ctlcluster <version> main start`). They never skip.",
            baton::redact_url(admin)
        ),
        Err(_) => panic!(
            "PostgreSQL at {} did not answer within 10 s; the benchmarks need it.",
            baton::redact_url(admin)
        ),
    }
}

/// A database that lives for one scenario.
pub(crate) struct BenchDb {
    pub(crate) backend: Backend,
    pub(crate) url: String,
    /// Postgres: the admin URL and the database created there.
    pg: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl BenchDb {
    /// Creates an empty database. Panics when Postgres cannot be reached.
    pub(crate) async fn create(backend: Backend) -> BenchDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("baton_bench_")
                    .tempdir()
                    .expect("creating a temporary directory");
                let url = format!("sqlite:{}", dir.path().join("bench.db").display());
                BenchDb {
                    backend,
                    url,
                    pg: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin = admin_url();
                let name = format!("baton_bench_{}", Uuid::new_v4().simple());
                let mut conn = admin_connection(&admin).await;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
                let _ = conn.close().await;
                let mut url = url::Url::parse(&admin).expect("the Postgres URL parses");
                url.set_path(&name);
                BenchDb {
                    backend,
                    url: url.to_string(),
                    pg: Some((admin, name)),
                    _dir: None,
                }
            }
        }
    }

    /// A baton builder on this database: migrations applied, a pool of `connections`.
    pub(crate) fn builder(&self, connections: u32) -> baton::Builder {
        Baton::builder()
            .database_url(&self.url)
            .migrate(true)
            .max_connections(connections)
    }

    /// A plain sqlx pool of `connections` (connect after baton migrated the schema).
    pub(crate) async fn raw(&self, connections: u32) -> Raw {
        match self.backend {
            Backend::Postgres => Raw::Pg(
                PgPoolOptions::new()
                    .max_connections(connections)
                    .connect(&self.url)
                    .await
                    .unwrap_or_else(|e| panic!("raw Postgres pool: {e}")),
            ),
            Backend::Sqlite => Raw::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(connections)
                    .connect_with(
                        SqliteConnectOptions::from_str(&self.url)
                            .expect("a SQLite URL")
                            .journal_mode(SqliteJournalMode::Wal)
                            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                            .busy_timeout(Duration::from_secs(30)),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("raw SQLite pool: {e}")),
            ),
        }
    }

    /// Postgres: rows read from `baton_steps` so far (sequential-scan tuples plus index entries
    /// returned), from the cumulative statistics. Backends flush theirs when they exit, so
    /// close the pools whose reads should count first; this waits a little for their exit.
    pub(crate) async fn pg_rows_read(&self) -> Option<i64> {
        const SQL: &str = "SELECT (SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables \
                 WHERE relname = 'baton_steps') \
             + (SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes \
                 WHERE relname = 'baton_steps')::bigint";
        if self.backend != Backend::Postgres {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut conn = must(
            "connecting for statistics",
            sqlx::PgConnection::connect(&self.url).await,
        );
        let n: i64 = must(
            "reading statistics",
            sqlx::query_scalar(SQL).fetch_one(&mut conn).await,
        );
        let _ = conn.close().await;
        Some(n)
    }

    /// Drops the Postgres database (`WITH (FORCE)`); SQLite's directory goes with `self`.
    pub(crate) async fn drop_db(mut self) {
        if let Some((admin, name)) = self.pg.take() {
            let mut conn = admin_connection(&admin).await;
            if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
            {
                eprintln!("warning: dropping database {name}: {e}");
            }
            let _ = conn.close().await;
        }
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        // Only reached when a scenario panicked before `drop_db`: clean up on a thread of its own.
        let Some((admin, name)) = self.pg.take() else {
            return;
        };
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A raw sqlx pool on a benchmark database.
#[derive(Clone, Debug)]
pub(crate) enum Raw {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

fn must<T>(what: &str, r: Result<T, sqlx::Error>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

impl Raw {
    /// Commits every step of `wf` as completed, in one statement.
    pub(crate) async fn complete_all(&self, wf: WorkflowId) -> u64 {
        const PG: &str = "UPDATE baton_steps SET state = 'completed', finished_at = now() \
             WHERE workflow_id = $1";
        const LITE: &str = "UPDATE baton_steps SET state = 'completed', finished_at = $2 \
             WHERE workflow_id = $1";
        let r = match self {
            Raw::Pg(p) => sqlx::query(PG)
                .bind(wf.0)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Raw::Sqlite(p) => sqlx::query(LITE)
                .bind(wf.to_string())
                .bind(chrono::Utc::now().timestamp_millis())
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        };
        must("completing all steps", r)
    }

    /// Sets the listed steps back to `state`.
    pub(crate) async fn set_state(&self, wf: WorkflowId, state: &str) {
        const SQL: &str = "UPDATE baton_steps SET state = $2 WHERE workflow_id = $1";
        let r = match self {
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
        };
        must("setting states", r);
    }

    /// The naive baseline's table of claims.
    pub(crate) async fn naive_setup(&self) {
        match self {
            Raw::Pg(p) => must(
                "creating the naive claims table",
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS bench_naive_claims (workflow_id uuid PRIMARY KEY)",
                )
                .execute(p)
                .await
                .map(|_| ()),
            ),
            Raw::Sqlite(p) => must(
                "creating the naive claims table",
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS bench_naive_claims (workflow_id TEXT PRIMARY KEY)",
                )
                .execute(p)
                .await
                .map(|_| ()),
            ),
        }
    }

    /// The naive detection read: every step's state.
    pub(crate) async fn naive_read(&self, wf: WorkflowId) -> Vec<String> {
        const SQL: &str = "SELECT state FROM baton_steps WHERE workflow_id = $1";
        let r = match self {
            Raw::Pg(p) => sqlx::query_scalar(SQL).bind(wf.0).fetch_all(p).await,
            Raw::Sqlite(p) => {
                sqlx::query_scalar(SQL)
                    .bind(wf.to_string())
                    .fetch_all(p)
                    .await
            }
        };
        must("naive read", r)
    }

    /// The naive claim: true when this call inserted the row.
    pub(crate) async fn naive_claim(&self, wf: WorkflowId) -> bool {
        const SQL: &str = "INSERT INTO bench_naive_claims (workflow_id) VALUES ($1) \
             ON CONFLICT (workflow_id) DO NOTHING";
        let r = match self {
            Raw::Pg(p) => sqlx::query(SQL)
                .bind(wf.0)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Raw::Sqlite(p) => sqlx::query(SQL)
                .bind(wf.to_string())
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        };
        must("naive claim", r) == 1
    }

    /// Marks every step of workflows named `name` executing (attempt 1), as a runner would.
    pub(crate) async fn set_executing_by_name(&self, name: &str) -> Vec<StepId> {
        const SQL: &str = "UPDATE baton_steps SET state = 'executing', attempt = 1 \
             WHERE workflow_id IN (SELECT id FROM baton_workflows WHERE name = $1) RETURNING id";
        match self {
            Raw::Pg(p) => {
                let ids: Vec<Uuid> = must(
                    "marking steps executing",
                    sqlx::query_scalar(SQL).bind(name).fetch_all(p).await,
                );
                ids.into_iter().map(StepId).collect()
            }
            Raw::Sqlite(p) => {
                let ids: Vec<String> = must(
                    "marking steps executing",
                    sqlx::query_scalar(SQL).bind(name).fetch_all(p).await,
                );
                ids.iter().map(|s| s.parse().expect("a step id")).collect()
            }
        }
    }

    /// The bare terminal write: one fenced single-row update, as the runner's own end write.
    pub(crate) async fn bare_complete(&self, step: StepId) -> bool {
        const PG: &str = "UPDATE baton_steps SET state = 'completed', finished_at = now(), \
             owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND attempt = 1 AND state = 'executing'";
        const LITE: &str = "UPDATE baton_steps SET state = 'completed', finished_at = $2, \
             owner = NULL, lease_expires_at = NULL \
             WHERE id = $1 AND attempt = 1 AND state = 'executing'";
        let r = match self {
            Raw::Pg(p) => sqlx::query(PG)
                .bind(step.0)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Raw::Sqlite(p) => sqlx::query(LITE)
                .bind(step.to_string())
                .bind(chrono::Utc::now().timestamp_millis())
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        };
        must("bare update", r) == 1
    }

    /// The same terminal write for many rows in one statement.
    pub(crate) async fn batched_complete(&self, steps: &[StepId]) -> u64 {
        const PG: &str = "UPDATE baton_steps SET state = 'completed', finished_at = now(), \
             owner = NULL, lease_expires_at = NULL \
             WHERE id = ANY($1) AND attempt = 1 AND state = 'executing'";
        const LITE: &str = "UPDATE baton_steps SET state = 'completed', finished_at = $2, \
             owner = NULL, lease_expires_at = NULL \
             WHERE id IN (SELECT value FROM json_each($1)) AND attempt = 1 AND state = 'executing'";
        let r = match self {
            Raw::Pg(p) => {
                let ids: Vec<Uuid> = steps.iter().map(|s| s.0).collect();
                sqlx::query(PG)
                    .bind(ids)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected())
            }
            Raw::Sqlite(p) => {
                let ids: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
                sqlx::query(LITE)
                    .bind(serde_json::to_string(&ids).expect("ids serialize"))
                    .bind(chrono::Utc::now().timestamp_millis())
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected())
            }
        };
        must("batched update", r)
    }

    /// For workflows named `name`: (steps, ms from the first step's start to the last step's
    /// terminal write), from the timestamps the runner wrote.
    pub(crate) async fn step_span(&self, name: &str) -> (u64, f64) {
        const PG: &str = "SELECT count(*), \
             (extract(epoch FROM max(s.finished_at) - min(s.started_at)) * 1000)::float8 \
             FROM baton_steps s JOIN baton_workflows w ON w.id = s.workflow_id \
             WHERE w.name = $1 AND s.state = 'completed'";
        const LITE: &str = "SELECT count(*), CAST(max(s.finished_at) - min(s.started_at) AS REAL) \
             FROM baton_steps s JOIN baton_workflows w ON w.id = s.workflow_id \
             WHERE w.name = $1 AND s.state = 'completed'";
        let (n, ms): (i64, Option<f64>) = match self {
            Raw::Pg(p) => must(
                "reading the step span",
                sqlx::query_as(PG).bind(name).fetch_one(p).await,
            ),
            Raw::Sqlite(p) => must(
                "reading the step span",
                sqlx::query_as(LITE).bind(name).fetch_one(p).await,
            ),
        };
        (n as u64, ms.unwrap_or(0.0))
    }

    /// Moves the waiting steps of `wf` to the front of the runner's queue.
    pub(crate) async fn backdate(&self, wf: WorkflowId) {
        const PG: &str = "UPDATE baton_steps SET run_at = run_at - interval '1 hour' \
             WHERE workflow_id = $1 AND state = 'available'";
        const LITE: &str = "UPDATE baton_steps SET run_at = run_at - 3600000 \
             WHERE workflow_id = $1 AND state = 'available'";
        let r = match self {
            Raw::Pg(p) => sqlx::query(PG)
                .bind(wf.0)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Raw::Sqlite(p) => sqlx::query(LITE)
                .bind(wf.to_string())
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        };
        must("backdating steps", r);
    }

    /// Bulk-loads `n` announced workflows (every other one with two completed steps, the rest
    /// with none) and their claim rows, in three set-based statements.
    pub(crate) async fn load_history(&self, n: u64) {
        match self {
            Raw::Pg(p) => {
                const WF: &str = "INSERT INTO baton_workflows (id, name, inserted_at, finished_at) \
                     SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'history', \
                            now() - interval '30 days' + g * interval '1 millisecond', \
                            now() - interval '30 days' + g * interval '1 millisecond' + interval '1 second' \
                     FROM generate_series(1::bigint, $1::bigint) AS g";
                const STEPS: &str = "INSERT INTO baton_steps (id, workflow_id, name, kind, state, attempt, \
                         max_attempts, run_at, inserted_at, started_at, finished_at) \
                     SELECT ('00000000-0000-4' || k || '00-9000-' || lpad(g::text, 12, '0'))::uuid, \
                            ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, \
                            's' || k, 'history', 'completed', 1, 1, now(), now(), now(), now() \
                     FROM generate_series(1::bigint, $1::bigint) AS g, (VALUES (0), (1)) AS ks(k) \
                     WHERE g % 2 = 0";
                const CLAIMS: &str = "INSERT INTO baton_workflow_completions (workflow_id, name, \
                         outcome, failed_steps, completed, discarded, cancelled, detected_by, node, finished_at) \
                     SELECT id, name, 'completed', '[]'::jsonb, 2, 0, 0, 'prompt', 'bench-history', finished_at \
                     FROM baton_workflows WHERE name = 'history' ORDER BY id";
                for (what, sql) in [("workflows", WF), ("steps", STEPS)] {
                    must(
                        what,
                        sqlx::query(sql).bind(n as i64).execute(p).await.map(|_| ()),
                    );
                }
                must("claims", sqlx::query(CLAIMS).execute(p).await.map(|_| ()));
            }
            Raw::Sqlite(p) => {
                const WF: &str = "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < $1) \
                     INSERT INTO baton_workflows (id, name, inserted_at, finished_at) \
                     SELECT printf('00000000-0000-4000-8000-%012d', n), 'history', $2 + n, $2 + n + 1000 \
                     FROM g";
                const STEPS: &str = "WITH RECURSIVE g(n) AS (SELECT 2 UNION ALL SELECT n + 2 FROM g WHERE n + 2 <= $1) \
                     INSERT INTO baton_steps (id, workflow_id, name, kind, state, attempt, max_attempts, \
                         run_at, inserted_at, started_at, finished_at) \
                     SELECT printf('00000000-0000-4%d00-9000-%012d', k, n), \
                            printf('00000000-0000-4000-8000-%012d', n), \
                            's' || k, 'history', 'completed', 1, 1, $2, $2, $2, $2 + n \
                     FROM g, (SELECT 0 AS k UNION ALL SELECT 1)";
                const CLAIMS: &str = "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < $1) \
                     INSERT INTO baton_workflow_completions (workflow_id, seq, name, outcome, failed_steps, \
                         completed, discarded, cancelled, detected_by, node, finished_at) \
                     SELECT printf('00000000-0000-4000-8000-%012d', n), n, 'history', 'completed', '[]', \
                            2, 0, 0, 'prompt', 'bench-history', $2 + n + 1000 \
                     FROM g";
                const SEQ: &str =
                    "UPDATE baton_sequence SET value = value + $1 WHERE name = 'completions'";
                let start = chrono::Utc::now().timestamp_millis() - 30 * 86_400_000;
                let mut tx = must("loading history", p.begin().await);
                for (what, sql) in [("workflows", WF), ("steps", STEPS), ("claims", CLAIMS)] {
                    must(
                        what,
                        sqlx::query(sql)
                            .bind(n as i64)
                            .bind(start)
                            .execute(&mut *tx)
                            .await
                            .map(|_| ()),
                    );
                }
                must(
                    "bumping the sequence",
                    sqlx::query(SEQ)
                        .bind(n as i64)
                        .execute(&mut *tx)
                        .await
                        .map(|_| ()),
                );
                must("loading history", tx.commit().await);
            }
        }
    }

    /// Refreshes the planner's statistics.
    pub(crate) async fn analyze(&self) {
        match self {
            Raw::Pg(p) => must(
                "VACUUM ANALYZE",
                sqlx::raw_sql("VACUUM ANALYZE").execute(p).await.map(|_| ()),
            ),
            Raw::Sqlite(p) => must(
                "ANALYZE",
                sqlx::raw_sql("ANALYZE").execute(p).await.map(|_| ()),
            ),
        }
    }

    /// Rows in a table, by name (a fixed list: no SQL is built from input).
    pub(crate) async fn count(&self, table: &str) -> u64 {
        let sql: &'static str = match table {
            "baton_workflows" => "SELECT count(*) FROM baton_workflows",
            "baton_steps" => "SELECT count(*) FROM baton_steps",
            "baton_workflow_completions" => "SELECT count(*) FROM baton_workflow_completions",
            other => panic!("no count query for {other}"),
        };
        let n: i64 = match self {
            Raw::Pg(p) => must("counting", sqlx::query_scalar(sql).fetch_one(p).await),
            Raw::Sqlite(p) => must("counting", sqlx::query_scalar(sql).fetch_one(p).await),
        };
        n as u64
    }

    pub(crate) async fn close(&self) {
        match self {
            Raw::Pg(p) => p.close().await,
            Raw::Sqlite(p) => p.close().await,
        }
    }
}

/// The Postgres server's and the bundled SQLite's versions.
pub(crate) async fn versions() -> (String, String) {
    let mut pg = admin_connection(&admin_url()).await;
    let pg_version: String = must(
        "reading the Postgres version",
        sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut pg)
            .await,
    );
    let _ = pg.close().await;
    let mut lite = must(
        "opening SQLite in memory",
        sqlx::SqliteConnection::connect("sqlite::memory:").await,
    );
    let lite_version: String = must(
        "reading the SQLite version",
        sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(&mut lite)
            .await,
    );
    let _ = lite.close().await;
    (pg_version, lite_version)
}
