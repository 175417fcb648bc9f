//! The outcome a real run announces: completed, failed with what failed, and retries that
//! recover leaving no trace in it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::{Outcome, Runner, Step, StepContext, StepError, Topic, Workflow};

use crate::support::{both_backends, holds_for, subscribe};

both_backends! {
    async fn outcome_reflects_what_failed(db: TestDb) {
        let baton = db.baton().await;
        let raw = db.raw().await;
        let events = subscribe(&baton, Topic::All).await;
        // Attempts per step name, across all workflows (names are unique across them here).
        let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let count = |attempts: &Arc<Mutex<HashMap<String, u32>>>, ctx: &StepContext| {
            *attempts.lock().unwrap().entry(ctx.name.clone()).or_default() += 1;
        };
        let (a1, a2, a3) = (attempts.clone(), attempts.clone(), attempts.clone());
        let runner = Runner::builder()
            .concurrency(8)
            .poll_interval(Duration::from_millis(20))
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .handler("ok", move |ctx: StepContext| {
                count(&a1, &ctx);
                async { Ok(()) }
            })
            .handler("fail", move |ctx: StepContext| {
                count(&a2, &ctx);
                async move { Err(StepError::retryable(format!("attempt {} failed", ctx.attempt))) }
            })
            .handler("flaky", move |ctx: StepContext| {
                count(&a3, &ctx);
                async move {
                    if ctx.attempt == 1 {
                        Err(StepError::retryable("first attempt fails"))
                    } else {
                        Ok(())
                    }
                }
            })
            .start(&baton);

        // Every step completes.
        let all_ok = Workflow::new("all-ok")
            .step(Step::new("ok-root", "ok"))
            .step(Step::new("ok-left", "ok").depends_on(["ok-root"]))
            .step(Step::new("ok-right", "ok").depends_on(["ok-root"]))
            .step(Step::new("ok-join", "ok").depends_on(["ok-left", "ok-right"]));
        let all_ok = baton.insert_workflow(all_ok).await.unwrap();

        // `zeta` always fails (2 attempts): it is discarded, its dependents cancelled, its
        // independent sibling still completes. Names chosen so that sorting matters.
        let failing = Workflow::new("failing")
            .step(Step::new("zeta", "fail").max_attempts(2))
            .step(Step::new("mid", "ok").depends_on(["zeta"]))
            .step(Step::new("alpha", "ok").depends_on(["mid"]))
            .step(Step::new("beta", "ok").depends_on(["zeta", "sibling"]))
            .step(Step::new("sibling", "ok"));
        let failing = baton.insert_workflow(failing).await.unwrap();

        // `flaky` fails its first attempt and then succeeds.
        let recovering = Workflow::new("recovering")
            .step(Step::new("flaky", "flaky").max_attempts(3))
            .step(Step::new("after-flaky", "ok").depends_on(["flaky"]));
        let recovering = baton.insert_workflow(recovering).await.unwrap();

        let timeout = Duration::from_secs(20);
        let event = events.first_of(all_ok, timeout).await;
        assert_eq!(event.outcome, Outcome::Completed);
        assert!(event.failed_steps.is_empty());
        assert_eq!(event.counts.completed, 4);

        let event = events.first_of(failing, timeout).await;
        assert_eq!(event.outcome, Outcome::Failed);
        assert_eq!(event.failed_steps, ["alpha", "beta", "mid", "zeta"]);
        assert_eq!(event.counts.completed, 1);
        assert_eq!(event.counts.discarded, 1);
        assert_eq!(event.counts.cancelled, 3);
        let states = raw.steps(failing).await;
        let state_of = |name: &str| {
            let row = states.iter().find(|s| s.0 == name).unwrap();
            (row.1.as_str(), row.2)
        };
        assert_eq!(state_of("zeta"), ("discarded", 2));
        assert_eq!(state_of("mid"), ("cancelled", 0));
        assert_eq!(state_of("alpha"), ("cancelled", 0));
        assert_eq!(state_of("beta"), ("cancelled", 0));
        assert_eq!(state_of("sibling"), ("completed", 1));

        let event = events.first_of(recovering, timeout).await;
        assert_eq!(event.outcome, Outcome::Completed);
        assert!(event.failed_steps.is_empty(), "{:?}", event.failed_steps);
        assert_eq!(event.counts.completed, 2);
        let states = raw.steps(recovering).await;
        assert_eq!(states[1], ("flaky".to_string(), "completed".to_string(), 2));

        let attempts = attempts.lock().unwrap().clone();
        assert_eq!(attempts["zeta"], 2, "{attempts:?}");
        assert_eq!(attempts["flaky"], 2, "{attempts:?}");
        for never_ran in ["mid", "alpha", "beta"] {
            assert!(!attempts.contains_key(never_ran), "{never_ran} ran: {attempts:?}");
        }
        holds_for("one event per workflow", Duration::from_millis(400), || events.len() == 3).await;
        for id in [all_ok, failing, recovering] {
            assert_eq!(raw.completions(id).await, 1);
        }
        runner.shutdown().await;
        baton.shutdown().await;
    }
}
