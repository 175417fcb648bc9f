//! `baton status`: a workflow's steps by state and, once finished, its announcement.

use std::process::ExitCode;

use baton::{Baton, StepState, WorkflowId, WorkflowStatus};
use serde_json::json;

use crate::database::{DatabaseArgs, Schema};
use crate::failure::CliError;

/// Arguments of `baton status`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The workflow's id (a UUID).
    #[arg(value_name = "WORKFLOW_ID")]
    workflow: WorkflowId,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    db: DatabaseArgs,
}

/// Prints the workflow's status.
pub(crate) async fn run(args: Args) -> Result<ExitCode, CliError> {
    let builder = Baton::builder().sweeper(false).max_connections(1);
    let baton = args.db.connect(builder, Schema::Existing).await?;
    let status = baton.status(args.workflow).await;
    baton.shutdown().await;
    let status = status?;
    if args.json {
        println!("{}", as_json(&status));
    } else {
        print!("{}", as_text(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn count(status: &WorkflowStatus, state: StepState) -> u64 {
    status.counts.get(state.as_str()).copied().unwrap_or(0)
}

fn as_text(status: &WorkflowStatus) -> String {
    let total: u64 = status.counts.values().sum();
    let mut out = format!("workflow {} ({}): {total} steps\n", status.id, status.name);
    for state in StepState::ALL {
        out.push_str(&format!(
            "  {:<10} {}\n",
            state.as_str(),
            count(status, state)
        ));
    }
    match &status.finished {
        None => {
            let outstanding: u64 = StepState::ALL
                .into_iter()
                .filter(|s| !s.is_terminal())
                .map(|s| count(status, s))
                .sum();
            out.push_str(&format!(
                "not finished: {outstanding} of {total} steps outstanding\n"
            ));
        }
        Some(done) => {
            out.push_str(&format!("outcome:       {}\n", done.outcome.as_str()));
            let failed = if done.failed_steps.is_empty() {
                "none".to_owned()
            } else {
                done.failed_steps.join(", ")
            };
            out.push_str(&format!("failed steps:  {failed}\n"));
            out.push_str(&format!("detected by:   {}\n", done.detected_by.as_str()));
            out.push_str(&format!("node:          {}\n", done.node));
            out.push_str(&format!(
                "finished at:   {}\n",
                done.finished_at.to_rfc3339()
            ));
        }
    }
    out
}

fn as_json(status: &WorkflowStatus) -> serde_json::Value {
    json!({
        "workflow_id": status.id,
        "name": status.name,
        "counts": status.counts,
        "finished": status.finished,
    })
}
