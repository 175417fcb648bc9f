//! Completion detection: the prompt `check`, the backstop `announce`, and the claim they share.
//!
//! ```text
//!  check(step, state) ──▶ supervisor (overlay, coalesce) ─┐
//!  sweep ──▶ announce(workflow) ──────────────────────────┤
//!                                                         ▼
//!                  settled? ── read step states (+ overlay), outcome
//!                                                         ▼
//!                  claim: INSERT … ON CONFLICT DO NOTHING (one winner)
//!                                                         ▼
//!                  winner only: publish WorkflowFinished
//! ```

mod claim;
mod outcome;

pub(crate) use claim::{ClaimResult, Overlay, decide, try_claim};
pub use outcome::{Settlement, settle};

use crate::event::WorkflowFinished;

/// What an [`announce`](crate::Baton::announce) call did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Announcement {
    /// This call claimed the workflow and published the event.
    Finished(Box<WorkflowFinished>),
    /// The workflow is still running, or was already announced.
    Noop,
}

impl Announcement {
    /// The event, when this call made the announcement.
    pub fn finished(&self) -> Option<&WorkflowFinished> {
        match self {
            Announcement::Finished(e) => Some(e),
            Announcement::Noop => None,
        }
    }
}
