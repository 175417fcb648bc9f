//! Scenario 7 (PostgreSQL only): cross-node detection latency. Three baton instances ("nodes":
//! their own pools, supervisors, sweepers and listeners, agreeing only through the database) each
//! run one step of every probe workflow; the three steps are released together, so the last ones
//! end on different nodes at the same moment. A fourth instance, which runs no steps, has the
//! subscriber: every event reaches it through `NOTIFY` (or its catch-up), never in-process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::runner::RunnerHandle;
use baton::{Baton, DetectedBy, Runner, Step, StepContext, Workflow, WorkflowId};
use tokio::sync::Barrier;

use crate::Sizes;
use crate::db::{Backend, BenchDb};
use crate::latency::{Returns, Sample, row};
use crate::probe::{CheckTimes, Events, Metrics};
use crate::report::LatencyRow;

const NODES: usize = 3;
const CONNECTIONS: u32 = 6;
/// The condition named in the latency table (and its target, p99 ≤ 50 ms).
pub(crate) const CONDITION: &str = "3 nodes → a 4th";

pub(crate) async fn run(sizes: &Sizes, metrics: &Metrics, checks: &CheckTimes) -> LatencyRow {
    checks.record(true);
    let db = BenchDb::create(Backend::Postgres).await;
    let connect = || async {
        db.builder(CONNECTIONS)
            .connect()
            .await
            .expect("connecting a node")
    };
    let nodes: Vec<Baton> = futures::future::join_all((0..NODES).map(|_| connect())).await;
    let listener = connect().await;
    let events = Events::subscribe(&listener).await;
    // Each probe's three steps wait for one another, then return together.
    let release = Arc::new(Barrier::new(NODES));
    let returns: Returns = Arc::default();
    let runners: Vec<RunnerHandle> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let (release, returns) = (release.clone(), returns.clone());
            Runner::builder()
                .concurrency(4)
                .handler(kind(i), move |ctx: StepContext| {
                    let (release, returns) = (release.clone(), returns.clone());
                    async move {
                        release.wait().await;
                        let now = Instant::now();
                        let mut returns = returns.lock().expect("returns lock");
                        let latest = returns.entry(ctx.workflow_id).or_insert(now);
                        *latest = (*latest).max(now);
                        Ok(())
                    }
                })
                .start(node)
        })
        .collect();

    metrics.take_histogram("baton_detection_latency_seconds{path=prompt}");
    let mut samples = Vec::new();
    let mut probed: Vec<WorkflowId> = Vec::new();
    let mut swept = 0;
    let mut claimers = std::collections::HashSet::new();
    for p in 0..sizes.latency_probes {
        let wf = Workflow::new("cross-node")
            .steps_from((0..NODES).map(|i| Step::new(format!("on-{i}"), kind(i))));
        let id = nodes[p % NODES]
            .insert_workflow(wf)
            .await
            .expect("inserting a probe");
        let arrival = events.wait_for(id, Duration::from_secs(60)).await;
        let trace = checks.take(id).expect("a runner called check");
        let returned = returns
            .lock()
            .expect("returns lock")
            .remove(&id)
            .expect("the probe's handlers ran");
        samples.push(Sample::new(arrival.at, trace, returned));
        swept += usize::from(arrival.event.detected_by == DetectedBy::Sweep);
        claimers.insert(arrival.event.node.clone());
        probed.push(id);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The listening node runs no steps, so it can have claimed only by sweep: such an event
    // was delivered in-process, and `swept` counts it.
    for r in runners {
        r.shutdown().await;
    }
    // Every node's subscribers would have got each event; the listener's got each exactly once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    events.assert_exactly_once(&probed, "cross-node probes");
    checks.record(false);
    let internal = metrics.take_histogram("baton_detection_latency_seconds{path=prompt}");
    let row = row(
        Backend::Postgres,
        CONDITION,
        &samples,
        swept,
        0,
        0,
        &internal,
    );
    println!(
        "  latency postgres {CONDITION}: commit→event p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} probes claimed by {} nodes",
        row.p50_ms,
        row.p99_ms,
        row.max_ms,
        row.samples,
        claimers.len()
    );
    println!("{}", row.parts());
    for node in nodes.into_iter().chain([listener]) {
        node.shutdown().await;
    }
    db.drop_db().await;
    row
}

/// The step kind only node `i` handles.
fn kind(i: usize) -> String {
    format!("node-{i}")
}
