//! Dynamic fan-out: an executing step adds steps to its own workflow. They commit atomically
//! with that step's completion, so the workflow never looks settled in between, and it is
//! announced once, after the last added step.

use std::time::Duration;

use baton::{Outcome, Runner, Step, StepContext, StepCounts, Topic, Workflow};
use tokio::sync::watch;

use crate::support::{Table, both_backends, holds_for, poll_until, subscribe, wait_sweeps};

const CHILDREN: usize = 1_000;

both_backends! {
    /// A parent adds 1,000 children (held at a gate) and a join step depending on all of them.
    /// While the children wait, the parent is completed and the workflow stays unannounced
    /// through several sweeps; once they run, one event, after the last of them.
    async fn a_step_adding_a_thousand_children_announces_once_after_the_last(db: TestDb) {
        let baton = db.baton().await;
        let raw = db.raw().await;
        let events = subscribe(&baton, Topic::All).await;
        let (release, gate) = watch::channel(false);
        let runner = Runner::builder()
            .concurrency(32)
            .handler("parent", |ctx: StepContext| async move {
                for i in 0..CHILDREN {
                    ctx.add_step(Step::new(format!("child-{i:04}"), "child"));
                }
                ctx.add_step(
                    Step::new("join", "join")
                        .depends_on((0..CHILDREN).map(|i| format!("child-{i:04}"))),
                );
                Ok(())
            })
            .handler("child", move |_ctx: StepContext| {
                let mut gate = gate.clone();
                async move {
                    let _ = gate.wait_for(|go| *go).await;
                    Ok(())
                }
            })
            .handler("join", |_ctx: StepContext| async { Ok(()) })
            .start(&baton);
        let id = baton
            .insert_workflow(Workflow::new("fan-out").step(Step::new("parent", "parent")))
            .await
            .unwrap();

        // Every read that shows the parent completed also shows all its children: one commit.
        poll_until("the parent completed", Duration::from_secs(20), || async {
            let steps = raw.steps(id).await;
            let parent_done = steps.iter().any(|(n, s, _)| n == "parent" && s == "completed");
            if parent_done {
                assert_eq!(steps.len(), CHILDREN + 2, "the parent completed without its children");
            } else {
                assert_eq!(steps.len(), 1, "children visible before the parent completed");
            }
            parent_done
        })
        .await;
        wait_sweeps(&baton, 3, Duration::from_secs(10)).await;
        assert_eq!(events.len(), 0, "announced while 1,001 added steps were outstanding");
        assert_eq!(raw.completions(id).await, 0);

        release.send(true).unwrap();
        let event = events.first_of(id, Duration::from_secs(60)).await;
        assert_eq!(event.outcome, Outcome::Completed);
        assert_eq!(
            event.counts,
            StepCounts { completed: CHILDREN as u64 + 2, discarded: 0, cancelled: 0 }
        );
        raw.assert_agrees_with_steps(&event).await;
        assert_eq!(raw.count(Table::StepDeps).await, CHILDREN as i64);
        wait_sweeps(&baton, 3, Duration::from_secs(10)).await;
        holds_for("one event", Duration::from_millis(200), || events.len() == 1).await;
        assert_eq!(raw.completions(id).await, 1);
        runner.shutdown().await;
        baton.shutdown().await;
    }
}
