//! The harness: a fresh database per test on each backend, raw SQL behind baton's back, polling
//! waits, a subscriber actor that records what it receives, and captured warnings.

mod collector;
mod logs;
mod process;
mod proxy;
mod raw;

use std::time::{Duration, Instant};

use baton::Baton;
use sqlx::Connection;

pub(crate) use collector::{Events, subscribe};
pub(crate) use logs::captured as captured_logs;
pub(crate) use process::{BatonProcess, PrivateServer, baton_cmd};
pub(crate) use proxy::Proxy;
pub(crate) use raw::{Raw, SqliteWriteLock, Table};

/// Where the Postgres tests connect to create their databases.
const PG_URL_VAR: &str = "BATON_TEST_PG_URL";
const PG_DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Expands one async test body into `<name>_sqlite` and `<name>_postgres`, each on a fresh
/// [`TestDb`] and a multi-threaded runtime.
///
/// ```ignore
/// both_backends! {
///     async fn announces_once(db: TestDb) { /* ... */ }
/// }
/// ```
macro_rules! both_backends {
    ($(#[$meta:meta])* async fn $name:ident($db:ident: TestDb) $body:block) => {
        $(#[$meta])*
        async fn $name($db: $crate::support::TestDb) $body

        pastey::paste! {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn [<$name _sqlite>]() {
                $name($crate::support::TestDb::new($crate::support::Backend::Sqlite).await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn [<$name _postgres>]() {
                $name($crate::support::TestDb::new($crate::support::Backend::Postgres).await).await
            }
        }
    };
}
pub(crate) use both_backends;

/// A database backend under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, migrated-on-demand database that disappears with the test: a temporary file for
/// SQLite, a `baton_t_<random>` database for Postgres (dropped `WITH (FORCE)`).
pub(crate) struct TestDb {
    backend: Backend,
    url: String,
    /// Postgres: the server's admin URL and the database we created there.
    pg: Option<(url::Url, String)>,
    /// SQLite: the directory holding the file (removed on drop).
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Creates the database. Panics (fails the test) when PostgreSQL cannot be reached.
    pub(crate) async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("baton_t_")
                    .tempdir()
                    .expect("creating a temporary directory");
                let url = format!("sqlite:{}", dir.path().join("baton.db").display());
                TestDb {
                    backend,
                    url,
                    pg: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin = std::env::var(PG_URL_VAR).unwrap_or_else(|_| PG_DEFAULT_URL.into());
                let admin = url::Url::parse(&admin)
                    .unwrap_or_else(|e| panic!("{PG_URL_VAR} is not a URL ({e})"));
                let name = format!("baton_t_{}", uuid::Uuid::new_v4().simple());
                let mut conn = admin_connection(&admin).await;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
                let _ = conn.close().await;
                let mut url = admin.clone();
                url.set_path(&name);
                TestDb {
                    backend,
                    url: url.to_string(),
                    pg: Some((admin, name)),
                    _dir: None,
                }
            }
        }
    }

    pub(crate) fn backend(&self) -> Backend {
        self.backend
    }

    /// The database URL to give baton.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// A builder for this database with test-friendly settings: migrations applied, a 150 ms
    /// sweep, enough connections for the races.
    pub(crate) fn builder(&self) -> baton::Builder {
        Baton::builder()
            .database_url(self.url())
            .migrate(true)
            .sweep_interval(Duration::from_millis(150))
            .max_connections(16)
    }

    /// Connects a baton instance with [`builder`](Self::builder)'s settings.
    pub(crate) async fn baton(&self) -> Baton {
        self.builder()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting baton to {}: {e}", self.url))
    }

    /// A plain sqlx pool on the same database, for SQL behind baton's back.
    pub(crate) async fn raw(&self) -> Raw {
        Raw::connect(self.backend, &self.url).await
    }

    /// Postgres only: this database's URL with another port (to go through a [`Proxy`]).
    pub(crate) fn url_with_port(&self, port: u16) -> String {
        let mut url = url::Url::parse(&self.url).expect("the test URL parses");
        url.set_port(Some(port)).expect("a URL with a host");
        url.to_string()
    }

    /// Postgres only: `host:port` of the server.
    pub(crate) fn pg_addr(&self) -> String {
        let (admin, _) = self.pg.as_ref().expect("a Postgres test database");
        format!(
            "{}:{}",
            admin.host_str().unwrap_or("127.0.0.1"),
            admin.port().unwrap_or(5432)
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.pg.take() else {
            return;
        };
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(admin.as_str()).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await
            })
            .map_err(|e| format!("dropping test database {name}: {e}"))
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: {e}"),
            Err(_) => eprintln!("warning: the database cleanup thread panicked"),
        }
    }
}

async fn admin_connection(admin: &url::Url) -> sqlx::PgConnection {
    let connect = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect(admin.as_str()),
    )
    .await;
    match connect {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "PostgreSQL at {} is unreachable ({e}). The Postgres tests need it: start it \
             (`pg_ctlcluster <version> main start`) or point {PG_URL_VAR} at one. They never skip.",
            baton::redact_url(admin.as_str())
        ),
        Err(_) => panic!(
            "PostgreSQL at {} did not answer within 10 s. The Postgres tests need it; they never skip.",
            baton::redact_url(admin.as_str())
        ),
    }
}

/// Polls `cond` every 10 ms until it holds; fails the test after `timeout`.
pub(crate) async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls an async condition every 10 ms until it holds; fails the test after `timeout`.
pub(crate) async fn poll_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts that `cond` keeps holding for the whole `window` (a negative check: "nothing else
/// arrives"), failing at the first poll where it does not.
pub(crate) async fn holds_for(what: &str, window: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        assert!(cond(), "expected {what} to keep holding, but it stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cond(), "expected {what} to keep holding, but it stopped");
}

/// Waits until `baton`'s sweeper has completed `n` more sweeps than when called.
pub(crate) async fn wait_sweeps(baton: &Baton, n: u64, timeout: Duration) {
    let target = baton.stats().sweeps + n;
    wait_until(&format!("{n} more sweeps ran"), timeout, || {
        baton.stats().sweeps >= target
    })
    .await;
}
