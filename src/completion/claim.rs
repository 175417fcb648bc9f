//! The claim: decide settledness (database state plus the caller's overlay) and make the one
//! conditional write that elects the single announcer.

use std::collections::HashMap;
use std::time::Instant;

use chrono::Utc;
use tracing::{Instrument, debug, info_span};

use super::outcome::{Settlement, settle};
use crate::error::Result;
use crate::event::{DetectedBy, WorkflowFinished};
use crate::ids::{NodeId, StepId, WorkflowId};
use crate::metrics::{self as m, Stats};
use crate::state::{StepState, TerminalState};
use crate::store::{NewClaim, Store};

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
            let lagging: std::collections::HashSet<StepId> =
                outstanding.lagging.iter().copied().collect();
            overlay.retain(|id, _| lagging.contains(id));
        }
        if outstanding.others {
            return Ok(ClaimResult::NotSettled);
        }
        let Some(rows) = store.settlement_rows(wf).await? else {
            return Ok(ClaimResult::Unknown);
        };
        let overlaid = rows.not_completed.iter().map(|(id, name, state)| {
            let state = match overlay.get(id) {
                Some(t) if !state.is_terminal() => StepState::from(*t),
                _ => *state,
            };
            (name.as_str(), state)
        });
        let Settlement::Settled {
            outcome,
            failed_steps,
            mut counts,
        } = settle(overlaid)
        else {
            return Ok(ClaimResult::NotSettled);
        };
        counts.completed += rows.completed;
        let finished_at = Utc::now();
        let claim = NewClaim {
            workflow_id: wf,
            name: &rows.name,
            outcome,
            failed_steps: &failed_steps,
            counts,
            detected_by,
            node,
            finished_at,
        };
        let won = store.claim(&claim).await?;
        m::claim_duration(started.elapsed());
        match won {
            Some(seq) => Ok(ClaimResult::Won(WorkflowFinished {
                workflow_id: wf,
                name: rows.name.clone(),
                outcome,
                failed_steps: failed_steps.clone(),
                counts,
                detected_by,
                node: node.clone(),
                finished_at,
                seq,
            })),
            None => {
                debug!("claim lost: already announced");
                stats.claim_lost(detected_by);
                Ok(ClaimResult::Lost)
            }
        }
    }
    .instrument(span)
    .await
}
