//! `baton demo`: run demo workflows end to end on one node and verify that every workflow was
//! announced exactly once.
//!
//! The demo migrates the database, subscribes a [`Recorder`] actor to every workflow *before*
//! inserting anything, inserts the workflows (see [`workload`]) while a runner
//! executes them, waits until every one has been announced, then waits two more sweep intervals
//! so that a late duplicate would be caught. It then checks the announcements against the
//! completions table and the steps, and prints a summary. Detection latency comes from the
//! `baton_detection_latency_seconds` summary rendered by the Prometheus recorder.

// A file loaded through `#[path]` resolves its own modules like a `mod.rs` would.
#[path = "demo/verify.rs"]
mod verify;

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::{Baton, Topic, Workflow, WorkflowId};
use metrics_exporter_prometheus::PrometheusHandle;
use ractor::{Actor, ActorRef};
use tokio::sync::watch;

use crate::database::{DatabaseArgs, Schema};
use crate::failure::CliError;
use crate::latency;
use crate::recorder::{Recorder, RecorderArgs, RecorderMessage, Recording, create_events_file};
use crate::workload::{self, HandlerStats, MAX_ATTEMPTS, Shape};

use verify::Report;

/// How often the demo's sweeper runs; the demo waits two of these for duplicates.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Arguments of `baton demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Workflows to run.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 50,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    workflows: u32,
    /// Steps per workflow: a root, M-2 parallel steps, and a join.
    #[arg(
        long,
        value_name = "M",
        default_value_t = 10,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    steps: u32,
    /// Probability (0..=1) that an attempt fails; a step gets 3 attempts.
    #[arg(
        long,
        value_name = "P",
        default_value = "0.1",
        allow_negative_numbers = true,
        value_parser = workload::probability
    )]
    fail_rate: f64,
    /// How long each attempt works, in milliseconds.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u64).range(0..=3_600_000)
    )]
    step_ms: u64,
    /// Write every announcement to FILE, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    events_out: Option<PathBuf>,
    /// Steps run at once.
    #[arg(
        long,
        value_name = "C",
        default_value_t = 16,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u32).range(1..=1024)
    )]
    concurrency: u32,
    /// Give up when no workflow has been announced for this many seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    stall_timeout: u64,
}

impl Args {
    fn shape(&self) -> Shape {
        Shape {
            steps: self.steps,
            fail_rate: self.fail_rate,
            step_ms: self.step_ms,
        }
    }
}

/// When things happened, from the start of the run.
#[derive(Debug)]
struct Timing {
    /// Every workflow inserted.
    inserted: Duration,
    /// The last demo workflow announced (or the wait given up).
    announced: Duration,
    /// Whether the wait was given up.
    stalled: bool,
}

/// Runs the demo; exits 0 only when every check passed.
pub(crate) async fn run(args: Args) -> Result<ExitCode, CliError> {
    workload::check_size(args.workflows, args.steps)?;
    let metrics = latency::install()?;
    let out = args
        .events_out
        .as_ref()
        .map(create_events_file)
        .transpose()?;
    let builder = Baton::builder()
        .sweep_interval(SWEEP_INTERVAL)
        .max_connections(workload::pool_size(args.concurrency));
    let baton = args.db.connect(builder, Schema::MigrateInMemoryOk).await?;
    let result = drive(&args, &baton, out, &metrics).await;
    baton.shutdown().await;
    result
}

async fn drive(
    args: &Args,
    baton: &Baton,
    out: Option<File>,
    metrics: &PrometheusHandle,
) -> Result<ExitCode, CliError> {
    let shape = args.shape();
    let workflows = workload::workflows(shape, args.workflows);
    let ids: Vec<WorkflowId> = workflows.iter().map(Workflow::id).collect();
    let (announced_tx, announced_rx) = watch::channel(0usize);
    let (recorder, recorder_task) = Actor::spawn(
        None,
        Recorder,
        RecorderArgs {
            out,
            expected: ids.iter().copied().collect(),
            announced: announced_tx,
        },
    )
    .await
    .map_err(|e| CliError::new(format!("starting the subscriber actor: {e}")))?;
    // Subscribed before anything is inserted, so no announcement can be missed.
    baton.subscribe(recorder.clone(), Topic::All).await?;

    let stats = Arc::new(HandlerStats::default());
    let started = Instant::now();
    let runner = workload::runner(args.concurrency as usize, stats.clone()).start(baton);
    let timing = run_and_wait(args, baton, workflows, announced_rx, started).await;
    runner.shutdown().await;
    if timing.as_ref().is_ok_and(|t| t.stalled) {
        // Steps that finished during the shutdown may still be claimed: let that settle first.
        tokio::time::sleep(SWEEP_INTERVAL).await;
    }
    let recording = finish(&recorder).await;
    recorder.stop(None);
    let _ = recorder_task.await;
    let (timing, recording) = (timing?, recording?);
    let total = started.elapsed();

    let mut report = verify::verify(baton, shape, &ids, &recording).await?;
    if timing.stalled {
        report.problem_count += 1;
        report.problems.insert(
            0,
            format!(
                "gave up after {} s without a new announcement",
                args.stall_timeout
            ),
        );
    }
    print_summary(
        args, baton, &report, &timing, total, &stats, &recording, metrics,
    );
    if report.problem_count == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError::check_failed(format!(
            "{} check(s) failed: {}",
            report.problem_count,
            report.problems.first().map(String::as_str).unwrap_or("")
        )))
    }
}

