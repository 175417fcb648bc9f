//! Real processes on one database: `baton worker`s run the steps, `baton watch`es write every
//! announcement they hear to a file, `baton enqueue` inserts the workflows. Mid-run a worker is
//! SIGKILLed (and a fresh one started), or the listeners' connections are terminated, or every
//! baton connection is, or the server restarts. Afterwards: one claim row per workflow, every
//! watch file holds every workflow exactly once with the outcome the steps table gives, and no
//! surviving process exits with an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton::{WorkflowFinished, WorkflowId};

use crate::support::{BatonProcess, PrivateServer, Raw, Table, TestDb, baton_cmd, poll_until};

/// What happens to the processes and the database mid-run.
#[derive(Clone, Copy, Debug)]
enum Disruption<'a> {
    /// SIGKILL the first worker; then start a fresh worker in its place.
    KillWorker,
    /// Terminate every listener's connection (`pg_terminate_backend`), twice.
    TerminateListeners,
    /// Terminate every baton connection, pools and listeners alike, twice.
    TerminateAll,
    /// Restart the (private) PostgreSQL server once.
    RestartServer(&'a PrivateServer),
}

/// The shape of a run.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    workers: usize,
    watchers: usize,
    workflows: u32,
    steps: u32,
    step_ms: u64,
}

/// The lease the workers hold: short, so that a killed worker's steps are rescued soon.
const LEASE_MS: &str = "1500";

fn worker_args() -> Vec<&'static str> {
    vec![
        "worker",
        "--concurrency",
        "8",
        "--lease-ms",
        LEASE_MS,
        "--sweep-ms",
        "200",
    ]
}

/// Runs `scenario` against `url` with `disruption`, then checks everything.
async fn run(url: &str, raw: &Raw, scenario: Scenario, disruption: Disruption<'_>) {
    let dir = tempfile::Builder::new()
        .prefix("baton_procs_")
        .tempdir()
        .unwrap();
    baton_cmd(url, &["migrate"]);
    let files: Vec<PathBuf> = (0..scenario.watchers)
        .map(|i| dir.path().join(format!("watch-{i}.jsonl")))
        .collect();
    let mut watchers: Vec<BatonProcess> = files
        .iter()
        .enumerate()
        .map(|(i, file)| {
            let file = file.display().to_string();
            BatonProcess::start(
                &format!("watch-{i}"),
                dir.path(),
                url,
                &["watch", "--events-out", &file],
            )
        })
        .collect();
    let mut workers: Vec<BatonProcess> = (0..scenario.workers)
        .map(|i| BatonProcess::start(&format!("worker-{i}"), dir.path(), url, &worker_args()))
        .collect();
    let (workflows, steps, step_ms) = (
        scenario.workflows.to_string(),
        scenario.steps.to_string(),
        scenario.step_ms.to_string(),
    );
    let enqueued = baton_cmd(
        url,
        &[
            "enqueue",
            "--workflows",
            &workflows,
            "--steps",
            &steps,
            "--fail-rate",
            "0.1",
            "--step-ms",
            &step_ms,
            "--print-ids",
        ],
    );
    let ids: Vec<WorkflowId> = enqueued.lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(
        ids.len(),
        scenario.workflows as usize,
        "enqueue printed every id"
    );

    let total = i64::from(scenario.workflows);
    claimed_at_least(raw, total / 5).await;
    for w in &mut workers {
        w.assert_running();
    }
    match disruption {
        Disruption::KillWorker => {
            workers[0].kill();
            println!(
                "killed worker-0 with {} claims made",
                raw.count(Table::Completions).await
            );
            workers.push(BatonProcess::start(
                "worker-fresh",
                dir.path(),
                url,
                &worker_args(),
            ));
        }
        Disruption::TerminateListeners | Disruption::TerminateAll => {
            let listeners_only = matches!(disruption, Disruption::TerminateListeners);
            for round in 1..=2 {
                let n = terminate(raw, listeners_only).await;
                println!("round {round}: terminated {n} connections ({disruption:?})");
                assert!(
                    n >= scenario.watchers as i64,
                    "no connection was terminated"
                );
                claimed_at_least(raw, total * (round + 1) / 4).await;
            }
        }
        Disruption::RestartServer(server) => {
            server.restart();
            println!(
                "restarted the server with {} claims made",
                raw.count(Table::Completions).await
            );
        }
    }
    claimed_at_least(raw, total).await;
    for file in &files {
        poll_until(
            &format!("{} held every workflow", file.display()),
            Duration::from_secs(60),
            || async { lines(file).len() >= ids.len() },
        )
        .await;
    }
    for p in watchers.iter_mut().chain(workers.iter_mut()) {
        if !p.was_killed() {
            p.stop(Duration::from_secs(60)).await;
        }
    }

    // One claim per workflow, and nothing but these workflows.
    assert_eq!(raw.count(Table::Completions).await, total);
    assert_eq!(raw.count(Table::Workflows).await, total);
    for id in &ids {
        assert_eq!(raw.completions(*id).await, 1, "claims of workflow {id}");
    }
    // Every watch file: every workflow exactly once, agreeing with the steps table.
    let mut first: Option<HashMap<WorkflowId, WorkflowFinished>> = None;
    for file in &files {
        let events = exactly_once(file, &ids);
        match &first {
            None => {
                for event in events.values() {
                    raw.assert_agrees_with_steps(event).await;
                }
                first = Some(events);
            }
            Some(first) => assert_eq!(&events, first, "watchers disagree"),
        }
    }
    if let Disruption::KillWorker = disruption {
        let rescued = workers
            .iter()
            .any(|w| w.stderr().contains("rescued steps of lost nodes"));
        assert!(
            rescued,
            "the killed worker owned no step that was rescued: not killed mid-run?"
        );
    }
    for w in &workers {
        assert!(
            !w.stderr().contains("panicked"),
            "a worker panicked:\n{}",
            w.stderr()
        );
    }
    let summary: Vec<String> = workers
        .iter()
        .filter_map(|w| w.stdout().lines().last().map(str::to_owned))
        .collect();
    println!(
        "{disruption:?}: {} workflows, each once in {} watch files\n{}",
        ids.len(),
        files.len(),
        summary.join("\n")
    );
}

