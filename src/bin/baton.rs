//! `baton`: the command-line companion of the baton library.
//!
//! ```text
//! baton migrate  [--database-url URL]                  apply baton's migrations (idempotent)
//! baton status   WORKFLOW_ID [--database-url URL]      counts by state; the outcome once finished
//! baton demo     [--database-url URL] [--workflows N] [--steps M] [--fail-rate P]
//!                [--events-out FILE] [--concurrency C] run demo workflows end to end and verify
//!                                                      that each was announced exactly once
//! baton enqueue  --workflows N --steps M [--fail-rate P] [--step-ms MS]
//!                                                      insert demo workflows for `baton worker`s
//! baton worker   [--concurrency C] [--lease-ms MS] [--sweep-ms MS]
//!                                                      run steps (and the sweep) until SIGTERM/SIGINT
//! baton watch    --events-out FILE [--from-seq N]      follow announcements into a JSON-lines file
//! baton cancel   WORKFLOW_ID                           cancel a workflow's remaining steps
//! baton prune    --older-than DURATION                 delete announced workflows older than that
//! ```
//!
//! The database comes from `--database-url`, else the `DATABASE_URL` environment variable, else
//! `sqlite:baton-demo.db` in the current directory. Only `baton migrate` and `baton demo` apply
//! migrations; the other commands ask for `baton migrate` on a database without them.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `warn`; `demo` and `worker` also hide the
//! runner's warning for each step discarded, since their steps fail on purpose). Every error is
//! one line on stderr starting with `error:`; passwords in database URLs are never printed.
//!
//! Exit codes: `0` success, `1` an error, `2` invalid command-line arguments, `3` `baton demo`
//! ran but a check failed (an announcement missing, doubled, or disagreeing with the steps).

// The crate root is src/bin/baton.rs, so its modules would default to src/bin/; they live in
// src/bin/baton/ beside it instead.
#[path = "baton/cancel.rs"]
mod cancel;
#[path = "baton/database.rs"]
mod database;
#[path = "baton/demo.rs"]
mod demo;
#[path = "baton/enqueue.rs"]
mod enqueue;
#[path = "baton/failure.rs"]
mod failure;
#[path = "baton/latency.rs"]
mod latency;
#[path = "baton/migrate.rs"]
mod migrate;
#[path = "baton/prune.rs"]
mod prune;
#[path = "baton/recorder.rs"]
mod recorder;
#[path = "baton/signal.rs"]
mod signal;
#[path = "baton/status.rs"]
mod status;
#[path = "baton/watch.rs"]
mod watch;
#[path = "baton/worker.rs"]
mod worker;
#[path = "baton/workload.rs"]
mod workload;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::failure::{CliError, EXIT_USAGE};

/// Exactly-once "workflow finished" notifications on SQLite and PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply baton's migrations to the database (idempotent).
    Migrate(migrate::Args),
    /// Show a workflow's steps by state and, once finished, its outcome.
    Status(status::Args),
    /// Run demo workflows end to end and verify every one is announced exactly once.
    Demo(demo::Args),
    /// Insert demo-shaped workflows for `baton worker` processes to run.
    Enqueue(enqueue::Args),
    /// Run steps, workflow supervisors and the sweeper until SIGTERM or SIGINT.
    Worker(worker::Args),
    /// Follow announcements (from every process) into a JSON-lines file until SIGTERM or SIGINT.
    Watch(watch::Args),
    /// Cancel a workflow: waiting steps now, executing ones cooperatively; announced `failed`.
    Cancel(cancel::Args),
    /// Delete announced workflows older than a given age (never running or unannounced ones).
    Prune(prune::Args),
}

impl Command {
    /// The log filter when `RUST_LOG` is not set. The demo workload fails steps on purpose, so
    /// the runner's warning for each discarded step is noise in `demo` and `worker`.
    fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Demo(_) | Command::Worker(_) => "warn,baton::runner::worker=error",
            _ => "warn",
        }
    }

    async fn run(self) -> Result<ExitCode, CliError> {
        match self {
            Command::Migrate(args) => migrate::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Enqueue(args) => enqueue::run(args).await,
            Command::Worker(args) => worker::run(args).await,
            Command::Watch(args) => watch::run(args).await,
            Command::Cancel(args) => cancel::run(args).await,
            Command::Prune(args) => prune::run(args).await,
        }
    }
}

fn main() -> ExitCode {
    failure::install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_tracing(cli.command.default_log_filter());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return CliError::new(format!("cannot start the async runtime: {e}")).report(),
    };
    let code = match runtime.block_on(cli.command.run()) {
        Ok(code) => code,
        Err(e) => e.report(),
    };
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}

/// Logs on stderr, filtered by `RUST_LOG` (else `default`; an unparsable `RUST_LOG` also means
/// `default`), in color only on a terminal and without `NO_COLOR`.
fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .init();
}

/// Prints help and version as clap does; turns every usage error into one `error: …` line.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::from(if err.use_stderr() { EXIT_USAGE } else { 0 })
        }
        _ => {
            eprintln!(
                "{}",
                failure::one_line_usage_error(&err.render().to_string())
            );
            ExitCode::from(EXIT_USAGE)
        }
    }
}
