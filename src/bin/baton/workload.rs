//! The demo workload shared by `baton demo`, `baton enqueue` and `baton worker`: the shape of a
//! demo workflow and the `demo` step handler.
//!
//! A demo workflow of M steps is a fan-out/fan-in DAG:
//!
//! ```text
//!            ┌─▶ step-1 ─┐
//!   root ────┼─▶ step-2 ─┼──▶ join        (M ≥ 3: M-2 parallel steps)
//!            └─▶ …     ──┘
//!   root ──▶ join                          (M = 2)
//!   root                                   (M = 1)
//! ```
//!
//! Every step has kind [`KIND`] and carries its failure rate and duration in its arguments, so
//! that any worker process applies them. Each attempt fails (retryably) with that probability;
//! a step gets [`MAX_ATTEMPTS`] attempts before it is discarded and its dependents cancelled.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use baton::{Baton, Runner, Step, StepContext, StepError, Workflow, WorkflowId};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::failure::CliError;

/// The step kind of every demo step, and the name of every demo workflow.
pub(crate) const KIND: &str = "demo";
/// Attempts a demo step gets before it is discarded.
pub(crate) const MAX_ATTEMPTS: u32 = 3;
/// Backoff between attempts: short, so that a demo retries quickly.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(50));
/// Workflows inserted at once.
const INSERT_CONCURRENCY: usize = 8;

/// Parses a probability for `--fail-rate`: a number within 0..=1.
pub(crate) fn probability(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a number between 0 and 1")),
    }
}

/// What one demo workflow looks like.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Shape {
    /// Steps per workflow (at least 1).
    pub(crate) steps: u32,
    /// Probability that an attempt fails.
    pub(crate) fail_rate: f64,
    /// How long each attempt works before it succeeds or fails.
    pub(crate) step_ms: u64,
}

/// The names of a demo workflow's steps, by role.
#[derive(Debug)]
struct Names {
    root: String,
    fan: Vec<String>,
    join: Option<String>,
}

impl Shape {
    fn names(&self) -> Names {
        let fan_out = self.steps.saturating_sub(2) as usize;
        let width = fan_out.to_string().len();
        Names {
            root: "root".to_owned(),
            fan: (1..=fan_out).map(|i| format!("step-{i:0width$}")).collect(),
            join: (self.steps >= 2).then(|| "join".to_owned()),
        }
    }

    /// A new demo workflow of this shape.
    pub(crate) fn workflow(&self) -> Workflow {
        let args = json!({ "fail_rate": self.fail_rate, "step_ms": self.step_ms });
        let step = |name: &str| {
            Step::new(name, KIND)
                .args(args.clone())
                .max_attempts(MAX_ATTEMPTS)
        };
        let names = self.names();
        let mut wf = Workflow::new(KIND).step(step(&names.root));
        for name in &names.fan {
            wf = wf.step(step(name).depends_on([names.root.as_str()]));
        }
        if let Some(join) = &names.join {
            let deps = if names.fan.is_empty() {
                vec![names.root.clone()]
            } else {
                names.fan.clone()
            };
            wf = wf.step(step(join).depends_on(deps));
        }
        wf
    }

    /// Checks that `failed` (an event's failed steps) is possible for this shape: sorted, known
    /// names, and closed under the cancel cascade (a failed root fails everything; a failed
    /// fan-out step fails the join).
    pub(crate) fn check_failed_steps(&self, failed: &[String]) -> Result<(), String> {
        if !failed.is_sorted() {
            return Err(format!("failed steps are not sorted: {failed:?}"));
        }
        let names = self.names();
        let all: HashSet<&str> = std::iter::once(names.root.as_str())
            .chain(names.fan.iter().map(String::as_str))
            .chain(names.join.as_deref())
            .collect();
        let failed_set: HashSet<&str> = failed.iter().map(String::as_str).collect();
        if failed_set.len() != failed.len() {
            return Err(format!("a failed step is listed twice: {failed:?}"));
        }
        if let Some(unknown) = failed_set.iter().find(|n| !all.contains(*n)) {
            return Err(format!("unknown failed step {unknown:?}"));
        }
        if failed_set.contains(names.root.as_str()) && failed_set.len() != all.len() {
            return Err(format!(
                "root failed but only {} of {} steps are listed as failed",
                failed_set.len(),
                all.len()
            ));
        }
        if let Some(join) = &names.join
            && !failed_set.is_empty()
            && !failed_set.contains(join.as_str())
        {
            return Err(format!("{failed:?} failed but the join step is not listed"));
        }
        Ok(())
    }
}

/// What the `demo` handler did in this process.
#[derive(Debug, Default)]
pub(crate) struct HandlerStats {
    /// Attempts run.
    pub(crate) attempts: AtomicU64,
    /// Attempts that failed on purpose.
    pub(crate) failures: AtomicU64,
}

impl HandlerStats {
    /// (attempts, failures) so far.
    pub(crate) fn read(&self) -> (u64, u64) {
        (self.attempts.load(Relaxed), self.failures.load(Relaxed))
    }
}

