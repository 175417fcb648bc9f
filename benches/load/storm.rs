//! Scenarios 1 and 2: the sibling storm through baton's prompt path, and the naive rescan
//! baseline on the very same workflow, side by side.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton::{DetectedBy, Outcome, Step, StepId, TerminalState, Workflow, WorkflowId};
use tokio::sync::{Barrier, Mutex};

use crate::Sizes;
use crate::db::{Backend, BenchDb, Raw};
use crate::probe::{Events, Metrics, ms};
use crate::report::StormRow;

/// Tasks reporting concurrently (baton and naive alike).
pub(crate) const TASKS: usize = 64;
/// Database connections (baton's pool and the naive baseline's pool alike).
const CONNECTIONS: u32 = 10;

pub(crate) async fn run(backend: Backend, sizes: &Sizes, metrics: &Metrics) -> Vec<StormRow> {
    let db = BenchDb::create(backend).await;
    let mut rows = Vec::new();
    for &n in &sizes.storm_ns {
        // A fresh instance per size: closing its pool at the end makes Postgres flush the
        // statistics that the rows-read figure comes from.
        let baton = db
            .builder(CONNECTIONS)
            // The sweep must not race the prompt path here.
            .sweep_interval(Duration::from_secs(3_600))
            .connect()
            .await
            .expect("connecting baton");
        let events = Events::subscribe(&baton).await;
        let wf = Workflow::new(format!("storm-{n}"))
            .steps_from((0..n).map(|i| Step::new(format!("s{i:06}"), "storm-no-runner")));
        let steps: Vec<StepId> = wf.steps().iter().map(|s| s.id()).collect();
        let inserted = Instant::now();
        let id = baton
            .insert_workflow(wf)
            .await
            .expect("inserting the storm");
        let insert_ms = ms(inserted.elapsed());
        {
            let raw = db.raw(1).await;
            assert_eq!(
                raw.complete_all(id).await,
                n as u64,
                "one UPDATE for all steps"
            );
            raw.close().await;
        }
        let measure_rows = backend == Backend::Postgres && sizes.full;
        let rows_before = if measure_rows {
            db.pg_rows_read().await
        } else {
            None
        };

        // --- baton: every step reported through check(), from TASKS tasks at once.
        let before = baton.stats();
        metrics.take_histogram("baton_detection_latency_seconds{path=prompt}");
        let steps = Arc::new(steps);
        let barrier = Arc::new(Barrier::new(TASKS + 1));
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let (baton, barrier, steps) = (baton.clone(), barrier.clone(), steps.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    for step in steps.iter().skip(t).step_by(TASKS) {
                        baton.check(id, *step, TerminalState::Completed).await;
                    }
                    Instant::now()
                })
            })
            .collect();
        barrier.wait().await;
        let t0 = Instant::now();
        let mut reported = t0;
        for t in tasks {
            reported = reported.max(t.await.expect("a reporting task"));
        }
        let arrival = events.wait_for(id, Duration::from_secs(120)).await;
        let quiet = metrics.wait_no_supervisors(Duration::from_secs(120)).await;
        let absorbed = reported.max(arrival.at).max(quiet);
        let after = baton.stats();
        let ev = &arrival.event;
        assert_eq!(ev.outcome, Outcome::Completed);
        assert_eq!(ev.counts.completed, n as u64);
        assert_eq!(ev.detected_by, DetectedBy::Prompt);
        assert_eq!(after.checks - before.checks, n as u64);
        assert_eq!(after.check_errors, before.check_errors, "no check failed");
        let queries = after.detection_queries - before.detection_queries;
        baton.shutdown().await;
        let rows_read = match rows_before {
            Some(b) => db.pg_rows_read().await.map(|a| (a - b) as f64 / n as f64),
            None => None,
        };
        let claim_to_subscriber_ms = (arrival.wall - ev.finished_at)
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1_000.0;
        let internal = metrics.take_histogram("baton_detection_latency_seconds{path=prompt}");

        events.assert_exactly_once(&[id], "storm");

        // --- naive: every report re-reads all of the workflow's steps, claims when all terminal.
        let raw = db.raw(CONNECTIONS).await;
        raw.naive_setup().await;
        let naive = naive(
            &raw,
            id,
            &steps,
            sizes.naive_sample_above,
            sizes.naive_sample,
        )
        .await;
        raw.close().await;

        let baton_ms = ms(absorbed - t0);
        let row = StormRow {
            backend,
            n: n as u64,
            tasks: TASKS as u64,
            insert_ms,
            baton_event_ms: ms(arrival.at - t0),
            baton_reports_ms: ms(reported - t0),
            baton_total_ms: baton_ms,
            detection_queries: queries,
            queries_per_step: queries as f64 / n as f64,
            rows_read_per_step: rows_read,
            claim_to_subscriber_ms,
            internal_latency_ms: internal.iter().map(|s| s * 1_000.0).fold(0.0, f64::max),
            naive_event_ms: naive.event_ms,
            naive_total_ms: naive.total_ms,
            naive_reports_run: naive.reports,
            naive_extrapolated: naive.extrapolated,
            naive_per_report_ms: naive.total_ms / n as f64,
            naive_rows_per_step: naive.rows as f64 / naive.reports as f64,
            ratio: naive.total_ms / baton_ms,
        };
        println!(
            "  storm {:>8} {n:>7} steps: baton {:>9.1} ms (event {:.1} ms, {} queries = {:.4}/step), \
             naive {:>11.1} ms{} -> {:.0}x",
            backend.name(),
            row.baton_total_ms,
            row.baton_event_ms,
            queries,
            row.queries_per_step,
            row.naive_total_ms,
            if naive.extrapolated {
                format!(" (extrapolated from {} reports)", naive.reports)
            } else {
                String::new()
            },
            row.ratio
        );
        rows.push(row);
    }
    db.drop_db().await;
    rows
}

