//! `baton watch`: follow the completions table and append every announcement, whichever process
//! claimed it, to a JSON-lines file.
//!
//! Following the table (rather than subscribing) sees announcements from every process on both
//! backends, SQLite included, and resumes where it stopped with `--from-seq`. It uses
//! [`Baton::follow`], whose cursor never passes over a claim that commits late (on PostgreSQL,
//! claims can commit out of `seq` order).

use std::fs::OpenOptions;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use baton::{Baton, Cursor};
use tracing::warn;

use crate::database::{DatabaseArgs, Schema};
use crate::failure::CliError;
use crate::recorder::write_event;

/// Announcements read per query.
const PAGE: u32 = 500;
/// Pause between polls once caught up.
const POLL: Duration = Duration::from_millis(100);
/// Longest pause after repeated database errors.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Arguments of `baton watch`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    db: DatabaseArgs,
    /// File to append events to, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    events_out: PathBuf,
    /// Only announcements whose seq is above N (0: from the beginning).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i64).range(0..)
    )]
    from_seq: i64,
}

/// Follows announcements until a signal; prints where it stopped.
pub(crate) async fn run(args: Args) -> Result<ExitCode, CliError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.events_out)
        .map_err(|e| CliError::new(format!("cannot open {}: {e}", args.events_out.display())))?;
    let mut out = BufWriter::new(file);
    let builder = Baton::builder()
        .sweeper(false)
        .listen(false)
        .max_connections(2);
    let baton = args.db.connect(builder, Schema::Existing).await?;
    println!(
        "watching {} from seq {} into {}; stop with SIGTERM or SIGINT",
        args.db.shown(),
        args.from_seq,
        args.events_out.display()
    );
    let signal = crate::signal::shutdown();
    tokio::pin!(signal);
    let mut cursor = Cursor::after_seq(args.from_seq);
    let mut last_seq = args.from_seq;
    let mut written = 0u64;
    let mut failures = 0u32;
    let result = loop {
        let page = tokio::select! {
            page = baton.follow(cursor, PAGE) => page,
            _ = &mut signal => break Ok(()),
        };
        let pause = match page {
            Ok((events, next)) => {
                failures = 0;
                cursor = next;
                let full = events.len() as u32 == PAGE;
                if let Err(e) = events.iter().try_for_each(|e| {
                    write_event(&mut out, e)?;
                    written += 1;
                    last_seq = last_seq.max(e.seq);
                    Ok::<_, std::io::Error>(())
                }) {
                    break Err(CliError::new(format!(
                        "writing {} failed: {e}",
                        args.events_out.display()
                    )));
                }
                if full { Duration::ZERO } else { POLL }
            }
            Err(e) if e.is_transient() => {
                failures += 1;
                let pause = POLL.saturating_mul(1 << failures.min(6)).min(MAX_BACKOFF);
                warn!(error = %e, retry_in = ?pause, "watch: reading completions failed; retrying");
                pause
            }
            Err(e) => break Err(CliError::new(format!("reading completions failed: {e}"))),
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut signal => break Ok(()),
        }
    };
    baton.shutdown().await;
    println!(
        "watch stopped: {written} events written to {}; the last had seq {last_seq}",
        args.events_out.display()
    );
    result.map(|()| ExitCode::SUCCESS)
}
