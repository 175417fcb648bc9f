//! Embedding baton in a process: connect, register handlers, run the runner, subscribe an
//! actor, insert a workflow, and hear that it finished, exactly once.
//!
//! ```text
//! cargo run --example embed
//! ```

use std::time::Duration;

use baton::{Baton, Runner, Step, StepContext, Topic, Workflow, WorkflowFinished};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use tokio::sync::mpsc;

/// A subscriber: any actor whose message type can be built from a `WorkflowFinished`.
struct Announcer;

/// The announcer's message: a workflow finished.
struct Finished(WorkflowFinished);

impl From<WorkflowFinished> for Finished {
    fn from(event: WorkflowFinished) -> Self {
        Finished(event)
    }
}

impl Actor for Announcer {
    type Msg = Finished;
    type State = mpsc::UnboundedSender<WorkflowFinished>;
    type Arguments = mpsc::UnboundedSender<WorkflowFinished>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Finished>,
        events: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(events)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Finished>,
        Finished(event): Finished,
        events: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        println!(
            "workflow {:?} {}: {} (failed steps: {:?}, detected by {})",
            event.name,
            event.workflow_id,
            event.outcome.as_str(),
            event.failed_steps,
            event.detected_by.as_str()
        );
        let _ = events.send(event);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // 1. Connect. SQLite needs no server: a file, created if missing. `migrate(true)` creates
    //    baton's tables (in their own migration ledger, beside any of the host's).
    let path = std::env::temp_dir().join(format!("baton-embed-{}.db", std::process::id()));
    let baton = Baton::builder()
        .database_url(format!("sqlite:{}", path.display()))
        .migrate(true)
        .connect()
        .await?;

    // 2. Subscribe before inserting, so no announcement can be missed.
    let (tx, mut events) = mpsc::unbounded_channel();
    let (announcer, announcer_task) = Actor::spawn(None, Announcer, tx).await?;
    baton.subscribe(announcer.clone(), Topic::All).await?;

    // 3. Register a handler per step kind and start the runner. Errors are retried with
    //    backoff (`StepError::permanent` skips the retries); a panic is a failed attempt.
    let runner = Runner::builder()
        .concurrency(4)
        .handler("work", |ctx: StepContext| async move {
            println!("  running {} with {}", ctx.name, ctx.args);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        })
        .start(&baton);

    // 4. Insert a workflow: fetch, then two resizes in parallel, then publish after both.
    //    The workflow and all its steps are written in one transaction.
    let workflow = Workflow::new("thumbnails")
        .step(Step::new("fetch", "work").args(json!({ "url": "https://example.com/a.png" })))
        .step(
            Step::new("small", "work")
                .args(json!({ "px": 64 }))
                .depends_on(["fetch"]),
        )
        .step(
            Step::new("large", "work")
                .args(json!({ "px": 512 }))
                .depends_on(["fetch"]),
        )
        .step(Step::new("publish", "work").depends_on(["small", "large"]));
    let id = baton.insert_workflow(workflow).await?;

    // 5. The actor hears `WorkflowFinished` once, when the last step is done.
    let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await?
        .expect("the announcer is running");
    assert_eq!(event.workflow_id, id);

    // 6. Shut down: the runner finishes in-flight steps, then baton stops its actors.
    runner.shutdown().await;
    baton.shutdown().await;
    announcer.stop(None);
    announcer_task.await?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(())
}