struct NaiveRun {
    reports: u64,
    rows: u64,
    event_ms: f64,
    total_ms: f64,
    extrapolated: bool,
}

/// The naive strategy of the system baton is modelled on: on every report, read every step of
/// the workflow and claim (insert, on conflict do nothing) when all are terminal. Above
/// `sample_above` steps only `sample` reports are run and the total is extrapolated from their
/// throughput.
async fn naive(
    raw: &Raw,
    wf: WorkflowId,
    steps: &Arc<Vec<StepId>>,
    sample_above: usize,
    sample: usize,
) -> NaiveRun {
    let n = steps.len();
    let (reports, extrapolated) = if n > sample_above {
        (sample.min(n), true)
    } else {
        (n, false)
    };
    let rows = Arc::new(AtomicU64::new(0));
    let won = Arc::new(Mutex::new(None::<Instant>));
    let barrier = Arc::new(Barrier::new(TASKS + 1));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (raw, steps, rows, won, barrier) = (
                raw.clone(),
                steps.clone(),
                rows.clone(),
                won.clone(),
                barrier.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                for _step in steps[..reports].iter().skip(t).step_by(TASKS) {
                    let states = raw.naive_read(wf).await;
                    rows.fetch_add(states.len() as u64, Ordering::Relaxed);
                    // The reported step's own state is overlaid; here it is committed already.
                    let settled = states
                        .iter()
                        .all(|s| matches!(s.as_str(), "completed" | "discarded" | "cancelled"));
                    if settled && raw.naive_claim(wf).await {
                        *won.lock().await = Some(Instant::now());
                    }
                }
                Instant::now()
            })
        })
        .collect();
    barrier.wait().await;
    let t0 = Instant::now();
    let mut done = t0;
    for t in tasks {
        done = done.max(t.await.expect("a naive task"));
    }
    let event = won
        .lock()
        .await
        .expect("the naive baseline claimed the workflow");
    let run_ms = ms(done - t0);
    NaiveRun {
        reports: reports as u64,
        rows: rows.load(Ordering::Relaxed),
        event_ms: ms(event - t0),
        total_ms: run_ms * n as f64 / reports as f64,
        extrapolated,
    }
}
