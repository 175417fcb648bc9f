//! Race-free waiting: `wait_finished`, and an actor subscribing to `Topic::Workflow`, at random
//! instants around the claim get the event exactly once and never hang; an unknown id fails at
//! once; the timeout is honoured.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::{
    Error, Outcome, Runner, Step, StepContext, Topic, Workflow, WorkflowFinished, WorkflowId,
};
use tokio::sync::oneshot;

use crate::support::{Events, both_backends, holds_for, poll_until, subscribe};

/// No sweep, and so no periodic re-read inside `wait_finished` either: a waiter that misses the
/// announcement hangs until its timeout instead of being rescued by a poll.
const NO_SWEEP: Duration = Duration::from_secs(600);

type Gates = Arc<Mutex<HashMap<WorkflowId, oneshot::Sender<()>>>>;

/// One waiter's result: when it called, how long it took, what it got.
struct Waited {
    called_at: chrono::DateTime<chrono::Utc>,
    took: Duration,
    result: baton::Result<WorkflowFinished>,
    /// For a subscriber actor: everything it received.
    actor: Option<Events>,
}

both_backends! {
    /// 50 one-step workflows; for each, 6 waiters call at random offsets within ±20 ms of the
    /// moment the step is released (so the claim lands among them) and 2 more 100–300 ms later,
    /// once the claim is stored.
    /// Every other waiter is a subscriber actor on `Topic::Workflow` instead of `wait_finished`.
    async fn wait_finished_at_any_instant_around_the_claim(db: TestDb) {
        const WORKFLOWS: u64 = 50;
        const AROUND: usize = 6;
        const LATE: usize = 2;
        let baton = db.builder().sweep_interval(NO_SWEEP).connect().await.unwrap();
        let gates: Gates = Arc::default();
        let runner = Runner::builder()
            .concurrency(64)
            .handler("gated", {
                let gates = gates.clone();
                move |ctx: StepContext| {
                    let (tx, rx) = oneshot::channel();
                    gates.lock().unwrap().insert(ctx.workflow_id, tx);
                    async move {
                        let _ = rx.await;
                        Ok(())
                    }
                }
            })
            .start(&baton);

        let mut tasks = Vec::new();
        for i in 0..WORKFLOWS {
            let (baton, gates) = (baton.clone(), gates.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(15 * i)).await;
                let wf = Workflow::new("waited").step(Step::new("only", "gated"));
                let id = baton.insert_workflow(wf).await.unwrap();
                poll_until("the step started", Duration::from_secs(10), || async {
                    gates.lock().unwrap().contains_key(&id)
                })
                .await;
                let t0 = tokio::time::Instant::now();
                let offsets = (0..AROUND)
                    .map(|_| rand::random_range(0..40u64))
                    .chain((0..LATE).map(|_| rand::random_range(120..320u64)));
                let waiters: Vec<_> = offsets
                    .enumerate()
                    .map(|(k, offset)| {
                        let baton = baton.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep_until(t0 + Duration::from_millis(offset)).await;
                            if k >= AROUND {
                                // A late waiter: after the claim, however slow the machine.
                                while baton.status(id).await.unwrap().finished.is_none() {
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                            }
                            let (called_at, started) = (chrono::Utc::now(), Instant::now());
                            if k % 2 == 0 {
                                let result = baton.wait_finished(id, Duration::from_secs(5)).await;
                                return Waited { called_at, took: started.elapsed(), result, actor: None };
                            }
                            let events = subscribe(&baton, Topic::Workflow(id)).await;
                            let event = events.first_of(id, Duration::from_secs(5)).await;
                            Waited { called_at, took: started.elapsed(), result: Ok(event), actor: Some(events) }
                        })
                    })
                    .collect();
                tokio::time::sleep_until(t0 + Duration::from_millis(20)).await;
                let gate = gates.lock().unwrap().remove(&id).unwrap();
                gate.send(()).unwrap();
                let mut results = Vec::new();
                for w in waiters {
                    results.push(w.await.unwrap());
                }
                (id, results)
            }));
        }

        let (mut before, mut after, mut longest) = (0, 0, Duration::ZERO);
        let mut actors = Vec::new();
        for task in tasks {
            let (id, results) = task.await.unwrap();
            let stored = baton.status(id).await.unwrap().finished.expect("announced");
            assert_eq!(stored.outcome, Outcome::Completed);
            for w in results {
                let event = w
                    .result
                    .unwrap_or_else(|e| panic!("a waiter on {id} called at {} failed: {e}", w.called_at));
                assert_eq!(event, stored, "a waiter got another event");
                if w.called_at < stored.finished_at {
                    before += 1;
                } else {
                    after += 1;
                }
                longest = longest.max(w.took);
                actors.extend(w.actor);
            }
        }
        println!(
            "{}: {} waiters: {before} called before the claim, {after} after; longest wait {longest:?}",
            baton.backend(),
            WORKFLOWS as usize * (AROUND + LATE)
        );
        assert!(before > 0 && after > 0, "the offsets did not straddle the claims");
        // None hung: every waiter above returned its event within its own 5 s timeout.
        holds_for("every subscriber actor got its event once", Duration::from_millis(300), || {
            actors.iter().all(|a| a.len() == 1)
        })
        .await;

        // An unknown id fails at once.
        let started = Instant::now();
        let unknown = WorkflowId::new();
        match baton.wait_finished(unknown, Duration::from_secs(30)).await {
            Err(Error::WorkflowNotFound(got)) => assert_eq!(got, unknown),
            other => panic!("expected WorkflowNotFound, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());

        // A workflow that never finishes: the timeout is honoured.
        let stuck = Workflow::new("stuck").step(Step::new("never", "nobody-runs-this"));
        let stuck = baton.insert_workflow(stuck).await.unwrap();
        let started = Instant::now();
        let timeout = Duration::from_millis(300);
        match baton.wait_finished(stuck, timeout).await {
            Err(Error::Timeout(t)) => assert_eq!(t, timeout),
            other => panic!("expected a timeout, got {other:?}"),
        }
        let took = started.elapsed();
        assert!(took >= timeout && took < Duration::from_millis(1500), "{took:?}");
        runner.shutdown().await;
        baton.shutdown().await;
    }
}
