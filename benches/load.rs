//! baton's load benchmarks (issue 5), on SQLite and PostgreSQL, in one program.
//!
//! - `cargo bench --bench load` (cargo passes `--bench`): every scenario at full size on both
//!   backends; writes `docs/benchmarks.json`, `docs/benchmarks.md` and `docs/benchmarks.svg`.
//! - Run without `--bench` (as `cargo test --all-targets` does): a smoke run with tiny sizes
//!   that checks every scenario still works (one event per workflow, …) and writes nothing.
//! - `cargo bench --bench load -- --render`: re-renders the markdown and the plot from
//!   `docs/benchmarks.json` without measuring.
//!
//! Postgres: `BATON_BENCH_PG_URL`, else `BATON_TEST_PG_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres`; each scenario creates and drops its own
//! database. An unreachable Postgres fails the run. For development, `BATON_BENCH_ONLY`
//! (comma-separated: storm, e2e, latency, crossnode, sweep, memory) and `BATON_BENCH_BACKENDS` (sqlite,
//! postgres) restrict a run; a restricted full run writes its JSON to `BATON_BENCH_OUT` (if
//! set) instead of docs/.

#[path = "load/crossnode.rs"]
mod crossnode;
#[path = "load/db.rs"]
mod db;
#[path = "load/latency.rs"]
mod latency;
#[path = "load/memory.rs"]
mod memory;
#[path = "load/probe.rs"]
mod probe;
#[path = "load/report.rs"]
mod report;
#[path = "load/storm.rs"]
mod storm;
#[path = "load/sweep.rs"]
mod sweep;
#[path = "load/throughput.rs"]
mod throughput;

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::db::Backend;
use crate::probe::{CheckTimes, Metrics};
use crate::report::{Machine, Report};

/// Sizes of every scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Sizes {
    pub(crate) full: bool,
    /// Steps of the storm workflows.
    pub(crate) storm_ns: Vec<usize>,
    /// Above this many steps the naive baseline runs a sample of reports and extrapolates.
    pub(crate) naive_sample_above: usize,
    pub(crate) naive_sample: usize,
    /// Rows of the bare (and batched) write tests.
    pub(crate) bare_updates: usize,
    pub(crate) e2e_workflows: usize,
    pub(crate) e2e_steps: usize,
    /// Probe workflows per latency condition.
    pub(crate) latency_probes: usize,
    /// Unrelated steps kept queued during the backlog latency test.
    pub(crate) backlog: usize,
    pub(crate) sweep_history: usize,
    pub(crate) sweep_open: usize,
    pub(crate) memory_workflows: usize,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            full: true,
            storm_ns: vec![10, 1_000, 10_000, 100_000],
            naive_sample_above: 10_000,
            naive_sample: 200,
            bare_updates: 10_000,
            e2e_workflows: 500,
            e2e_steps: 20,
            latency_probes: 300,
            backlog: 10_000,
            sweep_history: 1_000_000,
            sweep_open: 1_000,
            memory_workflows: 100_000,
        }
    }

    fn smoke() -> Sizes {
        Sizes {
            full: false,
            storm_ns: vec![10, 300],
            naive_sample_above: 100,
            naive_sample: 40,
            bare_updates: 300,
            e2e_workflows: 10,
            e2e_steps: 5,
            latency_probes: 15,
            backlog: 200,
            sweep_history: 1_000,
            sweep_open: 20,
            memory_workflows: 300,
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--memory-child") {
        let n = args
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .expect("--memory-child <workflows>");
        memory::child(n);
        return;
    }
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    if args.iter().any(|a| a == "--render") {
        let json = std::fs::read_to_string(docs.join("benchmarks.json"))
            .expect("reading docs/benchmarks.json");
        let report: Report = serde_json::from_str(&json).expect("docs/benchmarks.json parses");
        report::write_all(&report, &docs);
        println!("re-rendered docs/benchmarks.md and docs/benchmarks.svg");
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let sizes = if full { Sizes::full() } else { Sizes::smoke() };
    let only: Option<Vec<String>> = std::env::var("BATON_BENCH_ONLY")
        .ok()
        .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect());
    let backends: Vec<Backend> = match std::env::var("BATON_BENCH_BACKENDS") {
        Ok(s) => s
            .split(',')
            .map(|b| match b.trim() {
                "sqlite" => Backend::Sqlite,
                "postgres" => Backend::Postgres,
                other => panic!("unknown backend {other}"),
            })
            .collect(),
        Err(_) => vec![Backend::Postgres, Backend::Sqlite],
    };
    let restricted = only.is_some() || backends.len() < 2;
    let wants = |s: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));

    let metrics = Metrics::install();
    let checks = CheckTimes::install();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let started = Instant::now();
    println!(
        "baton load benchmarks ({}): {}",
        if full { "full" } else { "smoke" },
        backends
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut report = rt.block_on(async {
        let (pg, lite) = db::versions().await;
        let mut machine = Machine::probe();
        machine.postgres = pg;
        machine.sqlite = lite;
        let mut report = Report {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            machine,
            sizes: sizes.clone(),
            duration_s: 0.0,
            storm: Vec::new(),
            throughput: Vec::new(),
            latency: Vec::new(),
            sweep: Vec::new(),
            memory: Vec::new(),
        };
        for &b in &backends {
            if wants("storm") {
                report.storm.extend(storm::run(b, &sizes, metrics).await);
            }
            if wants("e2e") {
                report.throughput.push(throughput::run(b, &sizes).await);
            }
            if wants("latency") {
                report
                    .latency
                    .extend(latency::run(b, &sizes, metrics, checks).await);
            }
            if wants("crossnode") && b == Backend::Postgres {
                report
                    .latency
                    .push(crossnode::run(&sizes, metrics, checks).await);
            }
            if wants("sweep") {
                report.sweep.push(sweep::run(b, &sizes).await);
            }
        }
        report
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    if wants("memory") && backends.contains(&Backend::Sqlite) {
        let row = memory::run(sizes.memory_workflows);
        println!(
            "  memory   sqlite: {} workflows at {:.0}/s: RSS start-up {:.1} MiB, peak {:.1} MiB, final {:.1} MiB ({:.2}x)",
            row.workflows,
            row.workflows_per_s,
            row.start_mib,
            row.peak_mib,
            row.final_mib,
            row.ratio
        );
        report.memory.push(row);
    }
    report.duration_s = started.elapsed().as_secs_f64();

    for v in report::verdicts(&report) {
        println!(
            "  [{}] {} ({}): {}",
            if v.pass { "holds " } else { "MISSES" },
            v.target,
            v.backend,
            v.measured
        );
    }
    if !full {
        println!(
            "load benchmarks smoke run: every scenario passed on {} backend(s) in {:.1} s",
            backends.len(),
            report.duration_s
        );
        return;
    }
    if restricted {
        if let Ok(out) = std::env::var("BATON_BENCH_OUT") {
            std::fs::write(
                &out,
                serde_json::to_string_pretty(&report).expect("the report serializes"),
            )
            .expect("writing BATON_BENCH_OUT");
            println!("restricted run: figures written to {out}");
        } else {
            println!("restricted run: docs/ left as they were");
        }
        return;
    }
    report::write_all(&report, &docs);
    println!(
        "wrote docs/benchmarks.json, docs/benchmarks.md and docs/benchmarks.svg in {:.0} s",
        report.duration_s
    );
}