/// One attempt of a demo step: work for `step_ms`, then fail with probability `fail_rate`.
async fn run_step(ctx: StepContext, stats: Arc<HandlerStats>) -> Result<(), StepError> {
    let fail_rate = ctx
        .args
        .get("fail_rate")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let step_ms = ctx.args.get("step_ms").and_then(Value::as_u64).unwrap_or(0);
    stats.attempts.fetch_add(1, Relaxed);
    if step_ms > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(step_ms)) => {}
            // `baton cancel`: stop working now (the step ends `cancelled` whatever we return).
            _ = ctx.cancelled() => return Err(StepError::permanent("cancelled while working")),
        }
    }
    if rand::random::<f64>() < fail_rate {
        stats.failures.fetch_add(1, Relaxed);
        return Err(StepError::retryable(format!(
            "injected failure (attempt {} of {})",
            ctx.attempt, ctx.max_attempts
        )));
    }
    Ok(())
}

/// A runner with the `demo` handler, `concurrency` workers and a short retry backoff.
pub(crate) fn runner(concurrency: usize, stats: Arc<HandlerStats>) -> baton::runner::Builder {
    Runner::builder()
        .concurrency(concurrency)
        .retry_backoff(RETRY_BACKOFF.0, RETRY_BACKOFF.1)
        .handler(KIND, move |ctx: StepContext| run_step(ctx, stats.clone()))
}

/// The most steps `demo` and `enqueue` build at once (workflows × steps): they are built in
/// memory before they are inserted.
const MAX_TOTAL_STEPS: u64 = 2_000_000;

/// Refuses a workload too large to build in memory, with a clear error.
pub(crate) fn check_size(workflows: u32, steps: u32) -> Result<(), CliError> {
    let total = u64::from(workflows) * u64::from(steps);
    if total > MAX_TOTAL_STEPS {
        return Err(CliError::new(format!(
            "{workflows} workflows × {steps} steps is {total} steps; at most {MAX_TOTAL_STEPS} \
             at once (run enqueue several times for more)"
        )));
    }
    Ok(())
}

/// Database connections for `concurrency` workers plus detection and the sweep.
pub(crate) fn pool_size(concurrency: u32) -> u32 {
    (concurrency + 4).min(50)
}

/// `count` new workflows of `shape`.
pub(crate) fn workflows(shape: Shape, count: u32) -> Vec<Workflow> {
    (0..count).map(|_| shape.workflow()).collect()
}

/// Inserts `workflows`, a few at a time; returns their ids.
pub(crate) async fn insert(
    baton: &Baton,
    workflows: Vec<Workflow>,
) -> Result<Vec<WorkflowId>, CliError> {
    futures::stream::iter(workflows)
        .map(|wf| baton.insert_workflow(wf))
        .buffer_unordered(INSERT_CONCURRENCY)
        .try_collect()
        .await
        .map_err(|e| CliError::new(format!("inserting a demo workflow failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(steps: u32) -> Shape {
        Shape {
            steps,
            fail_rate: 0.1,
            step_ms: 0,
        }
    }

    #[test]
    fn workloads_too_large_to_build_are_refused() {
        assert!(check_size(200, 20).is_ok());
        assert!(check_size(2_000, 1_000).is_ok());
        let err = check_size(1_000_000, 1_000_000).unwrap_err().to_string();
        assert!(err.contains("1000000000000 steps"), "{err}");
    }

    #[test]
    fn shapes_are_valid_fan_out_fan_in_dags() {
        for steps in [1, 2, 3, 10, 101] {
            let wf = shape(steps).workflow();
            wf.validate().unwrap();
            assert_eq!(wf.steps().len(), steps as usize);
            assert_eq!(wf.steps()[0].name(), "root");
        }
        let names: Vec<_> = shape(12)
            .workflow()
            .steps()
            .iter()
            .map(|s| s.name().to_owned())
            .collect();
        assert_eq!(names[1], "step-01");
        assert_eq!(names[11], "join");
    }

    #[test]
    fn failed_steps_must_follow_the_cascade() {
        let s = shape(4);
        assert!(s.check_failed_steps(&[]).is_ok());
        assert!(s.check_failed_steps(&["join".into()]).is_ok());
        assert!(
            s.check_failed_steps(&["join".into(), "step-1".into()])
                .is_ok()
        );
        let all = ["join", "root", "step-1", "step-2"].map(String::from);
        assert!(s.check_failed_steps(&all).is_ok());
        assert!(s.check_failed_steps(&["step-1".into()]).is_err());
        assert!(
            s.check_failed_steps(&["join".into(), "root".into()])
                .is_err()
        );
        assert!(s.check_failed_steps(&["nope".into()]).is_err());
        assert!(
            s.check_failed_steps(&["step-1".into(), "join".into()])
                .is_err()
        );
        assert!(shape(1).check_failed_steps(&["root".into()]).is_ok());
    }

    #[test]
    fn fail_rate_must_be_a_probability() {
        assert_eq!(probability("0.3"), Ok(0.3));
        assert_eq!(probability("1"), Ok(1.0));
        assert!(probability("1.5").is_err());
        assert!(probability("-0.1").is_err());
        assert!(probability("NaN").is_err());
        assert!(probability("x").is_err());
    }
}
