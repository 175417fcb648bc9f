//! `baton enqueue`: insert demo-shaped workflows for `baton worker` processes to run.

use std::process::ExitCode;

use baton::Baton;

use crate::database::{DatabaseArgs, Schema};
use crate::failure::CliError;
use crate::workload::{self, Shape};

/// Arguments of `baton enqueue`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Workflows to insert.
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    workflows: u32,
    /// Steps per workflow: a root, M-2 parallel steps, and a join.
    #[arg(
        long,
        value_name = "M",
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    steps: u32,
    /// Probability (0..=1) that an attempt fails; travels with each step.
    #[arg(
        long,
        value_name = "P",
        default_value = "0.1",
        allow_negative_numbers = true,
        value_parser = workload::probability
    )]
    fail_rate: f64,
    /// How long each attempt works, in milliseconds; travels with each step.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u64).range(0..=3_600_000)
    )]
    step_ms: u64,
    /// Also print every inserted workflow id, one per line.
    #[arg(long)]
    print_ids: bool,
}

/// Inserts the workflows and prints how many.
pub(crate) async fn run(args: Args) -> Result<ExitCode, CliError> {
    workload::check_size(args.workflows, args.steps)?;
    let builder = Baton::builder().sweeper(false).max_connections(8);
    let baton = args.db.connect(builder, Schema::Existing).await?;
    let shape = Shape {
        steps: args.steps,
        fail_rate: args.fail_rate,
        step_ms: args.step_ms,
    };
    let inserted = workload::insert(&baton, workload::workflows(shape, args.workflows)).await;
    baton.shutdown().await;
    let ids = inserted?;
    if args.print_ids {
        for id in &ids {
            println!("{id}");
        }
    }
    println!(
        "enqueued {} workflows of {} steps (fail rate {}, {} ms per attempt) into {}",
        ids.len(),
        args.steps,
        args.fail_rate,
        args.step_ms,
        args.db.shown()
    );
    Ok(ExitCode::SUCCESS)
}
