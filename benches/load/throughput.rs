//! Scenario 3: end-to-end runner throughput with prompt detection on and off, against the bare
//! write rate of the database measured in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton::{Baton, DetectedBy, Runner, Step, StepContext, StepId, Workflow, WorkflowId};

use crate::Sizes;
use crate::db::{Backend, BenchDb, Raw};
use crate::probe::{Events, ms, percentile};
use crate::report::{RunnerRun, ThroughputRow};

/// baton's pool (Postgres) and the bare write test's connections.
pub(crate) const CONNECTIONS: u32 = 10;
/// Steps the runner runs at once.
pub(crate) const CONCURRENCY: usize = 16;
/// Rows per statement in the batched write test.
pub(crate) const BATCH: usize = 100;

pub(crate) async fn run(backend: Backend, sizes: &Sizes) -> ThroughputRow {
    let db = BenchDb::create(backend).await;
    let baton = db
        .builder(CONNECTIONS)
        .connect()
        .await
        .expect("connecting baton");
    // SQLite: baton writes through exactly one connection, so the bare test does too.
    let write_conns = match backend {
        Backend::Postgres => CONNECTIONS,
        Backend::Sqlite => 1,
    };
    let raw = db.raw(write_conns).await;
    let events = Events::subscribe(&baton).await;

    let bare_rate = bare(&baton, &raw, sizes.bare_updates, write_conns as usize).await;
    let batched_rate = batched(&baton, &raw, sizes.bare_updates).await;

    // ABBA BAAB, so that drift (autovacuum, cache warmth) weighs on both modes alike; medians,
    // so that one run disturbed by the shared machine does not decide the ratio.
    let mut on = Vec::new();
    let mut off = Vec::new();
    let order = [true, false, false, true, false, true, true, false];
    for (i, detect) in order.into_iter().enumerate() {
        let r = runner_run(&baton, &raw, &events, sizes, detect, i).await;
        println!(
            "  e2e {:>8} detection {:>3}: {:>7.0} steps/s ({} steps in {:.0} ms; all announced after {:.0} ms)",
            backend.name(),
            if detect { "on" } else { "off" },
            r.steps_per_s,
            r.steps,
            r.span_ms,
            r.announced_ms
        );
        if detect { &mut on } else { &mut off }.push(r);
    }
    let median = |runs: &[RunnerRun]| {
        percentile(
            &runs.iter().map(|r| r.steps_per_s).collect::<Vec<_>>(),
            50.0,
        )
    };
    let (on_rate, off_rate) = (median(&on), median(&off));
    let row = ThroughputRow {
        backend,
        workflows: sizes.e2e_workflows as u64,
        steps_per_workflow: sizes.e2e_steps as u64,
        concurrency: CONCURRENCY as u64,
        connections: CONNECTIONS as u64,
        bare_connections: write_conns as u64,
        bare_rate,
        batched_rate,
        batch: BATCH as u64,
        on_steps_per_s: on_rate,
        off_steps_per_s: off_rate,
        ratio: off_rate / on_rate,
        on_vs_bare: on_rate / bare_rate,
        runs: on.into_iter().chain(off).collect(),
    };
    println!(
        "  e2e {:>8}: bare {:.0} updates/s, batched {:.0} rows/s, on {:.0} off {:.0} steps/s -> ratio {:.3}, on/bare {:.2}",
        backend.name(),
        row.bare_rate,
        row.batched_rate,
        row.on_steps_per_s,
        row.off_steps_per_s,
        row.ratio,
        row.on_vs_bare
    );
    baton.shutdown().await;
    raw.close().await;
    db.drop_db().await;
    row
}

/// Inserts workflows of `per` steps of a kind no runner handles, totalling `total` steps, all
/// named `name`, and marks their steps executing.
async fn executing_steps(
    baton: &Baton,
    raw: &Raw,
    name: &str,
    total: usize,
    per: usize,
) -> Vec<StepId> {
    for w in 0..total.div_ceil(per) {
        let n = per.min(total - w * per);
        let wf = Workflow::new(name).steps_from((0..n).map(|i| Step::new(format!("b{i}"), "bare")));
        baton.insert_workflow(wf).await.expect("inserting rows");
    }
    let steps = raw.set_executing_by_name(name).await;
    assert_eq!(steps.len(), total);
    steps
}

/// Single-row terminal-state updates from `conns` tasks on `conns` connections: updates/s.
async fn bare(baton: &Baton, raw: &Raw, total: usize, conns: usize) -> f64 {
    let steps = Arc::new(executing_steps(baton, raw, "bare-single", total, 100).await);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (raw, steps, next) = (raw.clone(), steps.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(step) = steps.get(i) else { break };
                    assert!(raw.bare_complete(*step).await, "a bare update hit its row");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a bare writer");
    }
    total as f64 / t0.elapsed().as_secs_f64()
}

/// The same write, `BATCH` rows per statement, one writer: rows/s.
async fn batched(baton: &Baton, raw: &Raw, total: usize) -> f64 {
    let steps = executing_steps(baton, raw, "bare-batched", total, 100).await;
    let t0 = Instant::now();
    for chunk in steps.chunks(BATCH) {
        assert_eq!(raw.batched_complete(chunk).await, chunk.len() as u64);
    }
    total as f64 / t0.elapsed().as_secs_f64()
}

/// One run of W workflows × S no-op steps through a fresh runner.
async fn runner_run(
    baton: &Baton,
    raw: &Raw,
    events: &Events,
    sizes: &Sizes,
    detect: bool,
    index: usize,
) -> RunnerRun {
    let name = format!("e2e-{index}-{}", if detect { "on" } else { "off" });
    let mut ids: Vec<WorkflowId> = Vec::with_capacity(sizes.e2e_workflows);
    for _ in 0..sizes.e2e_workflows {
        let wf = Workflow::new(&name).steps_from(
            (0..sizes.e2e_steps).map(|i| Step::new(format!("s{i}"), format!("noop-{index}"))),
        );
        ids.push(
            baton
                .insert_workflow(wf)
                .await
                .expect("inserting a workflow"),
        );
    }
    // Every run starts from the same state of the tables and their statistics: without this the
    // dead tuples of earlier runs slow the later ones down, whichever mode they measure.
    raw.analyze().await;
    let before = baton.stats();
    let t0 = Instant::now();
    let runner = Runner::builder()
        .concurrency(CONCURRENCY)
        .handler(format!("noop-{index}"), |_ctx: StepContext| async {
            Ok(())
        })
        .prompt_detection(detect)
        .start(baton);
    let last = events.wait_all(&ids, Duration::from_secs(600)).await;
    runner.shutdown().await;
    let after = baton.stats();
    events.assert_exactly_once(&ids, "runner throughput");
    let steps = (sizes.e2e_workflows * sizes.e2e_steps) as u64;
    let (completed, span_ms) = raw.step_span(&name).await;
    assert_eq!(completed, steps, "every step completed once");
    let swept = events.count_detected_by(&ids, DetectedBy::Sweep);
    if !detect {
        assert_eq!(
            swept,
            ids.len(),
            "with prompt detection off, the sweep announces"
        );
    }
    RunnerRun {
        detection: detect,
        steps,
        span_ms,
        steps_per_s: steps as f64 / (span_ms / 1_000.0),
        announced_ms: ms(last - t0),
        detection_queries: after.detection_queries - before.detection_queries,
        claims: after.claims_won - before.claims_won,
        announced_by_sweep: swept as u64,
    }
}
