//! The demo's checks: every workflow announced exactly once, to the subscriber and in the
//! completions table, and every announcement agreeing with the workflow's steps.

use std::collections::{HashMap, HashSet};

use baton::{Baton, DetectedBy, Outcome, StepState, WorkflowFinished, WorkflowId, WorkflowStatus};
use futures::{StreamExt, TryStreamExt};

use crate::failure::CliError;
use crate::recorder::Recording;
use crate::workload::Shape;

/// Completions read per query.
const PAGE: u32 = 1_000;
/// Status queries in flight at once.
const STATUS_CONCURRENCY: usize = 8;
/// Problems described in full; the rest are only counted.
const SHOWN_PROBLEMS: usize = 10;

/// What the checks found.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Workflows announced `completed`.
    pub(crate) completed: usize,
    /// Workflows announced `failed`.
    pub(crate) failed: usize,
    /// Announcements the subscriber received for the demo's workflows.
    pub(crate) announcements: usize,
    /// Of which by the prompt path.
    pub(crate) by_prompt: usize,
    /// Of which by the sweep.
    pub(crate) by_sweep: usize,
    /// Announcements beyond the first for the same workflow.
    pub(crate) duplicates: usize,
    /// Workflows never announced to the subscriber.
    pub(crate) missing: usize,
    /// Completions rows of the demo's workflows.
    pub(crate) completion_rows: usize,
    /// Workflows announced that this demo did not insert (left over from an earlier run).
    pub(crate) foreign: usize,
    /// Problems found, in full for the first few.
    pub(crate) problems: Vec<String>,
    /// How many problems were found in all.
    pub(crate) problem_count: usize,
}

impl Report {
    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < SHOWN_PROBLEMS {
            self.problems.push(text);
        }
    }
}

/// Runs every check. Database errors are errors; disagreements are problems in the report.
pub(crate) async fn verify(
    baton: &Baton,
    shape: Shape,
    expected: &[WorkflowId],
    recording: &Recording,
) -> Result<Report, CliError> {
    let mut report = Report::default();
    if let Some(e) = &recording.write_error {
        report.problem(format!("writing the events file failed: {e}"));
    }
    let ours: HashSet<&WorkflowId> = expected.iter().collect();
    report.foreign = recording
        .events
        .keys()
        .filter(|id| !ours.contains(id))
        .count();

    // To the subscriber: exactly once each.
    let mut firsts: Vec<&WorkflowFinished> = Vec::with_capacity(expected.len());
    for id in expected {
        match recording.events.get(id).map(Vec::as_slice) {
            None | Some([]) => {
                report.missing += 1;
                report.problem(format!(
                    "workflow {id} was never announced to the subscriber"
                ));
            }
            Some(events) => {
                report.announcements += events.len();
                for event in events {
                    match event.detected_by {
                        DetectedBy::Prompt => report.by_prompt += 1,
                        DetectedBy::Sweep => report.by_sweep += 1,
                    }
                }
                if events.len() > 1 {
                    report.duplicates += events.len() - 1;
                    report.problem(format!(
                        "workflow {id} was announced {} times to the subscriber",
                        events.len()
                    ));
                }
                match events[0].outcome {
                    Outcome::Completed => report.completed += 1,
                    Outcome::Failed => report.failed += 1,
                }
                firsts.push(&events[0]);
            }
        }
    }

    // In the database: exactly one completions row each.
    let rows = completion_rows(baton, expected).await?;
    for id in expected {
        let n = rows.get(id).copied().unwrap_or(0);
        report.completion_rows += n;
        if n != 1 {
            report.problem(format!("workflow {id} has {n} completions rows"));
        }
    }

    // Each announcement agrees with the steps and with the stored claim.
    let statuses: Vec<WorkflowStatus> = futures::stream::iter(firsts.iter().map(|e| e.workflow_id))
        .map(|id| baton.status(id))
        .buffered(STATUS_CONCURRENCY)
        .try_collect()
        .await
        .map_err(|e| CliError::new(format!("reading a workflow's status failed: {e}")))?;
    for (event, status) in firsts.iter().zip(&statuses) {
        if let Err(problem) = agrees(shape, event, status) {
            report.problem(format!("workflow {}: {problem}", event.workflow_id));
        }
    }
    Ok(report)
}

/// Completions rows per workflow of `expected`, read page by page from the start of the table.
async fn completion_rows(
    baton: &Baton,
    expected: &[WorkflowId],
) -> Result<HashMap<WorkflowId, usize>, CliError> {
    let mut rows: HashMap<WorkflowId, usize> = expected.iter().map(|id| (*id, 0)).collect();
    let mut cursor = 0;
    loop {
        let page = baton
            .completions_after(cursor, PAGE)
            .await
            .map_err(|e| CliError::new(format!("reading the completions table failed: {e}")))?;
        for event in &page {
            if let Some(n) = rows.get_mut(&event.workflow_id) {
                *n += 1;
            }
        }
        match page.last() {
            Some(last) if page.len() as u32 == PAGE => cursor = last.seq,
            _ => return Ok(rows),
        }
    }
}

/// Whether an announcement agrees with the workflow's steps and its stored claim.
fn agrees(shape: Shape, event: &WorkflowFinished, status: &WorkflowStatus) -> Result<(), String> {
    let count = |state: StepState| status.counts.get(state.as_str()).copied().unwrap_or(0);
    let outstanding: u64 = StepState::ALL
        .into_iter()
        .filter(|s| !s.is_terminal())
        .map(count)
        .sum();
    if outstanding > 0 {
        return Err(format!("announced with {outstanding} steps not terminal"));
    }
    let steps = (
        count(StepState::Completed),
        count(StepState::Discarded),
        count(StepState::Cancelled),
    );
    let announced = (
        event.counts.completed,
        event.counts.discarded,
        event.counts.cancelled,
    );
    if steps != announced {
        return Err(format!(
            "announced (completed, discarded, cancelled) = {announced:?} but the steps say {steps:?}"
        ));
    }
    if event.counts.total() != u64::from(shape.steps) {
        return Err(format!(
            "announced {} steps, the workflow has {}",
            event.counts.total(),
            shape.steps
        ));
    }
    if event.failed_steps.len() as u64 != event.counts.discarded + event.counts.cancelled {
        return Err(format!(
            "{} failed steps listed, but {} discarded and {} cancelled",
            event.failed_steps.len(),
            event.counts.discarded,
            event.counts.cancelled
        ));
    }
    let expected_outcome = if event.failed_steps.is_empty() {
        Outcome::Completed
    } else {
        Outcome::Failed
    };
    if event.outcome != expected_outcome {
        return Err(format!(
            "outcome {} with failed steps {:?}",
            event.outcome.as_str(),
            event.failed_steps
        ));
    }
    shape.check_failed_steps(&event.failed_steps)?;
    let Some(stored) = &status.finished else {
        return Err("announced, but no claim is stored".to_owned());
    };
    let same = stored.seq == event.seq
        && stored.outcome == event.outcome
        && stored.failed_steps == event.failed_steps
        && stored.counts == event.counts
        && stored.detected_by == event.detected_by
        && stored.node == event.node
        && (stored.finished_at - event.finished_at)
            .num_milliseconds()
            .abs()
            <= 1;
    if !same {
        return Err(format!(
            "the event differs from the stored claim: event {event:?}, stored {stored:?}"
        ));
    }
    Ok(())
}
