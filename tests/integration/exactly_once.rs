//! Exactly once under real races: a storm of sibling completions, concurrent `check`s and
//! concurrent `announce`s on one settled workflow.

use std::sync::Arc;
use std::time::Duration;

use baton::{
    Announcement, Baton, DetectedBy, Outcome, Runner, Step, StepContext, StepId, TerminalState,
    Topic, Workflow, WorkflowId,
};
use tokio::sync::Barrier;

use crate::support::{Table, both_backends, holds_for, subscribe, wait_sweeps, wait_until};

/// A sweep so slow it never runs during the test: only the path under test can announce.
const NO_SWEEP: Duration = Duration::from_secs(600);

both_backends! {
    /// 1,000 sibling steps completed by 32 concurrent workers: one event, one claim row.
    async fn sibling_storm(db: TestDb) {
        const STEPS: usize = 1_000;
        let baton = db.baton().await;
        let raw = db.raw().await;
        let events = subscribe(&baton, Topic::All).await;
        let runner = Runner::builder()
            .concurrency(32)
            .handler("noop", |_ctx: StepContext| async { Ok(()) })
            .start(&baton);
        let wf = Workflow::new("storm")
            .steps_from((0..STEPS).map(|i| Step::new(format!("s{i:04}"), "noop")));
        let id = baton.insert_workflow(wf).await.unwrap();

        let event = events.first_of(id, Duration::from_secs(60)).await;
        assert_eq!(event.outcome, Outcome::Completed);
        assert_eq!(event.counts.completed, STEPS as u64);
        assert!(event.failed_steps.is_empty());
        // Every step was reported once; then a few more sweeps pass without a second event.
        wait_until("every step was reported", Duration::from_secs(30), || {
            baton.stats().checks >= STEPS as u64
        })
        .await;
        wait_sweeps(&baton, 3, Duration::from_secs(10)).await;
        let stats = baton.stats();
        assert_eq!(stats.checks, STEPS as u64);
        println!(
            "{} storm: {STEPS} steps, {} detection queries ({:.3}/step)",
            baton.backend(),
            stats.detection_queries,
            stats.detection_queries as f64 / STEPS as f64
        );
        assert_eq!(events.len(), 1, "events: {:?}", events.all());
        assert_eq!(raw.completions(id).await, 1);
        assert_eq!(baton.stats().claims_won, 1);
        runner.shutdown().await;
        baton.shutdown().await;
    }
}

