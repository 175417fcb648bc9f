//! Leases and fencing: a zombie whose node lost its lease cannot change anything with its late
//! report, and a step that runs far longer than the lease while its node renews it is never
//! rescued.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::runner::Handler;
use baton::{
    Baton, DetectedBy, Outcome, Runner, Step, StepContext, StepCounts, StepError, Topic, Workflow,
};
use tokio::sync::{mpsc, watch};

use crate::support::{
    Backend, Proxy, both_backends, captured_logs, holds_for, poll_until, subscribe, wait_sweeps,
    wait_until,
};

/// A handler that reports its attempt on `started` and then runs until `release` turns true,
/// whatever happens to its lease. Counts the attempts that returned in `returned`.
fn blocking_handler(
    started: mpsc::UnboundedSender<u32>,
    release: watch::Receiver<bool>,
    returned: Arc<AtomicU32>,
    result: fn() -> Result<(), StepError>,
) -> impl Handler {
    move |ctx: StepContext| {
        let (started, mut release, returned) = (started.clone(), release.clone(), returned.clone());
        async move {
            let _ = started.send(ctx.attempt);
            let _ = release.wait_for(|go| *go).await;
            returned.fetch_add(1, SeqCst);
            result()
        }
    }
}

both_backends! {
    /// Node A runs attempt 1 of a step and loses its lease while the handler keeps running (a
    /// zombie). Node B's sweeper rescues the step and B runs attempt 2. The zombie then returns
    /// success while attempt 2 is still running: its write is fenced out by the attempt number.
    /// Attempt 2 then fails for good: one event, `failed`, listing the step — the outcome of the
    /// attempt that really owned the step, not the zombie's success.
    ///
    /// On Postgres, A is partitioned: it reaches the database through a proxy the test cuts, so
    /// it cannot renew its lease. On SQLite (no network to lose) A's lease row is expired behind
    /// its back, and its lease is long enough that it does not renew it during the test.
    async fn zombie_report_is_fenced_out(db: TestDb) {
        let logs = captured_logs();
        let raw = db.raw().await;
        let pg = db.backend() == Backend::Postgres;
        let proxy = if pg { Some(Proxy::start(db.pg_addr()).await) } else { None };
        let url_a = match &proxy {
            Some(p) => db.url_with_port(p.port()),
            None => db.url().to_string(),
        };
        let a = Baton::builder()
            .database_url(url_a)
            .migrate(true)
            .sweeper(false)
            .lease(if pg { Duration::from_secs(1) } else { Duration::from_secs(120) })
            .connect()
            .await
            .unwrap();
        let b = db
            .builder()
            .lease(Duration::from_secs(1))
            .sweep_interval(Duration::from_millis(100))
            .connect()
            .await
            .unwrap();
        let events_a = subscribe(&a, Topic::All).await;
        let events_b = subscribe(&b, Topic::All).await;

        // A: one slot, taken by the zombie, so A cannot pick the rescued step up again itself.
        let (started_a, mut started_rx_a) = mpsc::unbounded_channel();
        let (release_a, release_rx_a) = watch::channel(false);
        let returned_a = Arc::new(AtomicU32::new(0));
        let runner_a = Runner::builder()
            .concurrency(1)
            .handler(
                "zombie",
                blocking_handler(started_a, release_rx_a, returned_a.clone(), || Ok(())),
            )
            .start(&a);
        let id = b
            .insert_workflow(Workflow::new("zombie").step(Step::new("z", "zombie").max_attempts(3)))
            .await
            .unwrap();
        let attempt = tokio::time::timeout(Duration::from_secs(10), started_rx_a.recv())
            .await
            .expect("A started the step")
            .unwrap();
        assert_eq!(attempt, 1);
        let (state, attempt, _) = raw.step(id, "z").await;
        assert_eq!((state.as_str(), attempt), ("executing", 1));

        // A loses its lease; B (which has a runner for the kind) rescues the step and runs
        // attempt 2, which blocks until released and then fails for good.
        if let Some(p) = &proxy {
            p.cut();
        }
        let (started_b, mut started_rx_b) = mpsc::unbounded_channel();
        let (release_b, release_rx_b) = watch::channel(false);
        let returned_b = Arc::new(AtomicU32::new(0));
        let runner_b = Runner::builder()
            .handler(
                "zombie",
                blocking_handler(started_b, release_rx_b, returned_b.clone(), || {
                    Err(StepError::permanent("attempt 2 fails for real"))
                }),
            )
            .start(&b);
        let cut_at = Instant::now();
        let attempt_b = loop {
            if !pg {
                // A may renew once right after it started; after that it sleeps for lease/3.
                raw.expire_node(a.node()).await;
            }
            match tokio::time::timeout(Duration::from_millis(50), started_rx_b.recv()).await {
                Ok(attempt) => break attempt.unwrap(),
                Err(_) => assert!(
                    cut_at.elapsed() < Duration::from_secs(20),
                    "B never rescued the step of A's expired lease"
                ),
            }
        };
        println!("{}: rescued and restarted after {:?}", b.backend(), cut_at.elapsed());
        assert_eq!(attempt_b, 2);
        let (state, attempt, error) = raw.step(id, "z").await;
        assert_eq!((state.as_str(), attempt), ("executing", 2));
        assert!(error.as_deref().unwrap_or_default().starts_with("lost"), "{error:?}");
        assert_eq!(returned_a.load(SeqCst), 0, "the zombie is still running");

        // The zombie comes back and returns success while attempt 2 still runs.
        if let Some(p) = &proxy {
            p.restore();
        }
        release_a.send(true).unwrap();
        // Waits until A's attempt has ended and its end was written (or rejected).
        runner_a.shutdown().await;
        assert_eq!(returned_a.load(SeqCst), 1);
        let id_field = format!("workflow_id={id}");
        assert!(
            logs.lines_with(&[&id_field, "could not write a step's end"]).is_empty(),
            "the zombie's write never reached the database, so the fence was not exercised"
        );
        let (state, attempt, _) = raw.step(id, "z").await;
        assert_eq!((state.as_str(), attempt), ("executing", 2), "the zombie's success was written");
        holds_for("nothing announced while attempt 2 runs", Duration::from_millis(400), || {
            events_a.len() == 0 && events_b.len() == 0
        })
        .await;
        assert_eq!(raw.completions(id).await, 0);

        // Attempt 2 fails for good: that is the outcome.
        release_b.send(true).unwrap();
        let event = events_b.first_of(id, Duration::from_secs(10)).await;
        assert_eq!(event.outcome, Outcome::Failed);
        assert_eq!(event.failed_steps, ["z"]);
        assert_eq!(
            event.counts,
            StepCounts { completed: 0, discarded: 1, cancelled: 0 }
        );
        assert_eq!(event.node, *b.node());
        let (state, attempt, error) = raw.step(id, "z").await;
        assert_eq!((state.as_str(), attempt), ("discarded", 2));
        assert_eq!(error.as_deref(), Some("attempt 2 fails for real"));
        if pg {
            // A's notifier catches up on B's claim once it has reconnected.
            assert_eq!(events_a.first_of(id, Duration::from_secs(15)).await, event);
        }
        wait_sweeps(&b, 3, Duration::from_secs(10)).await;
        holds_for("one event per subscriber", Duration::from_millis(400), || {
            events_b.len() == 1 && events_a.len() == usize::from(pg)
        })
        .await;
        assert_eq!(raw.completions(id).await, 1);
        assert_eq!(b.status(id).await.unwrap().finished, Some(event));
        assert_eq!(a.stats().claims_won + b.stats().claims_won, 1);
        assert_eq!(returned_b.load(SeqCst), 1);
        runner_b.shutdown().await;
        a.shutdown().await;
        b.shutdown().await;
    }
}

