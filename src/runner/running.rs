//! The steps this node is executing right now: by step, for cancellation signals, and by
//! workflow, so that detection can wait for a workflow that cannot have settled yet.
//!
//! While one of a workflow's steps executes here, the workflow is not settled, and that step's end
//! will bring a report to this node's supervisor (a terminal transition is reported; a stale
//! attempt nudges it). A supervisor that finds a step of its workflow here can therefore skip its
//! detection query: in a wide workflow this node runs many siblings at once, and every report but
//! the one ending the last of them needs no query. A step leaves this set *before* its end is
//! reported, so the report that may settle the workflow never finds its own step here.

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::ids::{StepId, WorkflowId};

/// The steps executing on this node.
#[derive(Default)]
pub(crate) struct Running {
    tokens: DashMap<StepId, CancellationToken>,
    by_workflow: DashMap<WorkflowId, Vec<StepId>>,
}

impl Running {
    /// Records an attempt that has started; `token` stops its handler cooperatively.
    pub(crate) fn start(&self, wf: WorkflowId, step: StepId, token: CancellationToken) {
        self.tokens.insert(step, token);
        self.by_workflow.entry(wf).or_default().push(step);
    }

    /// Forgets an attempt that has ended (before its end is reported).
    pub(crate) fn finish(&self, wf: WorkflowId, step: StepId) {
        self.tokens.remove(&step);
        if let Some(mut steps) = self.by_workflow.get_mut(&wf) {
            steps.retain(|s| *s != step);
        }
        self.by_workflow.remove_if(&wf, |_, steps| steps.is_empty());
    }

    /// Asks the handler of `step`, if it runs here, to stop.
    pub(crate) fn cancel(&self, step: &StepId) {
        if let Some(token) = self.tokens.get(step) {
            token.cancel();
        }
    }

    /// Whether a step of `wf` is executing on this node.
    pub(crate) fn has_workflow(&self, wf: WorkflowId) -> bool {
        self.by_workflow.contains_key(&wf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workflow_is_running_until_its_last_step_here_finishes() {
        let running = Running::default();
        let (wf, other) = (WorkflowId::new(), WorkflowId::new());
        let (a, b) = (StepId::new(), StepId::new());
        let token = CancellationToken::new();
        running.start(wf, a, token.clone());
        running.start(wf, b, CancellationToken::new());
        assert!(running.has_workflow(wf));
        assert!(!running.has_workflow(other));
        running.cancel(&a);
        assert!(token.is_cancelled());
        running.finish(wf, a);
        assert!(running.has_workflow(wf));
        running.finish(wf, b);
        assert!(!running.has_workflow(wf));
        // A late or repeated finish is harmless.
        running.finish(wf, b);
        assert!(!running.has_workflow(wf));
    }
}
