//! Scenario 4: detection latency, from the last step's handler return (just before the runner's
//! terminal write) to a subscriber actor receiving the event — at idle, and while the same
//! runner works through a backlog of unrelated queued steps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::{Baton, DetectedBy, Runner, Step, StepContext, Workflow, WorkflowId};

use crate::Sizes;
use crate::db::{Backend, BenchDb, Raw};
use crate::probe::{CheckTimes, Events, Metrics, Trace, mean, ms, percentile};
use crate::report::{Breakdown, LatencyRow};

const CONNECTIONS: u32 = 10;
const CONCURRENCY: usize = 16;
/// Steps per probe workflow (siblings run in parallel; the last to return counts).
const PROBE_STEPS: usize = 3;
/// Steps per backlog workflow.
const BACKLOG_STEPS: usize = 100;

pub(crate) type Returns = Arc<Mutex<HashMap<WorkflowId, Instant>>>;

/// One probe's latencies (ms): from the last `check` call (right after the last terminal
/// commit), and from the last handler return (before the runner's terminal write).
pub(crate) struct Sample {
    from_commit: f64,
    from_return: f64,
    /// The prompt path in three parts, when its spans show it whole: last `check` → the winning
    /// claim starts (the supervisor's mailbox and the runtime's queue), the claim (detection
    /// query and claim transaction), claim end → the subscriber has the event.
    parts: Option<[f64; 3]>,
}

impl Sample {
    /// The sample of a workflow whose event arrived at `arrival`, whose spans showed `trace` and
    /// whose last handler returned at `returned`.
    pub(crate) fn new(arrival: Instant, trace: Trace, returned: Instant) -> Sample {
        let check = trace.check.expect("the runner called check");
        let parts = match trace.claim {
            Some((start, Some(end))) if start >= check && end <= arrival => {
                Some([ms(start - check), ms(end - start), ms(arrival - end)])
            }
            _ => None,
        };
        Sample {
            from_commit: ms(arrival.saturating_duration_since(check)),
            from_return: ms(arrival.saturating_duration_since(returned)),
            parts,
        }
    }
}