/// Waits until at least `n` workflows have been claimed.
async fn claimed_at_least(raw: &Raw, n: i64) {
    poll_until(
        &format!("{n} workflows were claimed"),
        Duration::from_secs(180),
        || async { raw.count(Table::Completions).await >= n },
    )
    .await;
}

/// Terminates baton's connections to the database (only listeners', or all); returns how many.
async fn terminate(raw: &Raw, listeners_only: bool) -> i64 {
    if listeners_only {
        raw.scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'baton-listener'",
        )
        .await
    } else {
        raw.scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name LIKE 'baton%'",
        )
        .await
    }
}

fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Parses a watch file; asserts it holds each of `ids` exactly once and nothing else.
fn exactly_once(file: &Path, ids: &[WorkflowId]) -> HashMap<WorkflowId, WorkflowFinished> {
    let mut events = HashMap::new();
    for line in lines(file) {
        let event: WorkflowFinished = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: bad line {line:?}: {e}", file.display()));
        let id = event.workflow_id;
        assert!(
            events.insert(id, event).is_none(),
            "{}: workflow {id} twice",
            file.display()
        );
    }
    assert_eq!(events.len(), ids.len(), "{}: events", file.display());
    for id in ids {
        assert!(
            events.contains_key(id),
            "{}: workflow {id} missing",
            file.display()
        );
    }
    events
}

/// Issue 3's kill scenario: two workers, 300 workflows × 10 steps of 50 ms, one worker
/// SIGKILLed mid-run and a fresh one started.
const KILL: Scenario = Scenario {
    workers: 2,
    watchers: 1,
    workflows: 300,
    steps: 10,
    step_ms: 50,
};

/// The multi-node scenario: three workers and two watchers, 500 workflows × 20 steps.
const NODES: Scenario = Scenario {
    workers: 3,
    watchers: 2,
    workflows: 500,
    steps: 20,
    step_ms: 2,
};

/// Connection faults: two workers, one watcher, 300 workflows × 10 steps of 20 ms.
const FAULTS: Scenario = Scenario {
    workers: 2,
    watchers: 1,
    workflows: 300,
    steps: 10,
    step_ms: 20,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_loses_nothing_sqlite() {
    let db = TestDb::new(crate::support::Backend::Sqlite).await;
    run(db.url(), &db.raw().await, KILL, Disruption::KillWorker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_loses_nothing_postgres() {
    let db = TestDb::new(crate::support::Backend::Postgres).await;
    run(db.url(), &db.raw().await, KILL, Disruption::KillWorker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_two_watchers_one_killed_postgres() {
    let db = TestDb::new(crate::support::Backend::Postgres).await;
    run(db.url(), &db.raw().await, NODES, Disruption::KillWorker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_terminated_twice_postgres() {
    let db = TestDb::new(crate::support::Backend::Postgres).await;
    run(
        db.url(),
        &db.raw().await,
        NODES,
        Disruption::TerminateListeners,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_terminated_twice_postgres() {
    let db = TestDb::new(crate::support::Backend::Postgres).await;
    run(db.url(), &db.raw().await, FAULTS, Disruption::TerminateAll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restarted_postgres() {
    let server = PrivateServer::start();
    let url = server.url("postgres");
    let raw = Raw::connect(crate::support::Backend::Postgres, &url).await;
    run(&url, &raw, FAULTS, Disruption::RestartServer(&server)).await;
}
