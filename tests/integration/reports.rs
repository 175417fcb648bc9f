//! Repeated, late and intermediate reports: duplicates of a terminal report change nothing, a
//! re-run of a step of an announced workflow cannot announce again or change the stored
//! outcome, and a step that fails and then succeeds on retry is never reported as failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use baton::{
    Announcement, Outcome, Runner, Step, StepContext, StepCounts, StepError, TerminalState, Topic,
    Workflow, WorkflowId,
};
use tokio::sync::watch;

use crate::support::{Table, both_backends, holds_for, poll_until, subscribe, wait_sweeps};

both_backends! {
    /// The same `check` twice (and a conflicting late one) for a step that already completed,
    /// before and after the announcement; then a re-run of the completed step, behind baton's
    /// back, whose end write reports it `discarded` after the announcement: one event, and the
    /// stored outcome and counts never change.
    async fn duplicate_and_late_reports_change_nothing(db: TestDb) {
        let baton = db.baton().await;
        let raw = db.raw().await;
        let events = subscribe(&baton, Topic::All).await;
        let (release, gate) = watch::channel(false);
        let fail_reruns = Arc::new(AtomicBool::new(false));
        let runner = Runner::builder()
            .handler("quick", {
                let fail_reruns = fail_reruns.clone();
                move |ctx: StepContext| {
                    let fail = fail_reruns.load(SeqCst);
                    async move {
                        if fail {
                            Err(StepError::permanent(format!("re-run {} fails", ctx.attempt)))
                        } else {
                            Ok(())
                        }
                    }
                }
            })
            .handler("gated", move |_ctx: StepContext| {
                let mut gate = gate.clone();
                async move {
                    let _ = gate.wait_for(|go| *go).await;
                    Ok(())
                }
            })
            .start(&baton);
        let wf = Workflow::new("duplicates")
            .step(Step::new("a", "quick"))
            .step(Step::new("b", "gated"));
        let (a, b) = (wf.steps()[0].id(), wf.steps()[1].id());
        let id = baton.insert_workflow(wf).await.unwrap();
        poll_until("a completed", Duration::from_secs(10), || async {
            raw.step(id, "a").await.0 == "completed"
        })
        .await;

        // While b still runs: `a`'s report again, twice at once, and a late conflicting report.
        let checks_before = baton.stats().checks;
        tokio::join!(
            baton.check(id, a, TerminalState::Completed),
            baton.check(id, a, TerminalState::Completed),
            baton.check(id, a, TerminalState::Discarded),
        );
        assert_eq!(baton.stats().checks, checks_before + 3);
        holds_for("nothing announced while b runs", Duration::from_millis(400), || {
            events.len() == 0
        })
        .await;
        assert_eq!(raw.completions(id).await, 0);

        release.send(true).unwrap();
        let event = events.first_of(id, Duration::from_secs(10)).await;
        assert_eq!(event.outcome, Outcome::Completed, "{event:?}");
        assert!(event.failed_steps.is_empty());
        assert_eq!(event.counts, StepCounts { completed: 2, discarded: 0, cancelled: 0 });

        // After the announcement: every report again, twice, a conflicting one, and announce.
        for _ in 0..2 {
            baton.check(id, a, TerminalState::Completed).await;
            baton.check(id, b, TerminalState::Completed).await;
        }
        baton.check(id, b, TerminalState::Discarded).await;
        assert_eq!(baton.announce(id).await.unwrap(), Announcement::Noop);

        // A re-run of the completed step `a` (a host re-enqueuing it), which now fails for good:
        // the runner writes its end and reports it, and the closed workflow stays as announced.
        fail_reruns.store(true, SeqCst);
        raw.set_states(&[a], "available").await;
        poll_until("the re-run ended", Duration::from_secs(10), || async {
            raw.step(id, "a").await.0 == "discarded"
        })
        .await;
        assert_eq!(raw.step(id, "a").await.1, 2, "the re-run was attempt 2");
        wait_sweeps(&baton, 3, Duration::from_secs(10)).await;
        holds_for("one event", Duration::from_millis(400), || events.len() == 1).await;
        assert_eq!(raw.completions(id).await, 1);
        assert_eq!(raw.count(Table::Completions).await, 1);
        // Either path may have claimed (the sweep can land between b's commit and its check);
        // the row is the one whose event was published.
        let path = event.detected_by.as_str().to_string();
        assert_eq!(raw.claim_row(id).await, ("completed".to_string(), path));
        // The stored announcement, counts included, is the one published.
        assert_eq!(baton.status(id).await.unwrap().finished, Some(event.clone()));
        assert_eq!(baton.wait_finished(id, Duration::from_secs(1)).await.unwrap(), event);
        assert_eq!(baton.stats().claims_won, 1);
        runner.shutdown().await;
        baton.shutdown().await;
    }
}