pub(crate) async fn run(
    backend: Backend,
    sizes: &Sizes,
    metrics: &Metrics,
    checks: &CheckTimes,
) -> Vec<LatencyRow> {
    checks.record(true);
    let db = BenchDb::create(backend).await;
    let baton = db
        .builder(CONNECTIONS)
        .connect()
        .await
        .expect("connecting baton");
    let raw = db.raw(2).await;
    let events = Events::subscribe(&baton).await;
    let returns: Returns = Arc::default();
    let backlog_done = Arc::new(AtomicUsize::new(0));
    let runner = {
        let (returns, done) = (returns.clone(), backlog_done.clone());
        Runner::builder()
            .concurrency(CONCURRENCY)
            .handler("probe", move |ctx: StepContext| {
                let returns = returns.clone();
                async move {
                    let now = Instant::now();
                    returns
                        .lock()
                        .expect("returns lock")
                        .entry(ctx.workflow_id)
                        .and_modify(|t| *t = (*t).max(now))
                        .or_insert(now);
                    Ok(())
                }
            })
            .handler("backlog", move |_ctx: StepContext| {
                done.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            })
            .start(&baton)
    };
    let mut rows = Vec::new();
    let mut probed = Vec::new();

    // Idle: one probe workflow at a time, nothing else running.
    metrics.take_histogram("baton_detection_latency_seconds{path=prompt}");
    let mut lat = Vec::new();
    let mut swept = 0;
    for _ in 0..sizes.latency_probes {
        let (id, l, by) = probe(&baton, &raw, &events, &returns, checks, false).await;
        probed.push(id);
        lat.push(l);
        swept += usize::from(by == DetectedBy::Sweep);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let internal = metrics.take_histogram("baton_detection_latency_seconds{path=prompt}");
    rows.push(row(backend, "idle", &lat, swept, 0, 0, &internal));

    // Backlog: a producer keeps `sizes.backlog` unrelated steps queued for the same runner; each
    // probe's steps are moved to the head of the queue so that they run now, and the announcement
    // is timed while the runner and the database are busy with the backlog.
    let inserted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let backlog_ids = Arc::new(Mutex::new(Vec::new()));
    let producer = {
        let (baton, inserted, done, stop, ids) = (
            baton.clone(),
            inserted.clone(),
            backlog_done.clone(),
            stop.clone(),
            backlog_ids.clone(),
        );
        let target = sizes.backlog;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let queued = inserted.load(Ordering::Relaxed) - done.load(Ordering::Relaxed);
                if queued >= target {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let wf = Workflow::new("backlog")
                    .steps_from((0..BACKLOG_STEPS).map(|i| Step::new(format!("b{i}"), "backlog")));
                let id = baton.insert_workflow(wf).await.expect("inserting backlog");
                inserted.fetch_add(BACKLOG_STEPS, Ordering::Relaxed);
                ids.lock().expect("ids lock").push(id);
            }
        })
    };
    let queued = || {
        inserted
            .load(Ordering::Relaxed)
            .saturating_sub(backlog_done.load(Ordering::Relaxed))
    };
    let fill = Instant::now();
    while queued() < sizes.backlog * 9 / 10 {
        assert!(
            fill.elapsed() < Duration::from_secs(120),
            "the backlog never filled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    metrics.take_histogram("baton_detection_latency_seconds{path=prompt}");
    let done_before = backlog_done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let mut lat = Vec::new();
    let mut swept = 0;
    let mut min_queued = usize::MAX;
    for _ in 0..sizes.latency_probes {
        min_queued = min_queued.min(queued());
        let (id, l, by) = probe(&baton, &raw, &events, &returns, checks, true).await;
        probed.push(id);
        lat.push(l);
        swept += usize::from(by == DetectedBy::Sweep);
        min_queued = min_queued.min(queued());
    }
    let backlog_rate =
        (backlog_done.load(Ordering::Relaxed) - done_before) as f64 / t0.elapsed().as_secs_f64();
    let internal = metrics.take_histogram("baton_detection_latency_seconds{path=prompt}");
    rows.push(row(
        backend,
        "backlog",
        &lat,
        swept,
        min_queued,
        backlog_rate as u64,
        &internal,
    ));
    stop.store(true, Ordering::Relaxed);
    producer.await.expect("the backlog producer");

    // Everything drains and is announced exactly once.
    let backlog_ids = backlog_ids.lock().expect("ids lock").clone();
    events
        .wait_all(&backlog_ids, Duration::from_secs(600))
        .await;
    runner.shutdown().await;
    events.assert_exactly_once(&probed, "latency probes");
    events.assert_exactly_once(&backlog_ids, "backlog");
    for r in &rows {
        println!(
            "  latency {:>8} {:>7}: commit→event p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; handler return→event p50 {:.2} p99 {:.2} ms; {} probes{}",
            backend.name(),
            r.condition,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.from_return_p50_ms,
            r.from_return_p99_ms,
            r.samples,
            if r.condition == "backlog" {
                format!(
                    " (≥{} steps queued, runner at {} backlog steps/s)",
                    r.min_queued, r.backlog_steps_per_s
                )
            } else {
                String::new()
            }
        );
        println!("{}", r.parts());
    }
    checks.record(false);
    baton.shutdown().await;
    raw.close().await;
    db.drop_db().await;
    rows
}

/// Runs one probe workflow; returns its id, the latency in ms and who detected it.
async fn probe(
    baton: &Baton,
    raw: &Raw,
    events: &Events,
    returns: &Returns,
    checks: &CheckTimes,
    backdate: bool,
) -> (WorkflowId, Sample, DetectedBy) {
    let wf = Workflow::new("probe")
        .steps_from((0..PROBE_STEPS).map(|i| Step::new(format!("p{i}"), "probe")));
    let id = baton.insert_workflow(wf).await.expect("inserting a probe");
    if backdate {
        raw.backdate(id).await;
    }
    let arrival = events.wait_for(id, Duration::from_secs(60)).await;
    let returned = returns
        .lock()
        .expect("returns lock")
        .remove(&id)
        .expect("the probe's handlers ran");
    let trace = checks.take(id).expect("the runner called check");
    (
        id,
        Sample::new(arrival.at, trace, returned),
        arrival.event.detected_by,
    )
}

pub(crate) fn row(
    backend: Backend,
    condition: &str,
    samples: &[Sample],
    swept: usize,
    min_queued: usize,
    backlog_steps_per_s: u64,
    internal: &[f64],
) -> LatencyRow {
    let internal_ms: Vec<f64> = internal.iter().map(|s| s * 1_000.0).collect();
    let lat: Vec<f64> = samples.iter().map(|s| s.from_commit).collect();
    let ret: Vec<f64> = samples.iter().map(|s| s.from_return).collect();
    let part = |i: usize| -> Vec<f64> {
        samples
            .iter()
            .filter_map(|s| s.parts.map(|p| p[i]))
            .collect()
    };
    let (queue, claim, deliver) = (part(0), part(1), part(2));
    LatencyRow {
        backend,
        condition: condition.to_owned(),
        samples: lat.len() as u64,
        p50_ms: percentile(&lat, 50.0),
        p99_ms: percentile(&lat, 99.0),
        max_ms: percentile(&lat, 100.0),
        mean_ms: mean(&lat),
        from_return_p50_ms: percentile(&ret, 50.0),
        from_return_p99_ms: percentile(&ret, 99.0),
        from_return_max_ms: percentile(&ret, 100.0),
        announced_by_sweep: swept as u64,
        min_queued: min_queued as u64,
        backlog_steps_per_s,
        internal_p99_ms: percentile(&internal_ms, 99.0),
        breakdown: Some(Breakdown {
            samples: queue.len() as u64,
            queue_p50_ms: percentile(&queue, 50.0),
            queue_p99_ms: percentile(&queue, 99.0),
            claim_p50_ms: percentile(&claim, 50.0),
            claim_p99_ms: percentile(&claim, 99.0),
            deliver_p50_ms: percentile(&deliver, 50.0),
            deliver_p99_ms: percentile(&deliver, 99.0),
        }),
    }
}
