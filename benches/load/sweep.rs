//! Scenario 5: the cost of one sweep with a large announced history and some open workflows.

use std::time::{Duration, Instant};

use baton::{Baton, Step, Workflow, WorkflowId};

use crate::Sizes;
use crate::db::{Backend, BenchDb};
use crate::probe::{mean, ms, percentile};
use crate::report::{SweepRow, SweepTiming};

/// Sweeps timed per measurement.
const REPEAT: usize = 30;

pub(crate) async fn run(backend: Backend, sizes: &Sizes) -> SweepRow {
    let db = BenchDb::create(backend).await;
    // No sweeper actor: only the timed `sweep_once` calls sweep.
    let baton = db
        .builder(10)
        .sweeper(false)
        .connect()
        .await
        .expect("connecting baton");
    let raw = db.raw(4).await;

    // The open workflows: each has one step still waiting (no runner takes it).
    let mut open: Vec<WorkflowId> = Vec::with_capacity(sizes.sweep_open);
    for i in 0..sizes.sweep_open {
        let wf = Workflow::new("open").step(Step::new(format!("o{i}"), "sweep-no-runner"));
        open.push(
            baton
                .insert_workflow(wf)
                .await
                .expect("inserting an open workflow"),
        );
    }
    let empty = time_sweeps(&baton, sizes.sweep_open).await;

    let loaded = Instant::now();
    raw.load_history(sizes.sweep_history as u64).await;
    let load_s = loaded.elapsed().as_secs_f64();
    assert_eq!(
        raw.count("baton_workflow_completions").await,
        sizes.sweep_history as u64
    );
    let cold = time_sweeps(&baton, sizes.sweep_open).await;
    raw.analyze().await;
    let analyzed = time_sweeps(&baton, sizes.sweep_open).await;

    // The sweep still announces what settled: complete ten of the open workflows behind
    // baton's back and sweep once.
    let settle = 10.min(open.len());
    for id in &open[..settle] {
        raw.set_state(*id, "completed").await;
    }
    let t = Instant::now();
    let report = baton.sweep_once().await.expect("sweeping");
    let announcing_ms = ms(t.elapsed());
    assert_eq!(
        report.announced, settle,
        "the sweep announced the settled ones"
    );
    assert_eq!(report.open_workflows, (sizes.sweep_open - settle) as u64);

    let row = SweepRow {
        backend,
        history: sizes.sweep_history as u64,
        open: sizes.sweep_open as u64,
        load_s,
        empty_history: empty,
        after_load: cold,
        after_analyze: analyzed,
        announcing_ms,
        announcing: settle as u64,
    };
    println!(
        "  sweep {:>8}: {} open, history 0: median {:.2} ms; history {}: median {:.2} ms (before ANALYZE {:.2} ms), max {:.2} ms; announcing {settle}: {:.2} ms (load {:.0} s)",
        backend.name(),
        row.open,
        row.empty_history.median_ms,
        row.history,
        row.after_analyze.median_ms,
        row.after_load.median_ms,
        row.after_analyze.max_ms,
        row.announcing_ms,
        row.load_s,
    );
    baton.shutdown().await;
    raw.close().await;
    db.drop_db().await;
    row
}

async fn time_sweeps(baton: &Baton, open: usize) -> SweepTiming {
    let mut took = Vec::with_capacity(REPEAT);
    for _ in 0..REPEAT {
        let t = Instant::now();
        let report = baton.sweep_once().await.expect("sweeping");
        took.push(ms(t.elapsed()));
        assert_eq!(report.announced, 0, "nothing settled to announce");
        assert_eq!(report.open_workflows, open as u64);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    SweepTiming {
        median_ms: percentile(&took, 50.0),
        p90_ms: percentile(&took, 90.0),
        max_ms: percentile(&took, 100.0),
        mean_ms: mean(&took),
    }
}
