//! Cancellation: executing steps stop cooperatively and end `cancelled`, waiting steps are
//! cancelled at once, and the workflow is announced `failed` once, listing them — also when the
//! cancellation is the very last transition, and when it is requested on another node. A
//! finished workflow cannot be cancelled again or have its steps retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use baton::{
    Baton, CancelOutcome, Error, Outcome, Runner, Step, StepContext, StepCounts, Topic, Workflow,
    WorkflowId,
};
use tokio::sync::mpsc;

use crate::support::{both_backends, holds_for, poll_until, subscribe, wait_sweeps, wait_until};

/// A runner whose `observe` steps report that they started and then run until cancelled (and
/// then return `Ok`: whatever they return, a cancelled step ends `cancelled`), and whose `quick`
/// steps complete at once. Steps of kind `nobody` have no handler and stay waiting.
fn runner(
    baton: &Baton,
    started: mpsc::UnboundedSender<WorkflowId>,
    saw_cancel: Arc<AtomicU32>,
) -> baton::runner::RunnerHandle {
    Runner::builder()
        .handler("observe", move |ctx: StepContext| {
            let (started, saw_cancel) = (started.clone(), saw_cancel.clone());
            async move {
                let _ = started.send(ctx.workflow_id);
                tokio::select! {
                    _ = ctx.cancelled() => {
                        saw_cancel.fetch_add(1, SeqCst);
                        Ok(())
                    }
                    _ = tokio::time::sleep(Duration::from_secs(60)) => Ok(()),
                }
            }
        })
        .handler("quick", |_ctx: StepContext| async { Ok(()) })
        .start(baton)
}

async fn assert_closed(baton: &Baton, id: WorkflowId, step: &str) {
    let again = baton.cancel_workflow(id).await.unwrap();
    assert_eq!(
        again,
        CancelOutcome {
            already_finished: true,
            cancelled: 0,
            stopping: 0
        }
    );
    match baton.retry_step(id, step).await {
        Err(Error::WorkflowClosed(got)) => assert_eq!(got, id),
        other => {
            panic!("retry_step on an announced workflow: expected WorkflowClosed, got {other:?}")
        }
    }
}

both_backends! {
    /// An executing step that observes the cancellation, a step waiting on it, a step nobody
    /// runs and a completed one; cancelled on the node running the step, and (a second
    /// workflow) on another node, which relays it through the step owner's heartbeat.
    async fn cancel_stops_executing_and_waiting_steps(db: TestDb) {
        let a = db.builder().lease(Duration::from_millis(900)).connect().await.unwrap();
        let b = db.builder().lease(Duration::from_millis(900)).connect().await.unwrap();
        let raw = db.raw().await;
        let events = subscribe(&a, Topic::All).await;
        // Whichever node claims, the event is heard on it (and, on Postgres, on both).
        let events_b = subscribe(&b, Topic::All).await;
        let (started, mut started_rx) = mpsc::unbounded_channel();
        let saw_cancel = Arc::new(AtomicU32::new(0));
        let runner = runner(&a, started, saw_cancel.clone());
        let mut ids = Vec::new();

        for (round, canceller) in [(1, &a), (2, &b)] {
            let wf = Workflow::new(format!("cancel-{round}"))
                .step(Step::new("done", "quick"))
                .step(Step::new("exec", "observe"))
                .step(Step::new("after-exec", "quick").depends_on(["exec"]))
                .step(Step::new("orphan", "nobody"));
            let id = a.insert_workflow(wf).await.unwrap();
            let running = tokio::time::timeout(Duration::from_secs(10), started_rx.recv())
                .await
                .expect("the observing step started")
                .unwrap();
            assert_eq!(running, id);
            poll_until("`done` completed", Duration::from_secs(10), || async {
                raw.step(id, "done").await.0 == "completed"
            })
            .await;
            holds_for("nothing announced before the cancel", Duration::from_millis(200), || {
                events.count_of(id) == 0
            })
            .await;

            let outcome = canceller.cancel_workflow(id).await.unwrap();
            assert_eq!(outcome, CancelOutcome { already_finished: false, cancelled: 2, stopping: 1 });
            wait_until("the workflow was announced", Duration::from_secs(10), || {
                events.count_of(id) + events_b.count_of(id) > 0
            })
            .await;
            let event = [events.of(id), events_b.of(id)].concat().remove(0);
            assert_eq!(saw_cancel.load(SeqCst), round, "the handler did not see the cancellation");
            assert_eq!(event.outcome, Outcome::Failed);
            assert_eq!(event.failed_steps, ["after-exec", "exec", "orphan"]);
            assert_eq!(event.counts, StepCounts { completed: 1, discarded: 0, cancelled: 3 });
            raw.assert_agrees_with_steps(&event).await;
            // The handler returned Ok, yet the step ended cancelled (attempt 1, not retried).
            assert_eq!(raw.step(id, "exec").await.0, "cancelled");
            assert_closed(canceller, id, "exec").await;
            assert_eq!(raw.completions(id).await, 1);
            ids.push(id);
        }
        wait_sweeps(&a, 3, Duration::from_secs(10)).await;
        let pg = db.backend() == crate::support::Backend::Postgres;
        if pg {
            for id in &ids {
                events.first_of(*id, Duration::from_secs(10)).await;
                events_b.first_of(*id, Duration::from_secs(10)).await;
            }
        }
        holds_for("each subscriber got each workflow at most once", Duration::from_millis(300), || {
            ids.iter().all(|id| {
                let (on_a, on_b) = (events.count_of(*id), events_b.count_of(*id));
                on_a <= 1 && on_b <= 1 && on_a + on_b >= 1
            })
        })
        .await;
        runner.shutdown().await;
        a.shutdown().await;
        b.shutdown().await;
    }
}

