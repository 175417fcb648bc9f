//! The smallest workflows: zero steps and one step, each announced exactly once, also to
//! subscribers that registered before the workflow existed.

use std::time::Duration;

use baton::{Outcome, Runner, Step, StepContext, Topic, Workflow};

use crate::support::{both_backends, holds_for, subscribe, wait_sweeps};

both_backends! {
    async fn zero_and_one_step_workflows_announce_once(db: TestDb) {
        let baton = db.baton().await;
        let raw = db.raw().await;
        let zero = Workflow::new("zero");
        let one = Workflow::new("one").step(Step::new("only", "noop"));
        let (zero_id, one_id) = (zero.id(), one.id());
        // Every topic, subscribed before the inserts.
        let all = subscribe(&baton, Topic::All).await;
        let by_name = subscribe(&baton, Topic::Name("zero".into())).await;
        let by_id = subscribe(&baton, Topic::Workflow(one_id)).await;

        assert_eq!(baton.insert_workflow(zero).await.unwrap(), zero_id);
        let event = all.first_of(zero_id, Duration::from_secs(5)).await;
        assert_eq!(event.outcome, Outcome::Completed);
        assert_eq!(event.counts.total(), 0);
        assert!(event.failed_steps.is_empty());
        // `insert_workflow` announces it itself, unless a sweep landed between its commit and
        // that claim: then the sweep did, once all the same.
        assert_eq!(event.node, *baton.node());
        assert_eq!(by_name.first_of(zero_id, Duration::from_secs(5)).await, event);
        // Read back from the database: the same event, field for field.
        let waited = baton.wait_finished(zero_id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(waited, event);

        let runner = Runner::builder()
            .handler("noop", |_ctx: StepContext| async { Ok(()) })
            .start(&baton);
        assert_eq!(baton.insert_workflow(one).await.unwrap(), one_id);
        let event = all.first_of(one_id, Duration::from_secs(10)).await;
        assert_eq!(event.outcome, Outcome::Completed);
        assert_eq!(event.counts.completed, 1);
        assert_eq!(event.name, "one");
        assert_eq!(by_id.first_of(one_id, Duration::from_secs(5)).await, event);
        let waited = baton.wait_finished(one_id, Duration::from_secs(5)).await.unwrap();
        assert_eq!(waited, event);

        wait_sweeps(&baton, 3, Duration::from_secs(10)).await;
        holds_for("one event per workflow", Duration::from_millis(200), || {
            all.len() == 2 && by_name.len() == 1 && by_id.len() == 1
        })
        .await;
        assert_eq!(raw.completions(zero_id).await, 1);
        assert_eq!(raw.completions(one_id).await, 1);
        runner.shutdown().await;
        baton.shutdown().await;
    }
}
