//! Subscriber faults: a panicking subscriber and a slow one (1 s per event) beside a normal one.
//! The normal one receives every event with its usual latency; the panicking one stops and
//! receives nothing more; nothing blocks the claim, the runner or the other deliveries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

use baton::{Baton, Outcome, Runner, Step, StepContext, Topic, Workflow, WorkflowFinished};
use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus};

use crate::support::{Events, both_backends, holds_for, subscribe, wait_until};

/// The message of the faulty subscribers.
struct Finished(#[allow(dead_code)] WorkflowFinished);

impl From<WorkflowFinished> for Finished {
    fn from(event: WorkflowFinished) -> Self {
        Finished(event)
    }
}

/// Panics on its first event.
struct Panicker;

impl Actor for Panicker {
    type Msg = Finished;
    type State = Arc<AtomicU32>;
    type Arguments = Arc<AtomicU32>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Finished>,
        seen: Arc<AtomicU32>,
    ) -> Result<Arc<AtomicU32>, ActorProcessingErr> {
        Ok(seen)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Finished>,
        _event: Finished,
        seen: &mut Arc<AtomicU32>,
    ) -> Result<(), ActorProcessingErr> {
        seen.fetch_add(1, SeqCst);
        panic!("this subscriber panics on purpose");
    }
}

/// Takes a second over each event.
struct Slow;

impl Actor for Slow {
    type Msg = Finished;
    type State = Arc<AtomicU32>;
    type Arguments = Arc<AtomicU32>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Finished>,
        seen: Arc<AtomicU32>,
    ) -> Result<Arc<AtomicU32>, ActorProcessingErr> {
        Ok(seen)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Finished>,
        _event: Finished,
        seen: &mut Arc<AtomicU32>,
    ) -> Result<(), ActorProcessingErr> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        seen.fetch_add(1, SeqCst);
        Ok(())
    }
}

/// Latencies of one batch, sorted: claim to receipt, and insert to receipt.
struct Latencies {
    delivery: Vec<Duration>,
    end_to_end: Vec<Duration>,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs `n` one-step workflows, 20 ms apart, and measures when `events` received each.
async fn run_batch(baton: &Baton, events: &Events, name: &str, n: usize) -> Latencies {
    let mut inserted = Vec::new();
    for _ in 0..n {
        let wf = Workflow::new(name).step(Step::new("only", "noop"));
        let at = Instant::now();
        inserted.push((baton.insert_workflow(wf).await.unwrap(), at));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut delivery = Vec::new();
    let mut end_to_end = Vec::new();
    for (id, at) in &inserted {
        let event = events.first_of(*id, Duration::from_secs(10)).await;
        assert_eq!(event.outcome, Outcome::Completed);
        let received = events
            .received()
            .into_iter()
            .find(|r| r.workflow_id == *id)
            .unwrap();
        delivery.push(
            (received.at - event.finished_at)
                .to_std()
                .unwrap_or_default(),
        );
        end_to_end.push(received.instant - *at);
    }
    delivery.sort();
    end_to_end.sort();
    Latencies {
        delivery,
        end_to_end,
    }
}

both_backends! {
    async fn faulty_subscribers_do_not_delay_the_others(db: TestDb) {
        const N: usize = 30;
        let baton = db.baton().await;
        let runner = Runner::builder()
            .handler("noop", |_ctx: StepContext| async { Ok(()) })
            .start(&baton);

        // Baseline: a normal subscriber alone (it stays subscribed afterwards).
        let alone = subscribe(&baton, Topic::All).await;
        let baseline = run_batch(&baton, &alone, "baseline", N).await;

        // A panicking and a slow subscriber, subscribed before the normal one.
        let panicked = Arc::new(AtomicU32::new(0));
        let (panicker, _) = Actor::spawn(None, Panicker, panicked.clone()).await.unwrap();
        baton.subscribe(panicker.clone(), Topic::All).await.unwrap();
        let slow_seen = Arc::new(AtomicU32::new(0));
        let (slow, _) = Actor::spawn(None, Slow, slow_seen.clone()).await.unwrap();
        baton.subscribe(slow.clone(), Topic::All).await.unwrap();
        let normal = subscribe(&baton, Topic::All).await;
        let faulty = run_batch(&baton, &normal, "beside-faulty", N).await;

        let (b, f) = (&baseline, &faulty);
        println!(
            "{}: delivery latency p50/max alone {:?}/{:?}, beside faulty subscribers {:?}/{:?}; \
             insert-to-event p50/max alone {:?}/{:?}, beside faulty {:?}/{:?}",
            baton.backend(),
            pct(&b.delivery, 0.5),
            pct(&b.delivery, 1.0),
            pct(&f.delivery, 0.5),
            pct(&f.delivery, 1.0),
            pct(&b.end_to_end, 0.5),
            pct(&b.end_to_end, 1.0),
            pct(&f.end_to_end, 0.5),
            pct(&f.end_to_end, 1.0),
        );
        // Were the slow subscriber in the way, the i-th event would wait about i seconds.
        assert!(pct(&f.delivery, 1.0) < Duration::from_millis(500), "delivery was delayed");
        assert!(pct(&f.end_to_end, 1.0) < Duration::from_secs(1), "the run was delayed");
        assert!(
            pct(&f.delivery, 0.5) <= pct(&b.delivery, 0.5) * 3 + Duration::from_millis(50),
            "the usual delivery latency grew"
        );
        assert!(
            pct(&f.end_to_end, 0.5) <= pct(&b.end_to_end, 0.5) * 3 + Duration::from_millis(50),
            "the usual end-to-end latency grew"
        );

        // The panicking subscriber died on its first event and got nothing more; the slow one
        // is still working through its backlog while every other delivery is done.
        wait_until("the panicking subscriber stopped", Duration::from_secs(5), || {
            panicker.get_status() == ActorStatus::Stopped
        })
        .await;
        assert_eq!(panicked.load(SeqCst), 1);
        let slow_done = slow_seen.load(SeqCst) as usize;
        assert!(slow_done < N, "the slow subscriber kept up: not slow enough to test anything");
        assert_eq!(slow.get_status(), ActorStatus::Running);
        // Deliveries after the panic still work, for the normal and the slow subscriber.
        let more = run_batch(&baton, &normal, "after-panic", 3).await;
        assert!(pct(&more.delivery, 1.0) < Duration::from_millis(500));
        // The batch waited for `normal` only: `alone` may be a delivery behind.
        wait_until("every subscriber has every event", Duration::from_secs(5), || {
            normal.len() >= N + 3 && alone.len() >= 2 * N + 3
        })
        .await;
        holds_for("each event once", Duration::from_millis(300), || {
            normal.len() == N + 3 && alone.len() == 2 * N + 3
        })
        .await;
        assert_eq!(panicked.load(SeqCst), 1);
        slow.stop(None);
        runner.shutdown().await;
        baton.shutdown().await;
    }
}