/// Reports every step from its own task, all released together by a barrier.
async fn check_all_at_once(baton: &Baton, id: WorkflowId, steps: &[StepId]) {
    let barrier = Arc::new(Barrier::new(steps.len()));
    let tasks: Vec<_> = steps
        .iter()
        .map(|&step| {
            let (baton, barrier) = (baton.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                baton.check(id, step, TerminalState::Completed).await;
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

both_backends! {
    /// 64 `check`s released together on a workflow already settled in the database, repeated on
    /// 10 workflows: exactly one event each, by the prompt path, and none for 64 more reports
    /// arriving after the announcement.
    async fn concurrent_checks_announce_once(db: TestDb) {
        const TASKS: usize = 64;
        const ROUNDS: usize = 10;
        let baton = db.builder().sweep_interval(NO_SWEEP).connect().await.unwrap();
        let raw = db.raw().await;
        let events = subscribe(&baton, Topic::All).await;
        let mut ids = Vec::new();
        for round in 0..ROUNDS {
            let wf = Workflow::new(format!("checks-{round}"))
                .steps_from((0..TASKS).map(|i| Step::new(format!("s{i}"), "none")));
            let steps: Vec<_> = wf.steps().iter().map(|s| s.id()).collect();
            let id = baton.insert_workflow(wf).await.unwrap();
            raw.set_all_states(id, "completed").await;
            check_all_at_once(&baton, id, &steps).await;
            let event = events.first_of(id, Duration::from_secs(10)).await;
            assert_eq!(event.detected_by, DetectedBy::Prompt);
            assert_eq!(event.outcome, Outcome::Completed);
            assert_eq!(event.counts.completed, TASKS as u64);
            // Late duplicates (a host retrying its reports) after the announcement: silent.
            check_all_at_once(&baton, id, &steps).await;
            ids.push(id);
        }
        holds_for("one event per workflow", Duration::from_millis(500), || {
            events.len() == ROUNDS
        })
        .await;
        for id in &ids {
            assert_eq!(events.count_of(*id), 1, "workflow {id}");
            assert_eq!(raw.completions(*id).await, 1, "workflow {id}");
        }
        assert_eq!(raw.count(Table::Completions).await, ROUNDS as i64);
        assert_eq!(baton.stats().claims_won, ROUNDS as u64);
        baton.shutdown().await;
    }
}

both_backends! {
    /// 64 `announce`s released together on a settled workflow, over many connections, repeated on
    /// 10 workflows: exactly one `Finished`, 63 `Noop`, one event.
    async fn concurrent_announces_finish_once(db: TestDb) {
        const TASKS: usize = 64;
        const ROUNDS: usize = 10;
        let baton = db
            .builder()
            .sweep_interval(NO_SWEEP)
            .max_connections(32)
            .connect()
            .await
            .unwrap();
        let raw = db.raw().await;
        let events = subscribe(&baton, Topic::All).await;
        for round in 0..ROUNDS {
            let wf = Workflow::new(format!("announces-{round}"))
                .step(Step::new("a", "none"))
                .step(Step::new("b", "none").depends_on(["a"]))
                .step(Step::new("c", "none"));
            let id = baton.insert_workflow(wf).await.unwrap();
            raw.set_all_states(id, "completed").await;
            let barrier = Arc::new(Barrier::new(TASKS));
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let (baton, barrier) = (baton.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        baton.announce(id).await
                    })
                })
                .collect();
            let mut finished = Vec::new();
            let mut noops = 0;
            for t in tasks {
                match t.await.unwrap() {
                    Ok(Announcement::Finished(e)) => finished.push(e),
                    Ok(Announcement::Noop) => noops += 1,
                    Err(e) => panic!("announce failed in round {round}: {e}"),
                }
            }
            assert_eq!(finished.len(), 1, "round {round}: {finished:?}");
            assert_eq!(noops, TASKS - 1);
            let event = &finished[0];
            assert_eq!(event.workflow_id, id);
            assert_eq!(event.detected_by, DetectedBy::Sweep);
            assert_eq!(event.counts.completed, 3);
            let published = events.first_of(id, Duration::from_secs(10)).await;
            assert_eq!(published, **event);
            assert_eq!(raw.completions(id).await, 1);
        }
        holds_for("one event per workflow", Duration::from_millis(500), || {
            events.len() == ROUNDS
        })
        .await;
        assert_eq!(baton.stats().claims_won, ROUNDS as u64);
        baton.shutdown().await;
    }
}

both_backends! {
    /// The prompt path and the sweep race on two instances (nodes) at once: 40 settled
    /// workflows, each reported by 8 tasks split over both instances while both sweep every
    /// 10 ms. One claim per workflow; every subscriber gets each workflow at most once, and on
    /// Postgres (cross-node channel) exactly once on both instances.
    async fn prompt_and_sweep_race_across_instances(db: TestDb) {
        const WORKFLOWS: usize = 40;
        const STEPS: usize = 8;
        let connect = || db.builder().sweep_interval(Duration::from_millis(10)).connect();
        let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
        let raw = db.raw().await;
        let events_a = subscribe(&a, Topic::All).await;
        let events_b = subscribe(&b, Topic::All).await;
        let mut workflows = Vec::new();
        for w in 0..WORKFLOWS {
            let wf = Workflow::new(format!("race-{w}"))
                .steps_from((0..STEPS).map(|i| Step::new(format!("s{i}"), "none")));
            let steps: Vec<_> = wf.steps().iter().map(|s| s.id()).collect();
            let id = a.insert_workflow(wf).await.unwrap();
            workflows.push((id, steps));
        }
        let barrier = Arc::new(Barrier::new(WORKFLOWS * STEPS));
        let mut tasks = Vec::new();
        for (id, steps) in &workflows {
            raw.set_all_states(*id, "completed").await;
            for (i, step) in steps.iter().enumerate() {
                let baton = if i % 2 == 0 { a.clone() } else { b.clone() };
                let (barrier, id, step) = (barrier.clone(), *id, *step);
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    baton.check(id, step, TerminalState::Completed).await;
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let heard = |id: WorkflowId| events_a.count_of(id) + events_b.count_of(id);
        wait_until("every workflow was announced", Duration::from_secs(30), || {
            workflows.iter().all(|(id, _)| heard(*id) >= 1)
        })
        .await;
        let relayed = db.backend() == crate::support::Backend::Postgres;
        if relayed {
            wait_until("both instances heard every workflow", Duration::from_secs(30), || {
                workflows.iter().all(|(id, _)| heard(*id) == 2)
            })
            .await;
        }
        holds_for("each subscriber got each workflow at most once", Duration::from_millis(500), || {
            workflows.iter().all(|(id, _)| {
                events_a.count_of(*id) <= 1
                    && events_b.count_of(*id) <= 1
                    && heard(*id) == if relayed { 2 } else { 1 }
            })
        })
        .await;
        assert_eq!(raw.count(Table::Completions).await, WORKFLOWS as i64);
        for (id, _) in &workflows {
            assert_eq!(raw.completions(*id).await, 1);
        }
        let (won_a, won_b) = (a.stats().claims_won, b.stats().claims_won);
        assert_eq!(won_a + won_b, WORKFLOWS as u64);
        let all = [events_a.all(), events_b.all()].concat();
        let by_sweep = all.iter().filter(|e| e.detected_by == DetectedBy::Sweep).count();
        println!(
            "{}: claims won a={won_a} b={won_b}; {by_sweep} of {} deliveries detected by the sweep",
            a.backend(),
            all.len()
        );
        a.shutdown().await;
        b.shutdown().await;
    }
}
