//! Results: the JSON document, the markdown tables, the plot, and the verdict on each target.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::db::Backend;

/// Everything one run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) date: String,
    pub(crate) machine: Machine,
    pub(crate) sizes: crate::Sizes,
    pub(crate) duration_s: f64,
    pub(crate) storm: Vec<StormRow>,
    pub(crate) throughput: Vec<ThroughputRow>,
    pub(crate) latency: Vec<LatencyRow>,
    pub(crate) sweep: Vec<SweepRow>,
    pub(crate) memory: Vec<MemoryRow>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) cores: u64,
    pub(crate) cpu: String,
    pub(crate) memory_gib: f64,
    pub(crate) kernel: String,
    pub(crate) postgres: String,
    pub(crate) sqlite: String,
    pub(crate) profile: String,
}

impl Machine {
    pub(crate) fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|s| s.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|s| s.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get() as u64),
            cpu,
            memory_gib: mem_kb / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            postgres: String::new(),
            sqlite: String::new(),
            profile: if cfg!(debug_assertions) {
                "debug".into()
            } else {
                "release (cargo bench)".into()
            },
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StormRow {
    pub(crate) backend: Backend,
    pub(crate) n: u64,
    pub(crate) tasks: u64,
    pub(crate) insert_ms: f64,
    /// First report → event received by the subscriber actor.
    pub(crate) baton_event_ms: f64,
    /// First report → last `check` call returned.
    pub(crate) baton_reports_ms: f64,
    /// First report → every report absorbed (event received, no supervisor left).
    pub(crate) baton_total_ms: f64,
    pub(crate) detection_queries: u64,
    pub(crate) queries_per_step: f64,
    /// Postgres: rows of `baton_steps` read by detection and claim, per step.
    pub(crate) rows_read_per_step: Option<f64>,
    /// The claim's timestamp → the subscriber actor's receipt.
    pub(crate) claim_to_subscriber_ms: f64,
    /// baton's own histogram: latest report seen by the winner → event published.
    pub(crate) internal_latency_ms: f64,
    pub(crate) naive_event_ms: f64,
    pub(crate) naive_total_ms: f64,
    pub(crate) naive_reports_run: u64,
    pub(crate) naive_extrapolated: bool,
    pub(crate) naive_per_report_ms: f64,
    pub(crate) naive_rows_per_step: f64,
    /// naive total / baton total.
    pub(crate) ratio: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RunnerRun {
    pub(crate) detection: bool,
    pub(crate) steps: u64,
    /// First step started → last step's terminal write (database timestamps).
    pub(crate) span_ms: f64,
    pub(crate) steps_per_s: f64,
    /// Runner start → last event received.
    pub(crate) announced_ms: f64,
    pub(crate) detection_queries: u64,
    pub(crate) claims: u64,
    pub(crate) announced_by_sweep: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ThroughputRow {
    pub(crate) backend: Backend,
    pub(crate) workflows: u64,
    pub(crate) steps_per_workflow: u64,
    pub(crate) concurrency: u64,
    pub(crate) connections: u64,
    pub(crate) bare_connections: u64,
    pub(crate) bare_rate: f64,
    pub(crate) batched_rate: f64,
    pub(crate) batch: u64,
    pub(crate) on_steps_per_s: f64,
    pub(crate) off_steps_per_s: f64,
    /// Time with detection on / time with it off (= off rate / on rate).
    pub(crate) ratio: f64,
    pub(crate) on_vs_bare: f64,
    pub(crate) runs: Vec<RunnerRun>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LatencyRow {
    pub(crate) backend: Backend,
    pub(crate) condition: String,
    pub(crate) samples: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) mean_ms: f64,
    pub(crate) from_return_p50_ms: f64,
    pub(crate) from_return_p99_ms: f64,
    pub(crate) from_return_max_ms: f64,
    pub(crate) announced_by_sweep: u64,
    pub(crate) min_queued: u64,
    pub(crate) backlog_steps_per_s: u64,
    pub(crate) internal_p99_ms: f64,
    /// Where the commit → event time goes (absent in figures from before it was measured).
    #[serde(default)]
    pub(crate) breakdown: Option<Breakdown>,
}

impl LatencyRow {
    /// The breakdown in one line, for the console.
    pub(crate) fn parts(&self) -> String {
        self.breakdown.as_ref().map_or_else(String::new, |b| {
            format!(
                "    p50/p99 parts: queue {:.2}/{:.2} ms, claim {:.2}/{:.2} ms, deliver {:.2}/{:.2} ms ({} probes)",
                b.queue_p50_ms,
                b.queue_p99_ms,
                b.claim_p50_ms,
                b.claim_p99_ms,
                b.deliver_p50_ms,
                b.deliver_p99_ms,
                b.samples
            )
        })
    }
}

/// The prompt path's latency in parts (ms), from its tracing spans.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Breakdown {
    /// Probes whose spans showed the whole path.
    pub(crate) samples: u64,
    /// Last `check` → the winning claim starts: the supervisor's mailbox and the runtime queue.
    pub(crate) queue_p50_ms: f64,
    pub(crate) queue_p99_ms: f64,
    /// The claim: detection query and claim transaction.
    pub(crate) claim_p50_ms: f64,
    pub(crate) claim_p99_ms: f64,
    /// Claim end → the subscriber actor has the event.
    pub(crate) deliver_p50_ms: f64,
    pub(crate) deliver_p99_ms: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SweepTiming {
    pub(crate) median_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) mean_ms: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SweepRow {
    pub(crate) backend: Backend,
    pub(crate) history: u64,
    pub(crate) open: u64,
    pub(crate) load_s: f64,
    pub(crate) empty_history: SweepTiming,
    pub(crate) after_load: SweepTiming,
    pub(crate) after_analyze: SweepTiming,
    pub(crate) announcing_ms: f64,
    pub(crate) announcing: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct MemoryRow {
    pub(crate) backend: Backend,
    pub(crate) workflows: u64,
    pub(crate) start_mib: f64,
    pub(crate) peak_mib: f64,
    pub(crate) final_mib: f64,
    pub(crate) ratio: f64,
    pub(crate) live_supervisors_final: f64,
    pub(crate) duration_s: f64,
    pub(crate) workflows_per_s: f64,
    /// (workflows inserted, RSS MiB) along the run.
    pub(crate) checkpoints: Vec<(u64, f64)>,
}

/// One target of issue 5 and whether it holds.
pub(crate) struct Verdict {
    pub(crate) target: String,
    pub(crate) backend: &'static str,
    pub(crate) measured: String,
    pub(crate) pass: bool,
}

pub(crate) fn verdicts(r: &Report) -> Vec<Verdict> {
    let mut v = Vec::new();
    for s in r.storm.iter().filter(|s| s.n >= 100_000) {
        v.push(Verdict {
            target: format!("storm at {} steps: ≥ 100× faster than naive", s.n),
            backend: s.backend.name(),
            measured: format!("{:.0}×", s.ratio),
            pass: s.ratio >= 100.0,
        });
        v.push(Verdict {
            target: format!("storm at {} steps: ≤ 0.05 detection queries/step", s.n),
            backend: s.backend.name(),
            measured: format!("{:.4}", s.queries_per_step),
            pass: s.queries_per_step <= 0.05,
        });
    }
    for t in &r.throughput {
        v.push(Verdict {
            target: "end-to-end: time with detection on / off ≤ 1.10".into(),
            backend: t.backend.name(),
            measured: format!("{:.3}", t.ratio),
            pass: t.ratio <= 1.10,
        });
        v.push(Verdict {
            target: "end-to-end: steps/s ≥ ½ bare single-row update rate".into(),
            backend: t.backend.name(),
            measured: format!(
                "{:.0} steps/s = {:.2} × {:.0}/s",
                t.on_steps_per_s, t.on_vs_bare, t.bare_rate
            ),
            pass: t.on_vs_bare >= 0.5,
        });
    }
    for l in &r.latency {
        let goal = match l.condition.as_str() {
            "idle" => 10.0,
            crate::crossnode::CONDITION => 50.0,
            _ => 25.0,
        };
        v.push(Verdict {
            target: format!("latency p99 ≤ {goal:.0} ms ({})", l.condition),
            backend: l.backend.name(),
            measured: format!("{:.2} ms", l.p99_ms),
            pass: l.p99_ms <= goal,
        });
    }
    for s in r.sweep.iter().filter(|s| s.backend == Backend::Postgres) {
        v.push(Verdict {
            target: format!("sweep with {} announced in history ≤ 20 ms", s.history),
            backend: s.backend.name(),
            measured: format!(
                "median {:.2} ms, max {:.2} ms",
                s.after_analyze.median_ms, s.after_analyze.max_ms
            ),
            pass: s.after_analyze.median_ms <= 20.0,
        });
    }
    for m in &r.memory {
        v.push(Verdict {
            target: format!(
                "memory: final RSS ≤ 1.2 × start-up ({} workflows)",
                m.workflows
            ),
            backend: m.backend.name(),
            measured: format!(
                "{:.1} → {:.1} MiB ({:.2}×)",
                m.start_mib, m.final_mib, m.ratio
            ),
            pass: m.ratio <= 1.2,
        });
        if let Some(&(n, warm)) = m.checkpoints.first() {
            v.push(Verdict {
                target: format!(
                    "memory: final RSS ≤ 1.2 × RSS once warm (after {} of {} workflows)",
                    thousands(n),
                    thousands(m.workflows)
                ),
                backend: m.backend.name(),
                measured: format!(
                    "{warm:.1} → {:.1} MiB ({:.2}×)",
                    m.final_mib,
                    m.final_mib / warm
                ),
                pass: m.final_mib <= 1.2 * warm,
            });
        }
    }
    v
}

fn f(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Hand-written analysis, kept next to the code that produces the figures.
const NOTES: &str = include_str!("notes.md");

pub(crate) fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# baton load benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `cargo bench --bench load` ([benches/load.rs](../benches/load.rs)) on \
         **{}**, in {:.0} s. Raw figures: [benchmarks.json](benchmarks.json).\n",
        r.date, r.duration_s
    );
    let _ = writeln!(
        md,
        "**Machine:** {} cores ({}), {:.0} GiB RAM, Linux {}; PostgreSQL {} on the same host \
         (loopback), SQLite {} (bundled, WAL, `synchronous=NORMAL`); build: {}. The machine is \
         shared: figures move by ±10–20 % between runs.\n",
        m.cores, m.cpu, m.memory_gib, m.kernel, m.postgres, m.sqlite, m.profile
    );

    let _ = writeln!(md, "## Targets (issue 5)\n");
    let _ = writeln!(md, "| target | backend | measured | verdict |");
    let _ = writeln!(md, "|---|---|---|---|");
    for v in verdicts(r) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            v.target,
            v.backend,
            v.measured,
            if v.pass { "✅ holds" } else { "❌ misses" }
        );
    }

    let _ = writeln!(md, "\n## 1–2. Sibling storm vs the naive rescan\n");
    let _ = writeln!(
        md,
        "One workflow of N steps (a kind no runner handles), inserted with `insert_workflow`; every \
         step committed `completed` by one plain `UPDATE`; then every step reported with \
         `check(wf, step, Completed)` from {} tokio tasks released together. *Absorbed* = first \
         report → the subscriber actor has the event **and** every report has been processed \
         (no workflow supervisor left alive, read from the `baton_live_supervisors` gauge). The \
         naive baseline runs on the same workflow in the same process, with the same tasks and \
         the same pool size (10): every report runs `SELECT state FROM baton_steps WHERE \
         workflow_id = $1` and, when all are terminal, `INSERT … ON CONFLICT DO NOTHING` into a \
         scratch table. Ratio = naive absorbed / baton absorbed.\n",
        r.storm.first().map_or(64, |s| s.tasks)
    );
    let _ = writeln!(
        md,
        "| backend | N | baton: event | baton: absorbed | detection queries (/step) | rows read /step | claim → subscriber | naive: event | naive: absorbed | naive /report | ratio |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for s in &r.storm {
        let _ = writeln!(
            md,
            "| {} | {} | {} ms | {} ms | {} ({:.4}) | {} | {} ms | {} ms | {} ms{} | {} ms | **{}×** |",
            s.backend.name(),
            thousands(s.n),
            f(s.baton_event_ms),
            f(s.baton_total_ms),
            s.detection_queries,
            s.queries_per_step,
            s.rows_read_per_step.map_or("n/a".into(), f),
            f(s.claim_to_subscriber_ms),
            f(s.naive_event_ms),
            f(s.naive_total_ms),
            if s.naive_extrapolated { " ᵉ" } else { "" },
            f(s.naive_per_report_ms),
            f(s.ratio),
        );
    }
    if let Some(s) = r.storm.iter().find(|s| s.naive_extrapolated) {
        let _ = writeln!(
            md,
            "\nᵉ extrapolated: at N = {} the naive run would take tens of minutes, so {} reports \
             were run (same {} tasks) and the total is N × their wall time per report. Its rows \
             read per report are N by construction ({} measured).",
            thousands(s.n),
            s.naive_reports_run,
            s.tasks,
            f(s.naive_rows_per_step)
        );
    }
    let _ = writeln!(
        md,
        "\n*rows read /step*: Postgres only, from `pg_stat_user_tables.seq_tup_read` + \
         `pg_stat_user_indexes.idx_tup_read` on `baton_steps` over the storm (detection queries \
         and the claim, which reads the whole workflow once to compute the outcome); SQLite keeps \
         no such counters. The naive strategy reads N rows per report.\n"
    );
    let _ = writeln!(md, "![storm: time vs N](benchmarks.svg)\n");

    let _ = writeln!(md, "## 3. End-to-end runner throughput\n");
    if let Some(t) = r.throughput.first() {
        let _ = writeln!(
            md,
            "{} workflows × {} independent no-op steps through the built-in runner (concurrency \
             {}, pool {}), eight runs in the order on, off, off, on, off, on, on, off; the \
             summary takes each mode's median. Each run's workflows are inserted, then `VACUUM \
             ANALYZE` (SQLite: `ANALYZE`) runs, then the runner starts. *steps/s* = steps / (last terminal write − first \
             start), from the timestamps the runner wrote. Off = \
             `prompt_detection(false)`: the sweep (every 1 s) announces. *Bare* = single-row \
             fenced terminal `UPDATE`s (`… WHERE id = $1 AND attempt = 1 AND state = 'executing'`) \
             from as many tasks as connections: {} on Postgres, 1 on SQLite (baton writes through \
             one connection there). *Batched* = the same write for {} rows per statement, one \
             writer.\n",
            t.workflows, t.steps_per_workflow, t.concurrency, t.connections, t.connections, t.batch
        );
    }
    let _ = writeln!(
        md,
        "| backend | bare updates/s | batched rows/s | steps/s on | steps/s off | time on/off | on / bare |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|");
    for t in &r.throughput {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | **{:.3}** | **{:.2}** |",
            t.backend.name(),
            t.bare_rate,
            t.batched_rate,
            t.on_steps_per_s,
            t.off_steps_per_s,
            t.ratio,
            t.on_vs_bare
        );
    }
    let _ = writeln!(
        md,
        "\n| backend | run | detection | steps | span | steps/s | runner start → all announced | detection queries | by sweep |"
    );
    let _ = writeln!(md, "|---|--:|---|--:|--:|--:|--:|--:|--:|");
    for t in &r.throughput {
        for (i, run) in t.runs.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} ms | {:.0} | {:.0} ms | {} | {} |",
                t.backend.name(),
                i + 1,
                if run.detection { "on" } else { "off" },
                run.steps,
                run.span_ms,
                run.steps_per_s,
                run.announced_ms,
                run.detection_queries,
                run.announced_by_sweep
            );
        }
    }

    let _ = writeln!(md, "\n## 4. Detection latency\n");
    let _ = writeln!(
        md,
        "Probe workflows of 3 parallel no-op steps, run one at a time by the runner \
         (concurrency 16). **commit → event** (the target's measure): from the runner's `check` \
         call for the last step — which it makes right after its terminal-state transaction \
         commits; the instant is taken when `check` opens its `baton.check` tracing span, seen \
         by a tracing layer in the benchmark — to the subscriber actor's receipt of the event. \
         It covers detection, the claim transaction (whose commit waits for a WAL flush on \
         Postgres), publishing and delivery. **handler return → event**: from the latest handler \
         return instead, so it also includes the runner's own terminal write of the last step. \
         *Backlog*: a producer keeps at least the stated number of unrelated steps queued \
         (workflows of 100 no-op steps) for the same runner, which works through them at full \
         speed; each probe's steps are moved to the head of the queue (`run_at` backdated by \
         SQL) so that they run at once, and the announcement is timed while the runner, the pool \
         and the database are busy with the backlog. *baton p99* is baton's own \
         `baton_detection_latency_seconds` histogram (latest report → event published) over all \
         workflows announced in the phase, backlog workflows included. *3 nodes → a 4th* \
         (PostgreSQL): three baton instances, agreeing only through the database, each run one \
         step of every probe, released together so that the last ones end on different nodes \
         at once; the subscriber is on a fourth instance that runs no steps, so every event \
         reaches it through `NOTIFY` (issue 4's cross-node measure).\n"
    );
    let _ = writeln!(
        md,
        "| backend | condition | probes | commit → event p50 | p99 | max | mean | handler return → event p50 | p99 | max | steps queued (min) | backlog steps/s | by sweep | baton p99 |"
    );
    let _ = writeln!(
        md,
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for l in &r.latency {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} ms | **{} ms** | {} ms | {} ms | {} ms | {} ms | {} ms | {} | {} | {} | {} ms |",
            l.backend.name(),
            l.condition,
            l.samples,
            f(l.p50_ms),
            f(l.p99_ms),
            f(l.max_ms),
            f(l.mean_ms),
            f(l.from_return_p50_ms),
            f(l.from_return_p99_ms),
            f(l.from_return_max_ms),
            thousands(l.min_queued),
            l.backlog_steps_per_s,
            l.announced_by_sweep,
            f(l.internal_p99_ms)
        );
    }

    let _ = writeln!(
        md,
        "\nWhere commit → event goes, from baton's `baton.check` and `baton.claim` tracing spans: \
         *queue* = last `check` → the winning claim starts (the supervisor's mailbox and the \
         runtime's run queue); *claim* = detection query and claim transaction (connection \
         wait, round trips, WAL flush); *deliver* = claim end → the subscriber actor has the \
         event (on another node: through `NOTIFY`).\n"
    );
    let _ = writeln!(
        md,
        "| backend | condition | probes | queue p50 | p99 | claim p50 | p99 | deliver p50 | p99 |"
    );
    let _ = writeln!(md, "|---|---|--:|--:|--:|--:|--:|--:|--:|");
    for l in &r.latency {
        if let Some(b) = &l.breakdown {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms |",
                l.backend.name(),
                l.condition,
                b.samples,
                f(b.queue_p50_ms),
                f(b.queue_p99_ms),
                f(b.claim_p50_ms),
                f(b.claim_p99_ms),
                f(b.deliver_p50_ms),
                f(b.deliver_p99_ms)
            );
        }
    }

    let _ = writeln!(md, "\n## 5. Sweep cost vs history\n");
    let _ = writeln!(
        md,
        "`Baton::sweep_once()` timed 30 times (sweeper actor off), with the open workflows \
         (one waiting step each, nothing to announce) and: no history; then the history \
         bulk-loaded by SQL (`generate_series` on Postgres, a recursive CTE on SQLite: announced \
         workflows with `finished_at` set, every other one with two completed steps, and their \
         completion rows) before and after `ANALYZE`. Last column: one sweep that finds 10 \
         workflows settled behind baton's back and announces them.\n"
    );
    let _ = writeln!(
        md,
        "| backend | open | history | load | no history: median | history, before ANALYZE: median | history: median | p90 | max | announcing 10 |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for s in &r.sweep {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} s | {} ms | {} ms | **{} ms** | {} ms | {} ms | {} ms |",
            s.backend.name(),
            thousands(s.open),
            thousands(s.history),
            s.load_s,
            f(s.empty_history.median_ms),
            f(s.after_load.median_ms),
            f(s.after_analyze.median_ms),
            f(s.after_analyze.p90_ms),
            f(s.after_analyze.max_ms),
            f(s.announcing_ms)
        );
    }

    let _ = writeln!(md, "\n## 6. Memory\n");
    let _ = writeln!(
        md,
        "A fresh process (the benchmark re-executes itself) runs workflows of one no-op step \
         through the runner on SQLite, at most 1,000 unannounced at a time, with a counting \
         subscriber. RSS from `/proc/self/status` (VmRSS): *start-up* after connect, subscribe \
         and runner start; *peak* sampled every 50 ms (and VmHWM); *final* after every workflow \
         was announced, no supervisor was left alive and 2 s of quiet. *Warm* is the RSS after \
         the first tenth of the workflows: by then the SQLite page cache (about 2 MiB per \
         connection) has filled, the reader pool has opened its connections (a thread and a \
         malloc arena each), and the registry's window of the last 16,384 announced ids is \
         full — bounded costs that start-up, measured before any work, does not include. What \
         grows after that would be a leak.\n"
    );
    let _ = writeln!(
        md,
        "| backend | workflows | workflows/s | start-up | warm | peak | final | final / start-up | final / warm | supervisors left |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for mem in &r.memory {
        let warm = mem.checkpoints.first().map_or(f64::NAN, |c| c.1);
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | **{:.2}** | **{:.2}** | {} |",
            mem.backend.name(),
            thousands(mem.workflows),
            mem.workflows_per_s,
            mem.start_mib,
            warm,
            mem.peak_mib,
            mem.final_mib,
            mem.ratio,
            mem.final_mib / warm,
            mem.live_supervisors_final
        );
        let series: Vec<String> = mem
            .checkpoints
            .iter()
            .map(|(n, rss)| format!("{}k: {:.1}", n / 1_000, rss))
            .collect();
        let _ = writeln!(md, "\nRSS (MiB) along the run: {}.", series.join(" · "));
    }
    let _ = writeln!(md, "\n{NOTES}");
    md
}

