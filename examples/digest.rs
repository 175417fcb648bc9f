//! Hashes every regular file under a directory as one baton workflow and writes a
//! `sha256sum`-compatible manifest.
//!
//! ```text
//! cargo run --release --example digest -- DIR --manifest FILE [--database-url URL]
//! cd DIR && sha256sum -c FILE
//! ```
//!
//! The workflow has one step per regular file (named by its path relative to `DIR`, kind
//! `sha256`) and a final fan-in step (`/manifest`, a name no relative path can take) that
//! depends on all of them. A subscriber actor prints the `WorkflowFinished` event; the exit
//! code is 0 when the outcome is `completed` and 1 when it is `failed` (for example a file
//! vanished or became unreadable between the walk and its step: that step is discarded and
//! the manifest step cancelled).
//!
//! # Where the digests live
//!
//! Each file step stores its digest in a side table that this example creates in the same
//! database, through its own sqlx pool:
//!
//! ```sql
//! digest_results(workflow_id TEXT, path TEXT, sha256 TEXT, PRIMARY KEY (workflow_id, path))
//! ```
//!
//! The step writes its row *before* it returns `Ok`, and the runner marks the step `completed`
//! only after that, so when the manifest step runs (all its dependencies completed) every row
//! is there. The write is an upsert, so a step that is run twice (a retry after a failed
//! attempt, or a re-run after a crash between the write and the runner's commit) just writes
//! the same digest again: the runner gives at-least-once execution, and the step is idempotent.
//! A table rather than files in a temporary directory because it is durable, visible to every
//! node sharing a Postgres database, and needs no clean-up protocol. The rows are kept after
//! the run as a record (delete them with `DELETE FROM digest_results WHERE workflow_id = ..`).
//!
//! # Notes
//! - Symlinks are not followed (neither to files nor to directories); unreadable directories
//!   and file names that are not UTF-8 are skipped with a warning.
//! - Names containing `\`, a newline or a carriage return are written with `sha256sum`'s
//!   escaping (a leading `\` on the line, then `\\`, `\n`, `\r`); a top-level file named `-` is
//!   written as `./-`, which `sha256sum -c` would otherwise read from standard input.
//! - Keep the database outside `DIR`: its files change while they are hashed. (The manifest is
//!   left out of the walk when it lies inside `DIR`.)

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton::{
    Baton, Outcome, Runner, Step, StepContext, StepError, Topic, Workflow, WorkflowFinished,
    WorkflowId,
};
use clap::Parser;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteSynchronous};
use tokio::sync::oneshot;

/// The fan-in step's name. No path relative to DIR starts with `/`, so no file step can
/// collide with it.
const FINAL_STEP: &str = "/manifest";

/// Hash every regular file under DIR with a baton workflow and write a sha256sum manifest.
#[derive(Parser, Debug)]
struct Args {
    /// The directory to walk (recursively; symlinks are not followed).
    dir: PathBuf,
    /// Where to write the manifest, in `sha256sum` format with paths relative to DIR.
    #[arg(long)]
    manifest: PathBuf,
    /// The database: `postgres://…` or `sqlite:path`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite:digest.db")]
    database_url: String,
    /// How many files are hashed at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // Inserting tens of thousands of steps is a "slow statement" for sqlx: expected.
                "warn,sqlx::query=error".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let started = Instant::now();

