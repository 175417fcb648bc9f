//! Detection cost: reporting every step of a 10,000-step workflow costs a small fraction of a
//! detection query per step, not a scan of the workflow per report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::{Baton, DetectedBy, Outcome, Step, StepId, TerminalState, Topic, Workflow, WorkflowId};
use tokio::sync::Barrier;

use crate::support::{Events, Raw, both_backends, holds_for, subscribe};

const STEPS: usize = 10_000;
const TASKS: usize = 50;
/// The budget: detection queries per reported step.
const MAX_QUERIES_PER_STEP: f64 = 0.05;

/// Reports every step from `TASKS` tasks released together (task `t` reports steps `t`,
/// `t + TASKS`, ...); returns the detection queries per step it cost.
async fn report_all(
    baton: &Baton,
    events: &Events,
    id: WorkflowId,
    steps: Vec<StepId>,
    label: &str,
) -> f64 {
    let steps = Arc::new(steps);
    let before = baton.stats().detection_queries;
    let barrier = Arc::new(Barrier::new(TASKS));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (baton, barrier, steps) = (baton.clone(), barrier.clone(), steps.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                for step in steps.iter().skip(t).step_by(TASKS) {
                    baton.check(id, *step, TerminalState::Completed).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let event = events.first_of(id, Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(event.detected_by, DetectedBy::Prompt);
    assert_eq!(event.outcome, Outcome::Completed);
    assert_eq!(event.counts.completed, STEPS as u64);
    // Let the last reports drain before reading the counter.
    holds_for("one event", Duration::from_millis(500), || {
        events.count_of(id) == 1
    })
    .await;
    let queries = baton.stats().detection_queries - before;
    let per_step = queries as f64 / STEPS as f64;
    println!(
        "{} {label}: {STEPS} reports -> {queries} detection queries ({per_step:.4}/step), \
         announced after {took:?}",
        baton.backend()
    );
    per_step
}

async fn insert_wide(baton: &Baton, raw: &Raw, name: &str) -> (WorkflowId, Vec<StepId>) {
    let wf = Workflow::new(name).steps_from((0..STEPS).map(|i| Step::new(format!("s{i:05}"), "k")));
    let steps: Vec<_> = wf.steps().iter().map(|s| s.id()).collect();
    let id = baton.insert_workflow(wf).await.unwrap();
    assert_eq!(raw.steps(id).await.len(), STEPS);
    (id, steps)
}

both_backends! {
    async fn detection_cost_per_step(db: TestDb) {
        let baton = db
            .builder()
            .sweep_interval(Duration::from_secs(600))
            .connect()
            .await
            .unwrap();
        let raw = db.raw().await;
        let events = subscribe(&baton, Topic::All).await;

        // Every step committed terminal before the reports arrive.
        let (id, steps) = insert_wide(&baton, &raw, "wide-committed").await;
        raw.set_all_states(id, "completed").await;
        let per_step = report_all(&baton, &events, id, steps, "committed").await;
        assert!(per_step <= MAX_QUERIES_PER_STEP, "{per_step} detection queries per step");
        assert_eq!(raw.completions(id).await, 1);

        // The last 10 steps still read executing when their reports arrive (the overlay).
        let (id, steps) = insert_wide(&baton, &raw, "wide-overlay").await;
        raw.set_all_states(id, "completed").await;
        raw.set_states(&steps[STEPS - 10..], "executing").await;
        let per_step = report_all(&baton, &events, id, steps, "overlay").await;
        assert!(per_step <= MAX_QUERIES_PER_STEP, "{per_step} detection queries per step");
        assert_eq!(raw.completions(id).await, 1);
        let executing = raw.steps(id).await.iter().filter(|s| s.1 == "executing").count();
        assert_eq!(executing, 10, "the overlay, not the database, settled it");

        assert_eq!(events.len(), 2);
        baton.shutdown().await;
    }
}

both_backends! {
    /// The built-in runner works through one 2,000-step workflow 32 steps at a time, so its
    /// reports trickle in rather than burst. While another of the workflow's steps executes on
    /// this node the supervisor needs no query; detection stays far below one query per step.
    async fn runner_reports_cost_a_fraction_of_a_query(db: TestDb) {
        const WIDE: usize = 2_000;
        let baton = db.builder().sweep_interval(Duration::from_secs(600)).connect().await.unwrap();
        let events = subscribe(&baton, Topic::All).await;
        let runner = baton::Runner::builder()
            .concurrency(32)
            .handler("k", |_ctx: baton::StepContext| async { Ok(()) })
            .start(&baton);
        let before = baton.stats();
        let wf = Workflow::new("wide-run").steps_from((0..WIDE).map(|i| Step::new(format!("s{i}"), "k")));
        let id = baton.insert_workflow(wf).await.unwrap();
        let event = events.first_of(id, Duration::from_secs(120)).await;
        assert_eq!(event.detected_by, DetectedBy::Prompt);
        assert_eq!(event.counts.completed, WIDE as u64);
        holds_for("one event", Duration::from_millis(300), || events.count_of(id) == 1).await;
        let after = baton.stats();
        let queries = after.detection_queries - before.detection_queries;
        let per_step = queries as f64 / WIDE as f64;
        println!(
            "{}: {WIDE} steps run -> {} checks, {} deferred, {queries} detection queries ({per_step:.4}/step)",
            baton.backend(),
            after.checks - before.checks,
            after.checks_deferred - before.checks_deferred
        );
        assert!(per_step <= MAX_QUERIES_PER_STEP, "{per_step} detection queries per step");
        runner.shutdown().await;
        baton.shutdown().await;
    }
}
