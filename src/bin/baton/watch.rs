//! `baton watch`: append every announcement, whichever process claimed it, to a JSON-lines file.
//!
//! - PostgreSQL: a subscriber actor on a baton instance that only listens. Announcements of
//!   other processes reach it through `LISTEN` and, after every reconnection of the listener,
//!   through the catch-up from the completions table (notifications are hints). At start the
//!   completions table is read from `--from-seq` on, so nothing claimed before the watch started
//!   is missed; announcements seen both ways are written once.
//! - SQLite has no cross-process notification: the watch follows the completions table with
//!   [`Baton::follow`], whose cursor never passes over a claim that commits late.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use baton::{Baton, Cursor, Topic, WorkflowFinished, WorkflowId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::warn;

use crate::database::{DatabaseArgs, Schema};
use crate::failure::CliError;
use crate::recorder::write_event;

/// Announcements read per query.
const PAGE: u32 = 500;
/// Pause between polls once caught up (SQLite).
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

/// Watches until a signal; prints what it wrote.
pub(crate) async fn run(args: Args) -> Result<ExitCode, CliError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.events_out)
        .map_err(|e| CliError::new(format!("cannot open {}: {e}", args.events_out.display())))?;
    let listens = !args.db.url.starts_with("sqlite:");
    let builder = Baton::builder()
        .sweeper(false)
        .listen(listens)
        .max_connections(2);
    let baton = args.db.connect(builder, Schema::Existing).await?;
    let (sink, sink_task) = Actor::spawn(None, Sink, file)
        .await
        .map_err(|e| CliError::new(format!("cannot start the event writer: {e}")))?;
    println!(
        "watching {} from seq {} into {} ({}); stop with SIGTERM or SIGINT",
        args.db.shown(),
        args.from_seq,
        args.events_out.display(),
        if listens {
            "listening for announcements"
        } else {
            "following the completions table"
        }
    );
    let watched = async {
        if listens {
            // Subscribed before the backlog is read: whatever the backlog misses arrives live.
            baton.subscribe(sink.clone(), Topic::All).await?;
            follow(&baton, &sink, Cursor::after_seq(args.from_seq), false).await?;
            std::future::pending::<()>().await;
        }
        follow(&baton, &sink, Cursor::after_seq(args.from_seq), true).await
    };
    let result = tokio::select! {
        r = watched => r.map_err(|e| CliError::new(format!("reading announcements failed: {e}"))),
        _ = crate::signal::shutdown() => Ok(()),
    };
    baton.shutdown().await;
    let written = ractor::call_t!(sink, |reply| SinkMessage::Finish { reply }, 10_000)
        .map_err(|e| CliError::new(format!("the event writer did not finish: {e}")))?;
    sink.stop(None);
    let _ = sink_task.await;
    println!(
        "watch stopped: {} events written to {}; the last had seq {}",
        written.lines,
        args.events_out.display(),
        written.last_seq.max(args.from_seq)
    );
    result?;
    match written.error {
        Some(e) => Err(CliError::new(format!(
            "writing {} failed: {e}",
            args.events_out.display()
        ))),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Hands every announcement after `cursor` to `sink`. With `forever`, keeps polling for new ones;
/// otherwise returns once caught up. Transient database errors are retried with backoff.
async fn follow(
    baton: &Baton,
    sink: &ActorRef<SinkMessage>,
    mut cursor: Cursor,
    forever: bool,
) -> baton::Result<()> {
    let mut failures = 0u32;
    loop {
        let pause = match baton.follow(cursor, PAGE).await {
            Ok((events, next)) => {
                failures = 0;
                cursor = next;
                let full = events.len() as u32 == PAGE;
                for e in events {
                    let _ = sink.send_message(SinkMessage::Event(e));
                }
                match (full, forever) {
                    (true, _) => Duration::ZERO,
                    (false, true) => POLL,
                    (false, false) => return Ok(()),
                }
            }
            Err(e) if e.is_transient() => {
                failures += 1;
                let pause = POLL.saturating_mul(1 << failures.min(6)).min(MAX_BACKOFF);
                warn!(error = %e, retry_in = ?pause, "watch: reading completions failed; retrying");
                pause
            }
            Err(e) => return Err(e),
        };
        tokio::time::sleep(pause).await;
    }
}

/// Messages to the event writer.
enum SinkMessage {
    /// An announcement, live or from the completions table.
    Event(WorkflowFinished),
    /// Flush and report what was written.
    Finish { reply: RpcReplyPort<Written> },
}

impl From<WorkflowFinished> for SinkMessage {
    fn from(event: WorkflowFinished) -> Self {
        SinkMessage::Event(event)
    }
}

/// What the event writer did.
#[derive(Debug)]
struct Written {
    lines: u64,
    last_seq: i64,
    error: Option<String>,
}

/// Writes each workflow's announcement once, however many ways it arrived.
struct Sink;

struct SinkState {
    out: BufWriter<File>,
    seen: HashSet<WorkflowId>,
    written: Written,
}

impl Actor for Sink {
    type Msg = SinkMessage;
    type State = SinkState;
    type Arguments = File;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        file: File,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SinkState {
            out: BufWriter::new(file),
            seen: HashSet::new(),
            written: Written {
                lines: 0,
                last_seq: 0,
                error: None,
            },
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SinkMessage::Event(event) => {
                if !state.seen.insert(event.workflow_id) {
                    return Ok(());
                }
                match write_event(&mut state.out, &event) {
                    Ok(()) => {
                        state.written.lines += 1;
                        state.written.last_seq = state.written.last_seq.max(event.seq);
                    }
                    Err(e) => {
                        state.written.error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            SinkMessage::Finish { reply } => {
                if let Err(e) = state.out.flush() {
                    state.written.error.get_or_insert_with(|| e.to_string());
                }
                let _ = reply.send(Written {
                    error: state.written.error.take(),
                    ..state.written
                });
            }
        }
        Ok(())
    }
}
