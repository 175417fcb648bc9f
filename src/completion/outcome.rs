//! The pure decision: is a workflow settled, and with which outcome?

use crate::event::{Outcome, StepCounts};
use crate::state::StepState;

/// The verdict over a workflow's step states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// At least one step is not terminal.
    Running {
        /// How many steps are not terminal.
        outstanding: u64,
    },
    /// Every step is terminal.
    Settled {
        /// `completed` when every step completed.
        outcome: Outcome,
        /// Names of discarded and cancelled steps, sorted.
        failed_steps: Vec<String>,
        /// Steps per terminal state.
        counts: StepCounts,
    },
}

/// Decides settledness and outcome from each step's name and (overlaid) state.
///
/// A workflow with no steps is settled and `completed`.
///
/// ```
/// use baton::{Outcome, Settlement, StepState, settle};
/// let s = settle([("a", StepState::Completed), ("b", StepState::Cancelled)]);
/// match s {
///     Settlement::Settled { outcome, failed_steps, .. } => {
///         assert_eq!(outcome, Outcome::Failed);
///         assert_eq!(failed_steps, vec!["b".to_string()]);
///     }
///     _ => unreachable!(),
/// }
/// assert!(matches!(settle([("a", StepState::Retryable)]), Settlement::Running { outstanding: 1 }));
/// ```
pub fn settle<'a>(steps: impl IntoIterator<Item = (&'a str, StepState)>) -> Settlement {
    let mut counts = StepCounts::default();
    let mut failed = Vec::new();
    let mut outstanding = 0;
    for (name, state) in steps {
        match state {
            StepState::Completed => counts.completed += 1,
            StepState::Discarded => {
                counts.discarded += 1;
                failed.push(name.to_owned());
            }
            StepState::Cancelled => {
                counts.cancelled += 1;
                failed.push(name.to_owned());
            }
            _ => outstanding += 1,
        }
    }
    if outstanding > 0 {
        return Settlement::Running { outstanding };
    }
    failed.sort_unstable();
    let outcome = if failed.is_empty() {
        Outcome::Completed
    } else {
        Outcome::Failed
    };
    Settlement::Settled {
        outcome,
        failed_steps: failed,
        counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_workflow_is_completed() {
        assert_eq!(
            settle([]),
            Settlement::Settled {
                outcome: Outcome::Completed,
                failed_steps: vec![],
                counts: StepCounts::default()
            }
        );
    }

    #[test]
    fn every_non_terminal_state_keeps_it_running() {
        for st in StepState::ALL.into_iter().filter(|s| !s.is_terminal()) {
            let s = settle([("a", StepState::Completed), ("b", st)]);
            assert_eq!(s, Settlement::Running { outstanding: 1 }, "{st}");
        }
    }

    #[test]
    fn failed_steps_are_sorted_and_counted() {
        let s = settle([
            ("z", StepState::Discarded),
            ("a", StepState::Cancelled),
            ("m", StepState::Completed),
        ]);
        assert_eq!(
            s,
            Settlement::Settled {
                outcome: Outcome::Failed,
                failed_steps: vec!["a".into(), "z".into()],
                counts: StepCounts {
                    completed: 1,
                    discarded: 1,
                    cancelled: 1
                }
            }
        );
    }

    #[test]
    fn all_completed_is_completed() {
        let s = settle([("a", StepState::Completed), ("b", StepState::Completed)]);
        assert!(matches!(
            s,
            Settlement::Settled {
                outcome: Outcome::Completed,
                ..
            }
        ));
    }
}
