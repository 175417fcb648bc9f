//! Faults: `check` while the database cannot be reached returns normally and is counted; once
//! the database is back, the workflow is announced exactly once.
//!
//! - Postgres: baton connects through a test-owned TCP [`Proxy`] that the test cuts (every
//!   connection dropped, new ones reset) and restores, while the test keeps a direct connection.
//! - SQLite (no server to lose): another connection holds the database's write lock, so baton's
//!   claim fails with `SQLITE_BUSY` once its busy timeout (10 s, not configurable) runs out.
//!
//! On Postgres the test keeps the database away until the workflow's supervisor has given up,
//! so the sweep must be the one that announces. On SQLite that would take nine busy timeouts
//! (90 s): the lock is released after the first failure, and the supervisor's retry and the
//! sweep race to announce, once.

use std::time::{Duration, Instant};

use baton::{Baton, DetectedBy, Outcome, Step, TerminalState, Topic, Workflow};

use crate::support::{
    Backend, Proxy, SqliteWriteLock, both_backends, captured_logs, holds_for, subscribe,
    wait_sweeps, wait_until,
};

/// Failed detections after which a workflow supervisor gives up and leaves the workflow to the
/// sweep (`MAX_RETRIES` + 1 in `src/actors/supervisor.rs`).
const SUPERVISOR_GIVES_UP_AFTER: u64 = 9;

/// How baton has lost its database.
enum Outage {
    Proxy(Proxy),
    SqliteLock(SqliteWriteLock),
}

both_backends! {
    async fn check_survives_database_outage(db: TestDb) {
        let logs = captured_logs();
        let (proxy, url) = match db.backend() {
            Backend::Postgres => {
                let proxy = Proxy::start(db.pg_addr()).await;
                let url = db.url_with_port(proxy.port());
                (Some(proxy), url)
            }
            Backend::Sqlite => (None, db.url().to_string()),
        };
        let baton = Baton::builder()
            .database_url(url)
            .migrate(true)
            .sweep_interval(Duration::from_millis(200))
            .connect()
            .await
            .unwrap();
        let raw = db.raw().await;
        let events = subscribe(&baton, Topic::All).await;
        let wf = Workflow::new("outage")
            .step(Step::new("a", "k"))
            .step(Step::new("b", "k"));
        let steps: Vec<_> = wf.steps().iter().map(|s| s.id()).collect();
        let id = baton.insert_workflow(wf).await.unwrap();
        wait_sweeps(&baton, 1, Duration::from_secs(5)).await;

        // Cut, then make both steps terminal where baton cannot see it yet.
        let outage = match proxy {
            Some(proxy) => {
                proxy.cut();
                raw.set_all_states(id, "completed").await;
                Outage::Proxy(proxy)
            }
            None => {
                let mut lock = SqliteWriteLock::take(db.url()).await;
                lock.set_all_states(id, "completed").await;
                Outage::SqliteLock(lock)
            }
        };

        // Both reports return at once, whatever the database does.
        for step in &steps {
            let started = Instant::now();
            baton.check(id, *step, TerminalState::Completed).await;
            assert!(started.elapsed() < Duration::from_secs(1), "check blocked");
        }
        let errors_timeout = Duration::from_secs(25);
        wait_until("check counted a database error", errors_timeout, || {
            baton.stats().check_errors >= 1
        })
        .await;
        let sweeps = baton.stats().sweeps;
        let id_field = format!("workflow_id={id}");
        let warned = logs.lines_with(&["WARN", &id_field, "failed"]);
        assert!(!warned.is_empty(), "no warning logged for the failed check");
        println!("{}: logged: {}", baton.backend(), warned[0]);
        let proxy = match outage {
            Outage::Proxy(proxy) => {
                // Let the supervisor exhaust its retries, so that only the sweep can announce.
                wait_until("the supervisor gave up", errors_timeout, || {
                    baton.stats().check_errors >= SUPERVISOR_GIVES_UP_AFTER
                })
                .await;
                // The sweeper keeps sweeping (and failing) through the outage.
                wait_sweeps(&baton, 2, Duration::from_secs(10)).await;
                assert!(proxy.refused() > 0, "baton never tried to reconnect");
                assert_eq!(events.len(), 0);
                assert_eq!(raw.completions(id).await, 0);
                proxy.restore();
                Some(proxy)
            }
            Outage::SqliteLock(lock) => {
                // Each failed claim first waits out baton's 10 s busy timeout: release after
                // the first, so the supervisor's retry and the sweep race to announce.
                assert_eq!(events.len(), 0);
                assert_eq!(raw.completions(id).await, 0);
                lock.release().await;
                None
            }
        };

        let event = events.first_of(id, Duration::from_secs(15)).await;
        println!(
            "{}: announced after the outage by {:?}; check_errors = {}; sweeps = {} at the \
             first error, {} now",
            baton.backend(),
            event.detected_by,
            baton.stats().check_errors,
            sweeps,
            baton.stats().sweeps,
        );
        assert_eq!(event.outcome, Outcome::Completed);
        assert_eq!(event.counts.completed, 2);
        if db.backend() == Backend::Postgres {
            // The supervisor had given up: the backstop made the announcement.
            assert_eq!(event.detected_by, DetectedBy::Sweep);
        }
        wait_sweeps(&baton, 3, Duration::from_secs(10)).await;
        holds_for("one event", Duration::from_millis(200), || events.len() == 1).await;
        assert_eq!(raw.completions(id).await, 1);
        baton.shutdown().await;
        drop(proxy);
    }
}