both_backends! {
    /// Steps that fail twice and succeed on their third attempt (one of them with a dependent),
    /// in 10 workflows, while the sweep runs every 20 ms and the test polls the database and
    /// `status` throughout: no step is ever `discarded` or `cancelled`, no workflow is ever
    /// announced or shown as failed, and every event is `completed`.
    async fn retry_then_success_never_looks_failed(db: TestDb) {
        const WORKFLOWS: usize = 10;
        let baton = db
            .builder()
            .sweep_interval(Duration::from_millis(20))
            .connect()
            .await
            .unwrap();
        let raw = db.raw().await;
        let events = subscribe(&baton, Topic::All).await;
        let polls = Arc::new(AtomicU64::new(0));
        let runner = Runner::builder()
            .concurrency(16)
            .retry_backoff(Duration::from_millis(20), Duration::from_millis(60))
            .handler("flaky", {
                let polls = polls.clone();
                move |ctx: StepContext| {
                    let polls = polls.clone();
                    async move {
                        if ctx.attempt < 3 {
                            // Hold the failing attempt until the watcher has looked twice, so it
                            // really observes the database between the retries, however slowly
                            // it is scheduled.
                            let seen = polls.load(SeqCst);
                            let until = tokio::time::Instant::now() + Duration::from_secs(10);
                            while polls.load(SeqCst) < seen + 2
                                && tokio::time::Instant::now() < until
                            {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                            Err(StepError::retryable(format!("attempt {} fails", ctx.attempt)))
                        } else {
                            Ok(())
                        }
                    }
                }
            })
            .handler("ok", |_ctx: StepContext| async { Ok(()) })
            .start(&baton);

        let stop = Arc::new(AtomicBool::new(false));
        let ids: Arc<std::sync::Mutex<Vec<WorkflowId>>> = Arc::default();
        let watcher = tokio::spawn({
            let (baton, raw, stop, ids, polls) =
                (baton.clone(), raw.clone(), stop.clone(), ids.clone(), polls.clone());
            async move {
                let mut next = 0usize;
                while !stop.load(SeqCst) {
                    let failed_steps = raw
                        .scalar(
                            "SELECT count(*) FROM baton_steps \
                             WHERE state IN ('discarded', 'cancelled')",
                        )
                        .await;
                    assert_eq!(failed_steps, 0, "a retried step was seen as failed");
                    let failed_claims = raw
                        .scalar(
                            "SELECT count(*) FROM baton_workflow_completions \
                             WHERE outcome <> 'completed'",
                        )
                        .await;
                    assert_eq!(failed_claims, 0, "a workflow was announced as failed");
                    let id = {
                        let ids = ids.lock().unwrap();
                        (!ids.is_empty()).then(|| ids[next % ids.len()])
                    };
                    if let Some(id) = id {
                        next += 1;
                        let status = baton.status(id).await.unwrap();
                        assert!(
                            !status.counts.contains_key("discarded")
                                && !status.counts.contains_key("cancelled"),
                            "{status:?}"
                        );
                        if let Some(done) = status.finished {
                            assert_eq!(done.outcome, Outcome::Completed, "{done:?}");
                            assert!(done.failed_steps.is_empty(), "{done:?}");
                        }
                    }
                    polls.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });

        for w in 0..WORKFLOWS {
            let wf = Workflow::new(format!("retry-{w}"))
                .step(Step::new("flaky-1", "flaky").max_attempts(3))
                .step(Step::new("after", "ok").depends_on(["flaky-1"]))
                .step(Step::new("flaky-2", "flaky").max_attempts(3))
                .step(Step::new("plain", "ok"));
            let id = baton.insert_workflow(wf).await.unwrap();
            ids.lock().unwrap().push(id);
        }
        let ids: Vec<WorkflowId> = ids.lock().unwrap().clone();
        for id in &ids {
            let event = events.first_of(*id, Duration::from_secs(30)).await;
            assert_eq!(event.outcome, Outcome::Completed, "{event:?}");
            assert!(event.failed_steps.is_empty(), "{event:?}");
            assert_eq!(event.counts, StepCounts { completed: 4, discarded: 0, cancelled: 0 });
            assert_eq!(raw.step(*id, "flaky-1").await.1, 3);
            assert_eq!(raw.step(*id, "flaky-2").await.1, 3);
        }
        stop.store(true, SeqCst);
        watcher.await.expect("the watcher saw a failure");
        println!(
            "{}: {} polls of the database while retries ran",
            baton.backend(),
            polls.load(SeqCst)
        );
        // Each failing attempt waited for two polls, and a step's two failing attempts ran one
        // after the other: the watcher looked at least four times while retries ran.
        assert!(polls.load(SeqCst) >= 4, "the watcher barely ran");
        holds_for("one event per workflow", Duration::from_millis(300), || {
            events.len() == WORKFLOWS
        })
        .await;
        runner.shutdown().await;
        baton.shutdown().await;
    }
}
