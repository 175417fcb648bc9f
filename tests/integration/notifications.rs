//! Cross-node notification traffic (PostgreSQL): one `NOTIFY` per claimed workflow, sent by the
//! claim's own transaction — never one per step, however many reports race for the claim.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::{Baton, StepId, TerminalState, Topic, Workflow, WorkflowId};
use sqlx::postgres::PgListener;
use tokio::sync::Barrier;

use crate::support::{Backend, TestDb, holds_for, poll_until, subscribe, wait_until};

const WORKFLOWS: usize = 1_000;
const STEPS: usize = 5;
const REPORTERS: usize = 32;

/// A burst of 1,000 five-step workflows settles at once (one `UPDATE`), then every step is
/// reported by 32 tasks racing on two nodes. A plain listener counts what went over the channel:
/// exactly one notification per workflow, none per step; each node's subscriber gets each event
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_notification_per_claimed_workflow_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let (a, b) = (db.baton().await, db.baton().await);
    let raw = db.raw().await;
    let mut listener = PgListener::connect(db.url()).await.unwrap();
    listener.listen("baton_finished").await.unwrap();
    let (events_a, events_b) = (
        subscribe(&a, Topic::All).await,
        subscribe(&b, Topic::All).await,
    );

    // No runner handles this kind: the steps wait until the test settles them.
    let mut reports: Vec<(WorkflowId, StepId)> = Vec::new();
    for w in 0..WORKFLOWS {
        let wf = Workflow::new(format!("burst-{w}"))
            .steps_from((0..STEPS).map(|s| baton::Step::new(format!("s{s}"), "nobody")));
        let steps: Vec<StepId> = wf.steps().iter().map(|s| s.id()).collect();
        let id = [&a, &b][w % 2].insert_workflow(wf).await.unwrap();
        reports.extend(steps.into_iter().map(|s| (id, s)));
    }
    let settled = raw
        .scalar(
            "WITH done AS (UPDATE baton_steps SET state = 'completed', finished_at = now() \
             RETURNING 1) SELECT count(*) FROM done",
        )
        .await;
    assert_eq!(settled, (WORKFLOWS * STEPS) as i64);

    let started = Instant::now();
    let barrier = Arc::new(Barrier::new(REPORTERS));
    let reports = Arc::new(reports);
    let tasks: Vec<_> = (0..REPORTERS)
        .map(|t| {
            let (node, barrier, reports): (Baton, _, _) =
                ([&a, &b][t % 2].clone(), barrier.clone(), reports.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                for (wf, step) in reports.iter().skip(t).step_by(REPORTERS) {
                    node.check(*wf, *step, TerminalState::Completed).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    poll_until(
        "every workflow was claimed",
        Duration::from_secs(60),
        || async {
            raw.scalar("SELECT count(*) FROM baton_workflow_completions")
                .await
                == WORKFLOWS as i64
        },
    )
    .await;
    println!(
        "{WORKFLOWS} workflows of {STEPS} steps claimed {:?} after the first report",
        started.elapsed()
    );

    // Everything sent has arrived once the channel has been quiet for a while.
    let mut notified: Vec<WorkflowId> = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), listener.recv()).await {
        let (_seq, wf) = n
            .payload()
            .split_once(':')
            .expect("payload is seq:workflow");
        notified.push(wf.parse().expect("a workflow id"));
    }
    let distinct: HashSet<WorkflowId> = notified.iter().copied().collect();
    assert_eq!(
        notified.len(),
        WORKFLOWS,
        "notifications sent for {WORKFLOWS} claims of {} steps",
        WORKFLOWS * STEPS
    );
    assert_eq!(distinct.len(), WORKFLOWS, "a workflow was notified twice");

    // The claimer's subscribers have it at once; the other node's relay it from its listener.
    wait_until(
        "each subscriber has every event",
        Duration::from_secs(30),
        || events_a.len() >= WORKFLOWS && events_b.len() >= WORKFLOWS,
    )
    .await;
    holds_for(
        "each subscriber has each event once",
        Duration::from_millis(300),
        || events_a.len() == WORKFLOWS && events_b.len() == WORKFLOWS,
    )
    .await;
    for events in [&events_a, &events_b] {
        let got: HashSet<WorkflowId> = events.all().iter().map(|e| e.workflow_id).collect();
        assert_eq!(got, distinct);
    }
    a.shutdown().await;
    b.shutdown().await;
}