both_backends! {
    /// Every step but one has completed; the last one is never picked up. Cancelling it is the
    /// workflow's very last transition: announced once, `failed`, listing it.
    async fn cancel_as_the_very_last_transition(db: TestDb) {
        let baton = db.baton().await;
        let raw = db.raw().await;
        let events = subscribe(&baton, Topic::All).await;
        let (started, _started_rx) = mpsc::unbounded_channel();
        let runner = runner(&baton, started, Arc::default());
        let wf = Workflow::new("last-cancel")
            .step(Step::new("a", "quick"))
            .step(Step::new("b", "quick").depends_on(["a"]))
            .step(Step::new("last", "nobody"));
        let id = baton.insert_workflow(wf).await.unwrap();
        poll_until("a and b completed", Duration::from_secs(10), || async {
            let steps = raw.steps(id).await;
            steps.iter().filter(|s| s.1 == "completed").count() == 2
        })
        .await;
        wait_sweeps(&baton, 2, Duration::from_secs(10)).await;
        assert_eq!(events.len(), 0, "announced with a step still available");

        let outcome = baton.cancel_workflow(id).await.unwrap();
        assert_eq!(outcome, CancelOutcome { already_finished: false, cancelled: 1, stopping: 0 });
        let event = events.first_of(id, Duration::from_secs(10)).await;
        assert_eq!(event.outcome, Outcome::Failed);
        assert_eq!(event.failed_steps, ["last"]);
        assert_eq!(event.counts, StepCounts { completed: 2, discarded: 0, cancelled: 1 });
        raw.assert_agrees_with_steps(&event).await;
        assert_closed(&baton, id, "last").await;
        match baton.cancel_workflow(WorkflowId::new()).await {
            Err(Error::WorkflowNotFound(_)) => {}
            other => panic!("cancelling an unknown workflow: {other:?}"),
        }
        wait_sweeps(&baton, 3, Duration::from_secs(10)).await;
        holds_for("one event", Duration::from_millis(300), || events.len() == 1).await;
        assert_eq!(raw.completions(id).await, 1);
        assert_eq!(baton.wait_finished(id, Duration::from_secs(1)).await.unwrap(), event);
        runner.shutdown().await;
        baton.shutdown().await;
    }
}
