//! The two detection paths: the prompt `check` with its overlay, the backstop sweep and
//! `announce`, and that neither ever announces a workflow that has not settled.

use std::time::{Duration, Instant};

use baton::{
    Announcement, DetectedBy, Error, Outcome, Runner, Step, StepContext, TerminalState, Topic,
    Workflow, WorkflowId,
};

use crate::support::{
    Table, both_backends, holds_for, poll_until, subscribe, wait_sweeps, wait_until,
};

/// A sweep that never runs during the test.
const NO_SWEEP: Duration = Duration::from_secs(600);

both_backends! {
    /// `check` on the last step while the database still reads `executing` (a host that reports
    /// before it writes): announced at once by the prompt path, the overlay deciding the outcome.
    async fn overlay_announces_promptly(db: TestDb) {
        let baton = db.builder().sweep_interval(NO_SWEEP).connect().await.unwrap();
        let raw = db.raw().await;
        let events = subscribe(&baton, Topic::All).await;

        for (last_state, outcome) in [
            (TerminalState::Completed, Outcome::Completed),
            (TerminalState::Discarded, Outcome::Failed),
        ] {
            let wf = Workflow::new("overlay")
                .step(Step::new("first", "k"))
                .step(Step::new("second", "k"))
                .step(Step::new("last", "k"));
            let steps: Vec<_> = wf.steps().iter().map(|s| s.id()).collect();
            let id = baton.insert_workflow(wf).await.unwrap();
            raw.set_states(&steps[..2], "completed").await;
            raw.set_states(&steps[2..], "executing").await;

            // Reports for the steps already terminal do not announce: `last` is executing.
            baton.check(id, steps[0], TerminalState::Completed).await;
            baton.check(id, steps[1], TerminalState::Completed).await;
            let started = Instant::now();
            baton.check(id, steps[2], last_state).await;
            assert!(started.elapsed() < Duration::from_millis(500), "check waited");
            let event = events.first_of(id, Duration::from_secs(5)).await;
            let latency = started.elapsed();
            assert!(latency < Duration::from_secs(5), "announced after {latency:?}");
            println!("{}: overlay announcement after {latency:?}", baton.backend());
            assert_eq!(event.detected_by, DetectedBy::Prompt);
            assert_eq!(event.outcome, outcome);
            assert_eq!(event.counts.total(), 3);
            if outcome == Outcome::Failed {
                assert_eq!(event.failed_steps, vec!["last".to_string()]);
                assert_eq!(event.counts.discarded, 1);
            } else {
                assert!(event.failed_steps.is_empty());
                assert_eq!(event.counts.completed, 3);
            }
            // The announcement came from the overlay: the database still reads executing.
            let states = raw.steps(id).await;
            assert_eq!(states[0].0, "first");
            assert_eq!(states[1].1, "executing", "{states:?}");
            assert_eq!(raw.completions(id).await, 1);
        }
        holds_for("one event per workflow", Duration::from_millis(300), || events.len() == 2).await;
        baton.shutdown().await;
    }
}

both_backends! {
    /// Steps made terminal behind baton's back (plain SQL, no `check`): the sweep announces the
    /// workflow once, and later sweeps stay silent.
    async fn sweep_announces_once(db: TestDb) {
        let baton = db.baton().await;
        let raw = db.raw().await;
        let events = subscribe(&baton, Topic::All).await;
        let wf = Workflow::new("backstop")
            .step(Step::new("ok", "k"))
            .step(Step::new("crashed", "k"))
            .step(Step::new("after", "k").depends_on(["crashed"]));
        let steps: Vec<_> = wf.steps().iter().map(|s| s.id()).collect();
        let id = baton.insert_workflow(wf).await.unwrap();
        raw.set_states(&steps[..1], "completed").await;
        raw.set_states(&steps[1..2], "discarded").await;
        raw.set_states(&steps[2..], "cancelled").await;

        let event = events.first_of(id, Duration::from_secs(10)).await;
        assert_eq!(event.detected_by, DetectedBy::Sweep);
        assert_eq!(event.outcome, Outcome::Failed);
        assert_eq!(event.failed_steps, vec!["after".to_string(), "crashed".to_string()]);
        assert_eq!(event.node, *baton.node());
        wait_sweeps(&baton, 4, Duration::from_secs(10)).await;
        assert_eq!(events.count_of(id), 1, "events: {:?}", events.all());
        assert_eq!(raw.completions(id).await, 1);
        assert_eq!(
            raw.claim_row(id).await,
            ("failed".to_string(), "sweep".to_string())
        );
        assert_eq!(baton.announce(id).await.unwrap(), Announcement::Noop);
        // The stored announcement is the published one, field for field.
        assert_eq!(baton.status(id).await.unwrap().finished, Some(event));
        baton.shutdown().await;
    }
}