/// One line of the plot: its label, colour, whether it is baton's (else the naive baseline's),
/// and its (N, ms) points.
type Series = (String, plotters::style::RGBColor, bool, Vec<(f64, f64)>);

/// The plot: storm time vs N, log–log, baton and naive on both backends.
pub(crate) fn plot(r: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let series: Vec<Series> = [
        (Backend::Postgres, true, RGBColor(31, 119, 180)),
        (Backend::Sqlite, true, RGBColor(44, 160, 44)),
        (Backend::Postgres, false, RGBColor(214, 39, 40)),
        (Backend::Sqlite, false, RGBColor(255, 127, 14)),
    ]
    .into_iter()
    .map(|(backend, baton, color)| {
        let pts: Vec<(f64, f64)> = r
            .storm
            .iter()
            .filter(|s| s.backend == backend)
            .map(|s| {
                let y = if baton {
                    s.baton_total_ms
                } else {
                    s.naive_total_ms
                };
                (s.n as f64, y.max(0.01))
            })
            .collect();
        let label = format!(
            "{} ({})",
            if baton { "baton" } else { "naive rescan" },
            backend.name()
        );
        (label, color, baton, pts)
    })
    .collect();
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.3.iter().map(|p| p.1))
        .collect();
    let ymin = all.iter().copied().fold(f64::INFINITY, f64::min).max(0.01) / 2.0;
    let ymax = all.iter().copied().fold(0.0, f64::max) * 3.0;
    let xs: Vec<f64> = r.storm.iter().map(|s| s.n as f64).collect();
    let xmin = xs.iter().copied().fold(f64::INFINITY, f64::min) / 2.0;
    let xmax = xs.iter().copied().fold(0.0, f64::max) * 2.0;

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Sibling storm: first report → all N reports absorbed",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("steps in the workflow, N (log)")
        .y_desc("milliseconds (log)")
        .x_label_formatter(&|x| thousands(*x as u64))
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                thousands(*y as u64)
            } else {
                format!("{y}")
            }
        })
        .draw()?;
    for (label, color, baton, pts) in &series {
        let style = ShapeStyle {
            color: color.to_rgba(),
            filled: false,
            stroke_width: if *baton { 3 } else { 2 },
        };
        let c = *color;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
        chart.draw_series(
            pts.iter()
                .map(|p| Circle::new(*p, 4, ShapeStyle::from(&c).filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes docs/benchmarks.{json,md,svg}.
pub(crate) fn write_all(r: &Report, docs: &Path) {
    std::fs::create_dir_all(docs).expect("creating docs/");
    std::fs::write(
        docs.join("benchmarks.json"),
        serde_json::to_string_pretty(r).expect("the report serializes") + "\n",
    )
    .expect("writing benchmarks.json");
    std::fs::write(docs.join("benchmarks.md"), markdown(r)).expect("writing benchmarks.md");
    plot(r, &docs.join("benchmarks.svg")).expect("drawing benchmarks.svg");
}
