//! `baton cancel`: cancel a workflow's remaining steps.

use std::process::ExitCode;

use baton::{Baton, WorkflowId};

use crate::database::{DatabaseArgs, Schema};
use crate::failure::CliError;

/// Arguments of `baton cancel`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The workflow's id (a UUID).
    #[arg(value_name = "WORKFLOW_ID")]
    workflow: WorkflowId,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// Cancels waiting steps now and asks executing ones to stop; the workflow is then announced
/// `failed` once (by the worker that ran its last step, or by a sweep).
pub(crate) async fn run(args: Args) -> Result<ExitCode, CliError> {
    let builder = Baton::builder()
        .sweeper(false)
        .listen(false)
        .max_connections(2);
    let baton = args.db.connect(builder, Schema::Existing).await?;
    let outcome = baton.cancel_workflow(args.workflow).await;
    // The announcement itself is made here when nothing was executing: let it go out.
    if matches!(outcome, Ok(o) if o.stopping == 0 && !o.already_finished) {
        let _ = baton
            .wait_finished(args.workflow, std::time::Duration::from_secs(5))
            .await;
    }
    baton.shutdown().await;
    let outcome = outcome?;
    if outcome.already_finished {
        println!(
            "workflow {} had already finished: nothing to cancel",
            args.workflow
        );
    } else {
        println!(
            "workflow {}: {} waiting steps cancelled, {} executing steps asked to stop",
            args.workflow, outcome.cancelled, outcome.stopping
        );
    }
    Ok(ExitCode::SUCCESS)
}