both_backends! {
    /// `announce` is `Noop` while any step is non-terminal, `Finished` once when all are,
    /// `Noop` after that, and `WorkflowNotFound` for an unknown id.
    async fn announce_noop_until_settled(db: TestDb) {
        let baton = db.builder().sweep_interval(NO_SWEEP).connect().await.unwrap();
        let raw = db.raw().await;
        let events = subscribe(&baton, Topic::All).await;
        let wf = Workflow::new("announce")
            .step(Step::new("a", "k"))
            .step(Step::new("b", "k").depends_on(["a"]))
            .step(Step::new("c", "k"));
        let steps: Vec<_> = wf.steps().iter().map(|s| s.id()).collect();
        let id = baton.insert_workflow(wf).await.unwrap();

        // As inserted: available and scheduled steps.
        assert_eq!(baton.announce(id).await.unwrap(), Announcement::Noop);
        raw.set_states(&steps[..2], "completed").await;
        for pending in ["scheduled", "available", "executing", "retryable"] {
            raw.set_states(&steps[2..], pending).await;
            assert_eq!(
                baton.announce(id).await.unwrap(),
                Announcement::Noop,
                "announced with a step {pending}"
            );
        }
        assert_eq!(raw.completions(id).await, 0);
        assert_eq!(events.len(), 0);

        raw.set_states(&steps[2..], "cancelled").await;
        let Announcement::Finished(event) = baton.announce(id).await.unwrap() else {
            panic!("a settled workflow was not announced");
        };
        assert_eq!(event.workflow_id, id);
        assert_eq!(event.name, "announce");
        assert_eq!(event.outcome, Outcome::Failed);
        assert_eq!(event.failed_steps, vec!["c".to_string()]);
        assert_eq!(event.counts.completed, 2);
        assert_eq!(event.counts.cancelled, 1);
        assert_eq!(event.detected_by, DetectedBy::Sweep);

        assert_eq!(baton.announce(id).await.unwrap(), Announcement::Noop);
        assert_eq!(baton.announce(id).await.unwrap(), Announcement::Noop);
        let unknown = WorkflowId::new();
        match baton.announce(unknown).await {
            Err(Error::WorkflowNotFound(got)) => assert_eq!(got, unknown),
            other => panic!("expected WorkflowNotFound, got {other:?}"),
        }
        assert_eq!(events.first_of(id, Duration::from_secs(5)).await, *event);
        assert_eq!(baton.status(id).await.unwrap().finished, Some(*event));
        holds_for("one event", Duration::from_millis(300), || events.len() == 1).await;
        assert_eq!(raw.completions(id).await, 1);
        baton.shutdown().await;
    }
}

