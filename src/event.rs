//! The `WorkflowFinished` event that subscribers receive.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, WorkflowId};

/// How a workflow's end was detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectedBy {
    /// By [`Baton::check`](crate::Baton::check), right after a step's terminal write.
    Prompt,
    /// By the periodic sweep (the backstop for crashes, kills and missed checks).
    Sweep,
}

impl DetectedBy {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectedBy::Prompt => "prompt",
            DetectedBy::Sweep => "sweep",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        if s == "prompt" {
            DetectedBy::Prompt
        } else {
            DetectedBy::Sweep
        }
    }
}

/// Whether every step of a workflow completed.
///
/// ```
/// assert_eq!(baton::Outcome::Failed.as_str(), "failed");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every step completed.
    Completed,
    /// At least one step was discarded or cancelled.
    Failed,
}

impl Outcome {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        if s == "completed" {
            Outcome::Completed
        } else {
            Outcome::Failed
        }
    }
}

/// How many steps of a finished workflow ended in each terminal state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCounts {
    /// Steps that completed.
    pub completed: u64,
    /// Steps that failed for good.
    pub discarded: u64,
    /// Steps that were cancelled.
    pub cancelled: u64,
}

impl StepCounts {
    /// All steps of the workflow.
    pub fn total(&self) -> u64 {
        self.completed + self.discarded + self.cancelled
    }
}

/// Announced exactly once per workflow, when its last step reached a terminal state.
///
/// Serialises to one JSON object (the format of `baton demo --events-out`):
///
/// ```
/// use baton::{DetectedBy, NodeId, Outcome, StepCounts, WorkflowFinished, WorkflowId};
/// let event = WorkflowFinished {
///     workflow_id: WorkflowId::nil(),
///     name: "nightly".into(),
///     outcome: Outcome::Failed,
///     failed_steps: vec!["load".into()],
///     counts: StepCounts { completed: 2, discarded: 1, cancelled: 0 },
///     detected_by: DetectedBy::Prompt,
///     node: NodeId("node-a".into()),
///     finished_at: chrono::Utc::now(),
///     seq: 1,
/// };
/// let json = serde_json::to_value(&event).unwrap();
/// assert_eq!(json["outcome"], "failed");
/// assert_eq!(json["failed_steps"][0], "load");
/// assert_eq!(json["detected_by"], "prompt");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowFinished {
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// The workflow's name.
    pub name: String,
    /// `completed` when every step completed, `failed` otherwise.
    pub outcome: Outcome,
    /// Names of the steps that were discarded or cancelled, sorted.
    pub failed_steps: Vec<String>,
    /// Steps per terminal state.
    pub counts: StepCounts,
    /// Which path made the announcement.
    pub detected_by: DetectedBy,
    /// The node (process incarnation) that claimed the announcement.
    pub node: NodeId,
    /// When the claim was made.
    pub finished_at: DateTime<Utc>,
    /// The claim's position in the completions table (monotonic per database).
    pub seq: i64,
}
