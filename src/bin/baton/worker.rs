//! `baton worker`: run demo steps, workflow supervisors and the sweeper until SIGTERM/SIGINT.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use baton::Baton;

use crate::database::{DatabaseArgs, Schema};
use crate::failure::CliError;
use crate::workload::{self, HandlerStats};

/// Arguments of `baton worker`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Steps run at once.
    #[arg(
        long,
        value_name = "C",
        default_value_t = 8,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..=1024)
    )]
    concurrency: u32,
    /// This node's lease on the steps it runs, in milliseconds: renewed every third of it; when
    /// it lapses (the process died), other workers take the steps back. Use one value for all.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(300..=86_400_000)
    )]
    lease_ms: u64,
    /// How often this worker's sweeper looks for settled, unannounced workflows and lost steps.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 1_000,
        value_parser = clap::value_parser!(u64).range(10..=3_600_000)
    )]
    sweep_ms: u64,
}

/// Runs until a signal, then stops gracefully: stop fetching, let in-flight steps finish and
/// report, stop the sweeper and supervisors. A second signal exits at once.
pub(crate) async fn run(args: Args) -> Result<ExitCode, CliError> {
    let builder = Baton::builder()
        .max_connections(workload::pool_size(args.concurrency))
        .lease(Duration::from_millis(args.lease_ms))
        .sweep_interval(Duration::from_millis(args.sweep_ms));
    let baton = args.db.connect(builder, Schema::Existing).await?;
    let stats = Arc::new(HandlerStats::default());
    let runner = workload::runner(args.concurrency as usize, stats.clone()).start(&baton);
    println!(
        "worker {} running demo steps on {} (concurrency {}); stop with SIGTERM or SIGINT",
        baton.node(),
        args.db.shown(),
        args.concurrency
    );
    let signal = crate::signal::shutdown().await;
    println!(
        "worker {}: {signal} received, finishing in-flight steps (signal again to exit at once)",
        baton.node()
    );
    let graceful = async {
        runner.shutdown().await;
        baton.shutdown().await;
    };
    tokio::select! {
        () = graceful => {}
        again = crate::signal::shutdown() => {
            return Err(CliError::new(format!(
                "{again} received again: exiting without waiting for in-flight steps; \
                 they will be rescued once this worker's lease expires"
            )));
        }
    }
    let (attempts, failures) = stats.read();
    let claims = baton.stats().claims_won;
    println!(
        "worker {} stopped: {attempts} attempts ({failures} failed on purpose), {claims} workflows announced by this worker",
        baton.node()
    );
    Ok(ExitCode::SUCCESS)
}