both_backends! {
    /// Steps that are never picked up (no handler for their kind), or left in any other
    /// non-terminal state, keep their workflow unannounced through many sweeps.
    async fn never_premature(db: TestDb) {
        let baton = db
            .builder()
            .sweep_interval(Duration::from_millis(50))
            .connect()
            .await
            .unwrap();
        let raw = db.raw().await;
        let events = subscribe(&baton, Topic::All).await;
        // A runner that has no handler for kind "orphan".
        let runner = Runner::builder()
            .handler("other", |_ctx: StepContext| async { Ok(()) })
            .poll_interval(Duration::from_millis(20))
            .start(&baton);

        let orphan = Workflow::new("orphan")
            .step(Step::new("runs", "other"))
            .step(Step::new("never", "orphan"));
        let orphan = baton.insert_workflow(orphan).await.unwrap();
        let mut stuck = vec![orphan];
        for pending in ["scheduled", "available", "executing", "retryable"] {
            let wf = Workflow::new(format!("stuck-{pending}"))
                .step(Step::new("done-1", "nobody"))
                .step(Step::new("done-2", "nobody"))
                .step(Step::new("pending", "nobody"));
            let steps: Vec<_> = wf.steps().iter().map(|s| s.id()).collect();
            let id = baton.insert_workflow(wf).await.unwrap();
            raw.set_states(&steps[..2], "completed").await;
            raw.set_states(&steps[2..], pending).await;
            stuck.push(id);
        }
        // A control workflow proves the sweep is live and announcing.
        let control = Workflow::new("control").step(Step::new("runs", "other"));
        let control = baton.insert_workflow(control).await.unwrap();
        events.first_of(control, Duration::from_secs(10)).await;
        wait_until("the runner ran orphan's runnable step", Duration::from_secs(10), || {
            baton.stats().checks >= 2
        })
        .await;

        let before = baton.stats().sweeps;
        wait_sweeps(&baton, 10, Duration::from_secs(10)).await;
        assert!(baton.stats().sweeps >= before + 10);
        assert_eq!(events.len(), 1, "events: {:?}", events.all());
        assert_eq!(raw.count(Table::Completions).await, 1);
        for id in &stuck {
            assert_eq!(raw.completions(*id).await, 0);
            assert_eq!(baton.announce(*id).await.unwrap(), Announcement::Noop);
            assert!(baton.status(*id).await.unwrap().finished.is_none());
        }
        let orphan_steps = raw.steps(orphan).await;
        assert_eq!(orphan_steps[0].0, "never");
        assert_eq!(orphan_steps[0].1, "available");
        assert_eq!(orphan_steps[1].1, "completed");
        runner.shutdown().await;
        baton.shutdown().await;
    }
}

both_backends! {
    /// Two nodes share every workflow: node A runs the `a` steps, node B the `b` steps, and
    /// their last steps end at nearly the same moment on both. Each node's detection waits while
    /// one of the workflow's steps still executes there, yet every workflow is claimed promptly —
    /// with no sweep at all, a workflow each node left to the other would never be announced.
    async fn steps_split_across_nodes_are_announced_promptly(db: TestDb) {
        const WORKFLOWS: usize = 40;
        const STEPS: usize = 12;
        let connect = || db.builder().sweep_interval(NO_SWEEP).connect();
        let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
        let raw = db.raw().await;
        let handler = |_ctx: StepContext| async move {
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..6))).await;
            Ok(())
        };
        let runner_a = Runner::builder().concurrency(8).handler("a", handler).start(&a);
        let runner_b = Runner::builder().concurrency(8).handler("b", handler).start(&b);
        let mut ids = Vec::new();
        for w in 0..WORKFLOWS {
            let wf = Workflow::new(format!("split-{w}")).steps_from(
                (0..STEPS).map(|s| Step::new(format!("s{s}"), if s % 2 == 0 { "a" } else { "b" })),
            );
            ids.push([&a, &b][w % 2].insert_workflow(wf).await.unwrap());
        }
        poll_until("every workflow was claimed", Duration::from_secs(60), || async {
            raw.count(Table::Completions).await == WORKFLOWS as i64
        })
        .await;
        for id in ids {
            assert_eq!(raw.claim_row(id).await, ("completed".into(), "prompt".into()));
        }
        let (sa, sb) = (a.stats(), b.stats());
        println!(
            "{}: {WORKFLOWS} workflows split over two nodes, all prompt; deferred {} + {}, queries {} + {}",
            a.backend(),
            sa.checks_deferred,
            sb.checks_deferred,
            sa.detection_queries,
            sb.detection_queries
        );
        runner_a.shutdown().await;
        runner_b.shutdown().await;
        a.shutdown().await;
        b.shutdown().await;
    }
}
