//! `baton migrate`: apply baton's migrations (idempotent).

use std::process::ExitCode;

use baton::Baton;

use crate::database::{DatabaseArgs, Schema};
use crate::failure::CliError;

/// Arguments of `baton migrate`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    db: DatabaseArgs,
}

/// Applies the migrations and prints one line.
pub(crate) async fn run(args: Args) -> Result<ExitCode, CliError> {
    let builder = Baton::builder().sweeper(false).max_connections(1);
    let baton = args.db.connect(builder, Schema::Migrate).await?;
    println!(
        "baton schema is up to date on {} ({})",
        args.db.shown(),
        baton.backend()
    );
    baton.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
