//! Metrics emitted through the `metrics` facade, and per-instance counters for tests and benches.
//!
//! baton only emits; the application installs a recorder (the `baton` binary installs a
//! Prometheus one). Names follow Prometheus conventions:
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `baton_workflows_finished_total` | counter | `outcome`, `path` |
//! | `baton_claims_lost_total` | counter | `path` |
//! | `baton_checks_total` | counter | |
//! | `baton_checks_deferred_total` | counter | |
//! | `baton_check_errors_total` | counter | |
//! | `baton_detection_queries_total` | counter | |
//! | `baton_sweeps_total` | counter | |
//! | `baton_sweep_errors_total` | counter | |
//! | `baton_steps_finished_total` | counter | `state` |
//! | `baton_subscribers_dropped_total` | counter | |
//! | `baton_detection_latency_seconds` | histogram | `path` |
//! | `baton_claim_duration_seconds` | histogram | |
//! | `baton_sweep_duration_seconds` | histogram | |
//! | `baton_live_supervisors` | gauge | |
//! | `baton_open_workflows` | gauge | |

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::event::{DetectedBy, Outcome};

/// Detection latency: last terminal write to event published.
pub const DETECTION_LATENCY: &str = "baton_detection_latency_seconds";

/// Counts kept by one baton instance, readable with [`Baton::stats`](crate::Baton::stats).
///
/// ```
/// let stats = baton::Stats::default();
/// assert_eq!(stats.snapshot().detection_queries, 0);
/// ```
#[derive(Debug, Default)]
pub struct Stats {
    checks: AtomicU64,
    checks_deferred: AtomicU64,
    check_errors: AtomicU64,
    detection_queries: AtomicU64,
    claims_won: AtomicU64,
    claims_lost: AtomicU64,
    sweeps: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// `check` calls.
    pub checks: u64,
    /// Reports that needed no detection query because the workflow could not have settled:
    /// the step's own write moved a waiting dependent along, or another of the workflow's steps
    /// was still executing on this node.
    pub checks_deferred: u64,
    /// Failures inside `check` (logged and swallowed).
    pub check_errors: u64,
    /// Detection queries issued (prompt and sweep paths).
    pub detection_queries: u64,
    /// Claims this instance won (announcements it made).
    pub claims_won: u64,
    /// Claims this instance lost to an existing claim.
    pub claims_lost: u64,
    /// Sweeps run.
    pub sweeps: u64,
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            checks: self.checks.load(Relaxed),
            checks_deferred: self.checks_deferred.load(Relaxed),
            check_errors: self.check_errors.load(Relaxed),
            detection_queries: self.detection_queries.load(Relaxed),
            claims_won: self.claims_won.load(Relaxed),
            claims_lost: self.claims_lost.load(Relaxed),
            sweeps: self.sweeps.load(Relaxed),
        }
    }

    pub(crate) fn check(&self) {
        self.checks.fetch_add(1, Relaxed);
        metrics::counter!("baton_checks_total").increment(1);
    }

    pub(crate) fn check_deferred(&self) {
        self.checks_deferred.fetch_add(1, Relaxed);
        metrics::counter!("baton_checks_deferred_total").increment(1);
    }

    pub(crate) fn check_error(&self) {
        self.check_errors.fetch_add(1, Relaxed);
        metrics::counter!("baton_check_errors_total").increment(1);
    }

    pub(crate) fn detection_query(&self) {
        self.detection_queries.fetch_add(1, Relaxed);
        metrics::counter!("baton_detection_queries_total").increment(1);
    }

    pub(crate) fn claim_won(&self, outcome: Outcome, path: DetectedBy, latency: Option<Duration>) {
        self.claims_won.fetch_add(1, Relaxed);
        metrics::counter!("baton_workflows_finished_total",
            "outcome" => outcome.as_str(), "path" => path.as_str())
        .increment(1);
        if let Some(latency) = latency {
            metrics::histogram!(DETECTION_LATENCY, "path" => path.as_str()).record(latency);
        }
    }

    pub(crate) fn claim_lost(&self, path: DetectedBy) {
        self.claims_lost.fetch_add(1, Relaxed);
        metrics::counter!("baton_claims_lost_total", "path" => path.as_str()).increment(1);
    }

    pub(crate) fn sweep(&self, took: Duration, errors: bool) {
        self.sweeps.fetch_add(1, Relaxed);
        metrics::counter!("baton_sweeps_total").increment(1);
        if errors {
            metrics::counter!("baton_sweep_errors_total").increment(1);
        }
        metrics::histogram!("baton_sweep_duration_seconds").record(took);
    }
}

pub(crate) fn claim_duration(took: Duration) {
    metrics::histogram!("baton_claim_duration_seconds").record(took);
}

pub(crate) fn step_finished(state: &'static str) {
    metrics::counter!("baton_steps_finished_total", "state" => state).increment(1);
}

pub(crate) fn subscriber_dropped() {
    metrics::counter!("baton_subscribers_dropped_total").increment(1);
}

pub(crate) fn live_supervisors(delta: f64) {
    metrics::gauge!("baton_live_supervisors").increment(delta);
}

pub(crate) fn open_workflows(n: u64) {
    metrics::gauge!("baton_open_workflows").set(n as f64);
}
