//! The states a step moves through.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The state of one step.
///
/// `completed`, `discarded` and `cancelled` are terminal and absorbing; the
/// others are not.
///
/// ```
/// use baton::StepState;
/// assert!(StepState::Cancelled.is_terminal());
/// assert!(!StepState::Retryable.is_terminal());
/// assert_eq!("discarded".parse::<StepState>().unwrap(), StepState::Discarded);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Waiting for its dependencies.
    Scheduled,
    /// Ready to be picked up by a worker.
    Available,
    /// A worker is running it.
    Executing,
    /// Failed an attempt; waiting for its backoff before the next one.
    Retryable,
    /// Finished successfully.
    Completed,
    /// Failed for good (attempts exhausted, permanent error, or its owner was lost).
    Discarded,
    /// Cancelled by an operator or because a dependency did not complete.
    Cancelled,
}

impl StepState {
    /// Every state, non-terminal first.
    pub const ALL: [StepState; 7] = [
        StepState::Scheduled,
        StepState::Available,
        StepState::Executing,
        StepState::Retryable,
        StepState::Completed,
        StepState::Discarded,
        StepState::Cancelled,
    ];

    /// Whether the state is terminal (absorbing).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepState::Completed | StepState::Discarded | StepState::Cancelled
        )
    }

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Scheduled => "scheduled",
            StepState::Available => "available",
            StepState::Executing => "executing",
            StepState::Retryable => "retryable",
            StepState::Completed => "completed",
            StepState::Discarded => "discarded",
            StepState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not the name of a step state.
#[derive(Debug, thiserror::Error)]
#[error("unknown step state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for StepState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StepState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// A terminal state, as reported to [`Baton::check`](crate::Baton::check).
///
/// ```
/// use baton::{StepState, TerminalState};
/// assert_eq!(StepState::from(TerminalState::Discarded), StepState::Discarded);
/// assert!(TerminalState::try_from(StepState::Executing).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TerminalState {
    /// The step finished successfully.
    Completed,
    /// The step failed for good.
    Discarded,
    /// The step was cancelled.
    Cancelled,
}

impl From<TerminalState> for StepState {
    fn from(t: TerminalState) -> Self {
        match t {
            TerminalState::Completed => StepState::Completed,
            TerminalState::Discarded => StepState::Discarded,
            TerminalState::Cancelled => StepState::Cancelled,
        }
    }
}

impl TryFrom<StepState> for TerminalState {
    type Error = StepState;
    fn try_from(s: StepState) -> Result<Self, StepState> {
        match s {
            StepState::Completed => Ok(TerminalState::Completed),
            StepState::Discarded => Ok(TerminalState::Discarded),
            StepState::Cancelled => Ok(TerminalState::Cancelled),
            other => Err(other),
        }
    }
}