both_backends! {
    /// A step that runs ten times longer than the lease (600 ms lease, 6 s step) on a node that
    /// keeps renewing it, while two sweepers look for lost steps every 100 ms: never rescued,
    /// attempt 1 throughout, run once.
    async fn long_step_renewing_its_lease_is_never_rescued(db: TestDb) {
        const LEASE: Duration = Duration::from_millis(600);
        const STEP: Duration = Duration::from_secs(6);
        let connect = || {
            db.builder()
                .lease(LEASE)
                .sweep_interval(Duration::from_millis(100))
                .connect()
        };
        let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
        let raw = db.raw().await;
        // Either node may run and claim the step; on SQLite nodes do not relay each other's
        // claims, so listen on both (on PostgreSQL each hears it).
        let (events_a, events_b) = (subscribe(&a, Topic::All).await, subscribe(&b, Topic::All).await);
        // Both nodes can run the step: a rescued step would be re-run on either.
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let handler = {
            let attempts = attempts.clone();
            move |ctx: StepContext| {
                let attempts = attempts.clone();
                async move {
                    attempts.lock().unwrap().push(ctx.attempt);
                    tokio::time::sleep(STEP).await;
                    Ok(())
                }
            }
        };
        let runner_a = Runner::builder().handler("long", handler.clone()).start(&a);
        let runner_b = Runner::builder().handler("long", handler).start(&b);
        let started = Instant::now();
        let id = a
            .insert_workflow(Workflow::new("long").step(Step::new("long", "long").max_attempts(5)))
            .await
            .unwrap();
        wait_until("the step started", Duration::from_secs(10), || {
            !attempts.lock().unwrap().is_empty()
        })
        .await;
        let sweeps = (a.stats().sweeps, b.stats().sweeps);
        let mut polls = 0;
        while events_a.count_of(id) + events_b.count_of(id) == 0 {
            let (state, attempt, error) = raw.step(id, "long").await;
            assert_eq!(attempt, 1, "the step was rescued after {:?}", started.elapsed());
            assert!(error.is_none(), "{error:?}");
            assert!(matches!(state.as_str(), "executing" | "completed"), "{state}");
            polls += 1;
            assert!(started.elapsed() < STEP * 3, "the step never finished");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = started.elapsed();
        let event = events_a.of(id).into_iter().chain(events_b.of(id)).next().unwrap();
        assert!(took >= STEP, "{took:?}");
        assert_eq!(event.outcome, Outcome::Completed);
        let sweeps = (a.stats().sweeps - sweeps.0, b.stats().sweeps - sweeps.1);
        println!(
            "{}: a {STEP:?} step under a {LEASE:?} lease: {polls} polls, attempt 1 throughout; \
             sweeps meanwhile: {sweeps:?}",
            a.backend()
        );
        // Both sweepers were live and judging the whole time.
        assert!(sweeps.0 >= 20 && sweeps.1 >= 20, "{sweeps:?}");
        assert_eq!(*attempts.lock().unwrap(), [1]);
        assert_eq!(raw.step(id, "long").await, ("completed".to_string(), 1, None));
        assert_eq!(raw.completions(id).await, 1);
        runner_a.shutdown().await;
        runner_b.shutdown().await;
        a.shutdown().await;
        b.shutdown().await;
    }
}

both_backends! {
    /// Detection on a node waits while one of the workflow's steps executes there. When that
    /// step is a zombie (its lease lost, its step re-run and completed elsewhere), its fenced-out
    /// end must still wake detection. Node A runs `z`; A's lease is expired behind its back and
    /// B rescues `z` and completes it. A renews its lease; B completes `p`, which releases `t`,
    /// and stops. `t` runs on A and completes: settled, but A's detection waits for its zombie.
    /// The zombie's stale end nudges A, which claims — by the prompt path, with no sweeper left.
    async fn a_stale_attempt_wakes_detection_that_waited_for_it(db: TestDb) {
        const LEASE_A: Duration = Duration::from_secs(3);
        let raw = db.raw().await;
        let a = db.builder().sweeper(false).lease(LEASE_A).connect().await.unwrap();
        let b = db
            .builder()
            .lease(Duration::from_secs(1))
            .sweep_interval(Duration::from_millis(100))
            .connect()
            .await
            .unwrap();
        let events = subscribe(&a, Topic::All).await;
        let (started, mut started_rx) = mpsc::unbounded_channel();
        let (release_z, release_z_rx) = watch::channel(false);
        let (release_t, release_t_rx) = watch::channel(false);
        let returned = Arc::new(AtomicU32::new(0));
        // A polls for work only every minute: once `z` is rescued, A (which has a free slot)
        // must not fetch it again before B does; the test wakes A when `t` is ready.
        let runner_a = Runner::builder()
            .concurrency(2)
            .poll_interval(Duration::from_secs(60))
            .handler("zombie", blocking_handler(started.clone(), release_z_rx, returned.clone(), || Ok(())))
            .handler("tail", blocking_handler(started, release_t_rx, returned.clone(), || Ok(())))
            .start(&a);
        let id = a
            .insert_workflow(
                Workflow::new("nudged")
                    .step(Step::new("z", "zombie").max_attempts(3))
                    .step(Step::new("p", "pre"))
                    .step(Step::new("t", "tail").depends_on(["p"])),
            )
            .await
            .unwrap();
        let started_z = tokio::time::timeout(Duration::from_secs(10), started_rx.recv()).await;
        assert_eq!(started_z.unwrap(), Some(1));

        // A loses its lease behind its back; B rescues `z` and completes attempt 2.
        let (release_p, release_p_rx) = watch::channel(false);
        let runner_b = Runner::builder()
            .handler("zombie", |_ctx: StepContext| async { Ok(()) })
            .handler("pre", move |_ctx: StepContext| {
                let mut release = release_p_rx.clone();
                async move {
                    let _ = release.wait_for(|go| *go).await;
                    Ok(())
                }
            })
            .start(&b);
        let rescued_at = Instant::now();
        while raw.step(id, "z").await.0 != "completed" {
            raw.expire_node(a.node()).await;
            assert!(rescued_at.elapsed() < Duration::from_secs(20), "B never rescued z");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(raw.step(id, "z").await.1, 2);
        // A renews its lease (every third of it) before it takes on `t`.
        tokio::time::sleep(LEASE_A / 2).await;
        release_p.send(true).unwrap();
        poll_until("t became available", Duration::from_secs(10), || async {
            raw.step(id, "t").await.0 == "available"
        })
        .await;
        // Any insert wakes A's fetcher (this workflow's step is of a kind nobody runs).
        a.insert_workflow(Workflow::new("wake-up").step(Step::new("w", "nobody")))
            .await
            .unwrap();
        let started_t = tokio::time::timeout(Duration::from_secs(10), started_rx.recv()).await;
        assert_eq!(started_t.unwrap(), Some(1), "t started on A");
        runner_b.shutdown().await;
        b.shutdown().await;

        // `t` ends on A: settled in the database, but A's detection waits for its zombie.
        release_t.send(true).unwrap();
        poll_until("t completed", Duration::from_secs(10), || async {
            raw.step(id, "t").await.0 == "completed"
        })
        .await;
        holds_for("A waits for its zombie", Duration::from_millis(300), || events.len() == 0).await;
        assert!(a.stats().checks_deferred >= 1);
        assert_eq!(returned.load(SeqCst), 1, "only t returned");

        // The zombie's end is fenced out, and nudges A's detection: one prompt claim, by A.
        release_z.send(true).unwrap();
        let event = events.first_of(id, Duration::from_secs(10)).await;
        assert_eq!(event.detected_by, DetectedBy::Prompt);
        assert_eq!(event.node, *a.node());
        assert_eq!(event.outcome, Outcome::Completed);
        assert_eq!(raw.step(id, "z").await.1, 2, "the zombie's write was fenced out");
        assert_eq!(raw.completions(id).await, 1);
        runner_a.shutdown().await;
        a.shutdown().await;
    }
}
