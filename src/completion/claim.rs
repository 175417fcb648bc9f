//! The claim: decide settledness (database state plus the caller's overlay) and make the one
//! conditional write that elects the single announcer.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use tracing::{Instrument, debug, info_span};

use super::outcome::{Settlement, settle};
use crate::error::Result;
use crate::event::{DetectedBy, WorkflowFinished};
use crate::ids::{NodeId, StepId, WorkflowId};
use crate::metrics::{self as m, Stats};
use crate::state::{StepState, TerminalState};
use crate::store::{SettlementRows, Store};

/// Terminal states reported by callers that the database may not show yet.
pub(crate) type Overlay = HashMap<StepId, TerminalState>;

/// What one attempt to claim a workflow found.
#[derive(Debug)]
pub(crate) enum ClaimResult {
    /// Some step is still non-terminal.
    NotSettled,
    /// This call made the announcement.
    Won(WorkflowFinished),
    /// Another caller already announced it.
    Lost,
    /// No such workflow.
    Unknown,
}

/// The verdict over the rows read inside the claim transaction, with the overlay applied to
/// steps the database still shows non-terminal.
pub(crate) fn decide(rows: &SettlementRows, overlay: &Overlay) -> Settlement {
    let overlaid = rows.not_completed.iter().map(|(id, name, state)| {
        let state = match overlay.get(id) {
            Some(t) if !state.is_terminal() => StepState::from(*t),
            _ => *state,
        };
        (name.as_str(), state)
    });
    match settle(overlaid) {
        Settlement::Settled {
            outcome,
            failed_steps,
            mut counts,
        } => {
            counts.completed += rows.completed;
            Settlement::Settled {
                outcome,
                failed_steps,
                counts,
            }
        }
        running => running,
    }
}

/// Tries to claim `wf`. `overlay` holds terminal states reported for steps that may still read
/// non-terminal; entries the database confirms are removed from it, so it stays small.
pub(crate) async fn try_claim(
    store: &Store,
    wf: WorkflowId,
    overlay: &mut Overlay,
    detected_by: DetectedBy,
    node: &NodeId,
    stats: &Stats,
) -> Result<ClaimResult> {
    let span = info_span!("baton.claim", workflow_id = %wf, path = detected_by.as_str());
    async move {
        let started = Instant::now();
        let believed: Vec<StepId> = overlay.keys().copied().collect();
        let outstanding = store.outstanding(wf, &believed).await?;
        stats.detection_query();
        // Entries the database now shows terminal need no overlay any more.
        if outstanding.lagging.len() < overlay.len() {
            let lagging: HashSet<StepId> = outstanding.lagging.iter().copied().collect();
            overlay.retain(|id, _| lagging.contains(id));
        }
        if outstanding.others {
            return Ok(ClaimResult::NotSettled);
        }
        let result = store.claim(wf, overlay, detected_by, node).await?;
        m::claim_duration(started.elapsed());
        if let ClaimResult::Lost = result {
            debug!("claim lost: already announced");
            stats.claim_lost(detected_by);
        }
        Ok(result)
    }
    .instrument(span)
    .await
}