/// Inserts the workflows, waits until every one was announced (or nothing happened for the
/// stall timeout), then waits two sweep intervals more so that a duplicate would show.
async fn run_and_wait(
    args: &Args,
    baton: &Baton,
    workflows: Vec<Workflow>,
    mut announced: watch::Receiver<usize>,
    started: Instant,
) -> Result<Timing, CliError> {
    let interrupted = |name: &str| CliError::new(format!("interrupted by {name}"));
    let signal = crate::signal::shutdown();
    tokio::pin!(signal);
    let expected = workflows.len();
    tokio::select! {
        inserted = workload::insert(baton, workflows) => { inserted?; }
        name = &mut signal => return Err(interrupted(name)),
    }
    let inserted = started.elapsed();
    let stall = Duration::from_secs(args.stall_timeout);
    let mut last_progress = tokio::time::Instant::now();
    let mut seen = 0;
    let stalled = loop {
        let now_seen = *announced.borrow_and_update();
        if now_seen >= expected {
            break false;
        }
        if now_seen > seen {
            seen = now_seen;
            last_progress = tokio::time::Instant::now();
        }
        tokio::select! {
            changed = announced.changed() => if changed.is_err() { break true },
            _ = tokio::time::sleep_until(last_progress + stall) => break true,
            name = &mut signal => return Err(interrupted(name)),
        }
    };
    let announced_at = started.elapsed();
    tokio::select! {
        _ = tokio::time::sleep(SWEEP_INTERVAL * 2 + Duration::from_millis(250)) => {}
        name = &mut signal => return Err(interrupted(name)),
    }
    Ok(Timing {
        inserted,
        announced: announced_at,
        stalled,
    })
}

/// Flushes the events file and collects every announcement the subscriber received.
async fn finish(recorder: &ActorRef<RecorderMessage>) -> Result<Recording, CliError> {
    ractor::call_t!(recorder, |reply| RecorderMessage::Finish { reply }, 30_000)
        .map_err(|e| CliError::new(format!("collecting the subscriber's events: {e}")))
}

#[allow(clippy::too_many_arguments)]
fn print_summary(
    args: &Args,
    baton: &Baton,
    report: &Report,
    timing: &Timing,
    total: Duration,
    stats: &HandlerStats,
    recording: &Recording,
    metrics: &PrometheusHandle,
) {
    let n = args.workflows as usize;
    let steps = u64::from(args.workflows) * u64::from(args.steps);
    let (attempts, failures) = stats.read();
    let run_secs = timing.announced.as_secs_f64().max(1e-9);
    println!(
        "baton demo on {} ({}), node {}",
        args.db.shown(),
        baton.backend(),
        baton.node()
    );
    println!(
        "  workflows      {n} × {} steps (fail rate {}, {} ms per attempt, {MAX_ATTEMPTS} attempts max)",
        args.steps, args.fail_rate, args.step_ms
    );
    println!(
        "  outcomes       {} completed, {} failed",
        report.completed, report.failed
    );
    println!(
        "  announcements  {} ({} prompt, {} sweep); duplicates {}, missing {}",
        report.announcements, report.by_prompt, report.by_sweep, report.duplicates, report.missing
    );
    println!(
        "  completions    {} rows for {n} workflows",
        report.completion_rows
    );
    if report.foreign > 0 {
        println!(
            "  also announced {} workflows left over from earlier runs on this database",
            report.foreign
        );
    }
    if let Some(path) = &args.events_out {
        println!(
            "  events file    {} ({} lines)",
            path.display(),
            recording.lines_written
        );
    }
    println!("  attempts       {attempts} ({failures} failed on purpose)");
    let series = latency::summary(&metrics.render(), baton::metrics::DETECTION_LATENCY);
    if series.is_empty() {
        println!("  latency        n/a (no samples)");
    }
    for (labels, s) in &series {
        println!(
            "  latency        p50 {}, p99 {}, max {} ({labels}, {} samples)",
            latency::ms(s.quantile("0.5")),
            latency::ms(s.quantile("0.99")),
            latency::ms(s.quantile("1")),
            s.count
        );
    }
    println!(
        "  wall time      {:.2} s to the last announcement (inserts done at {:.2} s; {:.2} s in all)",
        timing.announced.as_secs_f64(),
        timing.inserted.as_secs_f64(),
        total.as_secs_f64()
    );
    println!(
        "  throughput     {:.0} steps/s ({:.0} attempts/s)",
        steps as f64 / run_secs,
        attempts as f64 / run_secs
    );
    if report.problem_count == 0 {
        println!(
            "  checks         passed: every workflow announced exactly once, events agree with the steps"
        );
    } else {
        println!(
            "  checks         FAILED ({} problems):",
            report.problem_count
        );
        for p in &report.problems {
            println!("    - {p}");
        }
        if report.problem_count > report.problems.len() {
            println!(
                "    - … and {} more",
                report.problem_count - report.problems.len()
            );
        }
    }
}
