//! Scenario 6: resident memory across many small workflows run through the runner on SQLite.
//!
//! Runs in a child process of its own (the benchmark binary re-executed with
//! `--memory-child`), so that what earlier scenarios allocated does not blur the figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton::{Runner, Step, StepContext, Workflow, WorkflowFinished};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::db::{Backend, BenchDb};
use crate::probe::{Metrics, proc_status_kb, rss_mib};
use crate::report::MemoryRow;

/// Workflows inserted but not yet announced, at most.
const WINDOW: usize = 1_000;
const CONCURRENCY: usize = 16;
const MARKER: &str = "MEMORY_RESULT ";

/// Runs the child and reads its result.
pub(crate) fn run(workflows: usize) -> MemoryRow {
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let out = std::process::Command::new(exe)
        .arg("--memory-child")
        .arg(workflows.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running the memory child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the memory child failed ({}): {stdout}",
        out.status
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(MARKER))
        .unwrap_or_else(|| panic!("no result from the memory child: {stdout}"));
    serde_json::from_str(line).expect("the memory child's result parses")
}

/// Counts announcements per workflow index (`m-<i>`), in a bitmap allocated up front.
struct Seen {
    bits: Vec<AtomicU64>,
    count: AtomicUsize,
    duplicates: AtomicUsize,
}

impl Seen {
    fn new(n: usize) -> Self {
        Self {
            bits: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
        }
    }

    fn record(&self, event: &WorkflowFinished) {
        let i: usize = event
            .name
            .strip_prefix("m-")
            .and_then(|s| s.parse().ok())
            .expect("a memory workflow's name");
        let bit = 1u64 << (i % 64);
        if self.bits[i / 64].fetch_or(bit, Ordering::Relaxed) & bit != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

struct Counted(WorkflowFinished);

impl From<WorkflowFinished> for Counted {
    fn from(e: WorkflowFinished) -> Self {
        Counted(e)
    }
}

/// A subscriber that only counts (keeps no per-event state).
struct Counter;

impl Actor for Counter {
    type Msg = Counted;
    type State = Arc<Seen>;
    type Arguments = Arc<Seen>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Counted>,
        seen: Arc<Seen>,
    ) -> Result<Arc<Seen>, ActorProcessingErr> {
        Ok(seen)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Counted>,
        Counted(event): Counted,
        seen: &mut Arc<Seen>,
    ) -> Result<(), ActorProcessingErr> {
        seen.record(&event);
        Ok(())
    }
}

/// The child's body: prints one `MEMORY_RESULT <json>` line.
pub(crate) fn child(workflows: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let row = rt.block_on(measure(workflows));
    println!(
        "{MARKER}{}",
        serde_json::to_string(&row).expect("the result serializes")
    );
}

async fn measure(workflows: usize) -> MemoryRow {
    let metrics = Metrics::install();
    let db = BenchDb::create(Backend::Sqlite).await;
    let baton = db.builder(10).connect().await.expect("connecting baton");
    let seen = Arc::new(Seen::new(workflows));
    let (actor, _) = Actor::spawn(None, Counter, seen.clone())
        .await
        .expect("spawning the counter");
    baton
        .subscribe(actor, baton::Topic::All)
        .await
        .expect("subscribing");
    let runner = Runner::builder()
        .concurrency(CONCURRENCY)
        .handler("m", |_ctx: StepContext| async { Ok(()) })
        .start(&baton);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start_mib = rss_mib();
    // Reset the kernel's peak-RSS mark so VmHWM covers this run only.
    let _ = std::fs::write("/proc/self/clear_refs", "5");

    let peak_kb = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak_kb, sampling) = (peak_kb.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(kb) = proc_status_kb("VmRSS") {
                    peak_kb.fetch_max(kb, Ordering::Relaxed);
                }
                // Drop histogram samples so the recorder itself does not grow.
                metrics.live_supervisors_discarding();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let t0 = Instant::now();
    let mut checkpoints = Vec::new();
    let step = (workflows / 10).max(1);
    for i in 0..workflows {
        while i - seen.count.load(Ordering::Relaxed) >= WINDOW {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let wf = Workflow::new(format!("m-{i}")).step(Step::new("only", "m"));
        baton.insert_workflow(wf).await.expect("inserting");
        if (i + 1) % step == 0 {
            checkpoints.push((i as u64 + 1, rss_mib()));
        }
    }
    while seen.count.load(Ordering::Relaxed) < workflows {
        assert!(
            t0.elapsed() < Duration::from_secs(1_800),
            "workflows were not all announced"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t0.elapsed().as_secs_f64();
    // Let the last supervisors stop and the allocator settle.
    let quiet = Instant::now();
    while metrics.live_supervisors_discarding() > 0.0 && quiet.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let live = metrics.live_supervisors_discarding();
    let final_mib = rss_mib();
    sampling.store(false, Ordering::Relaxed);
    sampler.await.expect("the sampler");
    let hwm = proc_status_kb("VmHWM").unwrap_or(0);
    let peak_mib = (peak_kb.load(Ordering::Relaxed).max(hwm) as f64 / 1024.0).max(final_mib);
    let stats = baton.stats();
    assert_eq!(seen.count.load(Ordering::Relaxed), workflows);
    assert_eq!(
        seen.duplicates.load(Ordering::Relaxed),
        0,
        "exactly one event per workflow"
    );
    assert_eq!(stats.claims_won, workflows as u64);
    runner.shutdown().await;
    baton.shutdown().await;
    db.drop_db().await;
    MemoryRow {
        backend: Backend::Sqlite,
        workflows: workflows as u64,
        start_mib,
        peak_mib,
        final_mib,
        ratio: final_mib / start_mib,
        live_supervisors_final: live,
        duration_s: took,
        workflows_per_s: workflows as f64 / took,
        checkpoints,
    }
}