    let root = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("cannot open {}", args.dir.display()))?;
    if !root.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    // Canonical, so that the walk recognises the manifest if it lies inside DIR.
    let manifest = match (args.manifest.parent(), args.manifest.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir)
                .with_context(|| format!("cannot write into {}", dir.display()))?
                .join(name)
        }
        _ => bail!("--manifest must name a file"),
    };
    let files = walk(&root, &manifest);
    eprintln!("found {} files under {}", files.len(), root.display());

    // The workflow: a step per file, and the manifest step depending on every one of them.
    let manifest_arg = manifest
        .to_str()
        .context("the manifest path is not UTF-8")?;
    let file_steps = files
        .iter()
        .map(|(rel, abs)| Step::new(rel.as_str(), "sha256").args(json!({ "path": abs })));
    let final_step = Step::new(FINAL_STEP, "manifest")
        .args(json!({ "manifest": manifest_arg, "files": files.len() }))
        .depends_on(files.iter().map(|(rel, _)| rel.as_str()));
    let workflow = Workflow::new(format!("digest {}", root.display()))
        .steps_from(file_steps)
        .step(final_step);
    let id = workflow.id();

    let baton = Baton::builder()
        .database_url(&args.database_url)
        .migrate(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {}", baton::redact_url(&args.database_url)))?;
    let results = Results::connect(&args.database_url).await?;

    // Subscribe before inserting, so the event cannot slip past us however quick the run.
    let (outcome_tx, outcome_rx) = oneshot::channel();
    let (printer, printer_task) = Actor::spawn(None, Printer, outcome_tx).await?;
    baton
        .subscribe(printer.clone(), Topic::Workflow(id))
        .await?;

    let hashed = Arc::new(AtomicUsize::new(0));
    let runner = Runner::builder()
        .concurrency(args.concurrency)
        .handler("sha256", {
            let (results, hashed) = (results.clone(), hashed.clone());
            move |ctx: StepContext| hash_step(results.clone(), hashed.clone(), ctx)
        })
        .handler("manifest", {
            let results = results.clone();
            move |ctx: StepContext| manifest_step(results.clone(), ctx)
        })
        .start(&baton);

    baton.insert_workflow(workflow).await?;
    eprintln!("workflow {id} inserted after {:.2?}", started.elapsed());

    let total = files.len();
    let progress = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        loop {
            tick.tick().await;
            eprintln!("hashed {}/{total}", hashed.load(Ordering::Relaxed));
        }
    });
    let outcome = tokio::select! {
        outcome = outcome_rx => outcome.ok(),
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: the unfinished workflow stays in the database (`baton status {id}`)");
            None
        }
    };
    progress.abort();

    runner.shutdown().await;
    baton.shutdown().await;
    results.close().await;
    printer.stop(None);
    let _ = printer_task.await;
    eprintln!("{total} files in {:.2?}", started.elapsed());
    Ok(match outcome {
        Some(Outcome::Completed) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// Regular files under `root` as (path relative to `root`, absolute path), sorted.
fn walk(root: &Path, manifest: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let at = e
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                tracing::warn!("skipping {at}: {e}");
                continue;
            }
        };
        if !entry.file_type().is_file() || entry.path() == manifest {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("walkdir stays under its root");
        match (rel.to_str(), entry.path().to_str()) {
            (Some(rel), Some(abs)) => files.push((rel.to_owned(), abs.to_owned())),
            _ => tracing::warn!("skipping {}: the name is not UTF-8", entry.path().display()),
        }
    }
    files.sort();
    files
}

/// A file step: hash the file off the async threads, then record the digest.
async fn hash_step(
    results: Results,
    hashed: Arc<AtomicUsize>,
    ctx: StepContext,
) -> Result<(), StepError> {
    let path = ctx.args["path"]
        .as_str()
        .ok_or_else(|| StepError::permanent("the step has no path argument"))?
        .to_owned();
    let digest = tokio::task::spawn_blocking(move || sha256_file(Path::new(&path))).await?;
    let digest = digest.map_err(|e| {
        let msg = format!("{}: {e}", ctx.name);
        // Retrying will not bring a file back or change its permissions.
        let permanent = matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
        );
        tracing::warn!(attempt = ctx.attempt, permanent, "{msg}");
        if permanent {
            StepError::permanent(msg)
        } else {
            StepError::retryable(msg)
        }
    })?;
    results.put(ctx.workflow_id, &ctx.name, &digest).await?;
    hashed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Streams a file through SHA-256 and returns the lowercase hex digest.
fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// The fan-in step: read every digest of this workflow and write the manifest atomically.
async fn manifest_step(results: Results, ctx: StepContext) -> Result<(), StepError> {
    let manifest = ctx.args["manifest"]
        .as_str()
        .ok_or_else(|| StepError::permanent("the step has no manifest argument"))?;
    let expected = ctx.args["files"].as_u64().unwrap_or_default() as usize;
    let mut rows = results.all(ctx.workflow_id).await?;
    if rows.len() != expected {
        // Cannot happen while every file step writes before it completes; never write a
        // partial manifest if it does.
        return Err(StepError::permanent(format!(
            "found {} digests for {expected} files",
            rows.len()
        )));
    }
    rows.sort();
    let mut text = String::with_capacity(rows.len() * 100);
    for (path, digest) in &rows {
        text.push_str(&manifest_line(digest, path));
    }
    // Write beside the target and rename, so a reader never sees half a manifest.
    let tmp = format!("{manifest}.{}.tmp", ctx.step_id);
    let target = manifest.to_owned();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &target)
    })
    .await??;
    Ok(())
}

