//! Retention: `prune` deletes announced workflows older than its horizon — steps, dependency
//! edges, then the claim row — in bounded batches, and never touches a workflow that is running,
//! or settled but not yet announced, however old.

use std::time::Duration;

use baton::{Announcement, Step, Workflow, WorkflowId};

use crate::support::{Raw, Table, both_backends};

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// A two-step chain (so it has a dependency edge).
fn chain(name: &str) -> Workflow {
    Workflow::new(name)
        .step(Step::new("a", "nobody"))
        .step(Step::new("b", "nobody").depends_on(["a"]))
}

/// Completes every step behind baton's back and announces the workflow.
async fn announce(baton: &baton::Baton, raw: &Raw, id: WorkflowId) {
    raw.set_all_states(id, "completed").await;
    assert!(matches!(
        baton.announce(id).await.unwrap(),
        Announcement::Finished(_)
    ));
}

both_backends! {
    async fn prune_deletes_only_old_announced_workflows(db: TestDb) {
        // No sweeper: a settled workflow stays unannounced until the test announces it.
        let baton = db.builder().sweeper(false).connect().await.unwrap();
        let raw = db.raw().await;
        let mut old_announced = Vec::new();
        for i in 0..5 {
            let id = baton.insert_workflow(chain(&format!("old-{i}"))).await.unwrap();
            announce(&baton, &raw, id).await;
            raw.age(id).await;
            old_announced.push(id);
        }
        let recent = baton.insert_workflow(chain("recent")).await.unwrap();
        announce(&baton, &raw, recent).await;
        let running = baton.insert_workflow(chain("running")).await.unwrap();
        raw.age(running).await;
        let settled = baton.insert_workflow(chain("settled-unannounced")).await.unwrap();
        raw.set_all_states(settled, "discarded").await;
        raw.age(settled).await;
        let (workflows, steps) = (raw.count(Table::Workflows).await, raw.count(Table::Steps).await);
        assert_eq!((workflows, steps), (8, 16));

        // Batches of two: three rounds for five workflows, each bounded.
        assert_eq!(baton.prune(WEEK, 2).await.unwrap(), 5);
        assert_eq!(raw.count(Table::Workflows).await, 3);
        assert_eq!(raw.count(Table::Steps).await, 6);
        assert_eq!(raw.count(Table::StepDeps).await, 3);
        assert_eq!(raw.count(Table::Completions).await, 1);
        for id in &old_announced {
            assert!(matches!(baton.status(*id).await, Err(baton::Error::WorkflowNotFound(_))));
            assert_eq!(raw.completions(*id).await, 0);
        }
        assert!(baton.status(recent).await.unwrap().finished.is_some());
        // Nothing left to prune: a second pass is a no-op.
        assert_eq!(baton.prune(WEEK, 2).await.unwrap(), 0);

        // The old unannounced workflows are whole and still finish normally.
        let status = baton.status(running).await.unwrap();
        assert_eq!(status.counts.get("available"), Some(&1));
        assert_eq!(status.counts.get("scheduled"), Some(&1));
        let announced = baton.announce(settled).await.unwrap();
        let event = announced.finished().expect("the settled workflow is announced");
        assert_eq!(event.failed_steps, ["a", "b"]);
        announce(&baton, &raw, running).await;
        baton.shutdown().await;
    }
}