/// One line of a `sha256sum` manifest, escaped the way GNU coreutils does it.
fn manifest_line(digest: &str, path: &str) -> String {
    let path = if path == "-" { "./-" } else { path };
    if path.contains(['\\', '\n', '\r']) {
        let escaped = path
            .replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        format!("\\{digest}  {escaped}\n")
    } else {
        format!("{digest}  {path}\n")
    }
}

/// The side table holding each file's digest, on the same database as baton.
#[derive(Clone, Debug)]
enum Results {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

const CREATE: &str = "CREATE TABLE IF NOT EXISTS digest_results (\
     workflow_id TEXT NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL, \
     PRIMARY KEY (workflow_id, path))";
const PUT: &str = "INSERT INTO digest_results (workflow_id, path, sha256) VALUES ($1, $2, $3) \
     ON CONFLICT (workflow_id, path) DO UPDATE SET sha256 = excluded.sha256";
const ALL: &str = "SELECT path, sha256 FROM digest_results WHERE workflow_id = $1";

impl Results {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let results = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Results::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .connect(url)
                    .await?,
            )
        } else {
            // baton has already created the file and put it in WAL mode; like baton's own
            // connections, sync at checkpoints only, and wait out the other writer.
            let options = SqliteConnectOptions::from_str(url)?
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30));
            Results::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await?,
            )
        };
        match &results {
            Results::Postgres(pool) => sqlx::query(CREATE).execute(pool).await.map(|_| ())?,
            Results::Sqlite(pool) => sqlx::query(CREATE).execute(pool).await.map(|_| ())?,
        }
        Ok(results)
    }

    /// Records one file's digest; an upsert, so running a step again is harmless.
    async fn put(&self, wf: WorkflowId, path: &str, digest: &str) -> sqlx::Result<()> {
        let wf = wf.to_string();
        match self {
            Results::Postgres(pool) => sqlx::query(PUT)
                .bind(wf)
                .bind(path)
                .bind(digest)
                .execute(pool)
                .await
                .map(|_| ()),
            Results::Sqlite(pool) => sqlx::query(PUT)
                .bind(wf)
                .bind(path)
                .bind(digest)
                .execute(pool)
                .await
                .map(|_| ()),
        }
    }

    /// Every (path, digest) recorded for a workflow.
    async fn all(&self, wf: WorkflowId) -> sqlx::Result<Vec<(String, String)>> {
        let wf = wf.to_string();
        match self {
            Results::Postgres(pool) => sqlx::query_as(ALL).bind(wf).fetch_all(pool).await,
            Results::Sqlite(pool) => sqlx::query_as(ALL).bind(wf).fetch_all(pool).await,
        }
    }

    async fn close(&self) {
        match self {
            Results::Postgres(pool) => pool.close().await,
            Results::Sqlite(pool) => pool.close().await,
        }
    }
}

/// The subscriber: prints the finished event and hands the outcome to `main`.
struct Printer;

/// The printer's only message.
struct Finished(WorkflowFinished);

impl From<WorkflowFinished> for Finished {
    fn from(event: WorkflowFinished) -> Self {
        Finished(event)
    }
}

impl Actor for Printer {
    type Msg = Finished;
    type State = Option<oneshot::Sender<Outcome>>;
    type Arguments = oneshot::Sender<Outcome>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        done: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(Some(done))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        Finished(event): Finished,
        done: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let c = event.counts;
        println!(
            "workflow {} ({}) finished: {}",
            event.workflow_id,
            event.name,
            event.outcome.as_str()
        );
        println!(
            "  steps: {} completed, {} discarded, {} cancelled",
            c.completed, c.discarded, c.cancelled
        );
        println!(
            "  detected by {} on node {} at {}",
            event.detected_by.as_str(),
            event.node,
            event.finished_at
        );
        if !event.failed_steps.is_empty() {
            println!("  failed steps ({}):", event.failed_steps.len());
            for name in event.failed_steps.iter().take(20) {
                println!("    {name:?}");
            }
            if event.failed_steps.len() > 20 {
                println!("    … and {} more", event.failed_steps.len() - 20);
            }
        }
        if let Some(done) = done.take() {
            let _ = done.send(event.outcome);
        }
        Ok(())
    }
}
