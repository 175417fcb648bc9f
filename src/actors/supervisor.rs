//! The workflow supervisor: one actor per workflow with recent reports on this node.
//!
//! It keeps the overlay (terminal states reported by `check` that the database may not show
//! yet), coalesces a burst of sibling reports into one detection query, claims when the
//! workflow has settled, and stops when the workflow is announced or has been idle.

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::baton::Inner;
use crate::completion::{ClaimResult, Overlay};
use crate::event::DetectedBy;
use crate::ids::{StepId, WorkflowId};
use crate::metrics;
use crate::state::TerminalState;
use crate::store::transient_backoff;

/// Database errors in a row after which the supervisor leaves the workflow to the sweep.
const MAX_RETRIES: u32 = 8;

/// A pending `send_after` to this supervisor.
type Timer = JoinHandle<Result<(), MessagingErr<SupervisorMessage>>>;

/// Messages to a workflow supervisor.
pub(crate) enum SupervisorMessage {
    /// A step of this workflow reached a terminal state.
    StepTerminal {
        step_id: StepId,
        state: TerminalState,
        /// When the report was made (just after the terminal write).
        at: Instant,
    },
    /// Decide whether the workflow has settled (sent to itself, after the pending reports).
    Evaluate,
    /// Decide again, whether or not an evaluation is queued (a stale attempt here ended).
    Reevaluate,
    /// Stop if nothing was reported for the idle period.
    IdleCheck,
}

/// The supervisor actor.
pub(crate) struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }
}

/// A supervisor's view of its workflow.
pub(crate) struct SupervisorState {
    workflow_id: WorkflowId,
    overlay: Overlay,
    /// An `Evaluate` is queued: later reports ride on it.
    evaluate_queued: bool,
    /// The latest report, for detection latency.
    last_report: Option<Instant>,
    last_activity: Instant,
    failures: u32,
    /// The pending idle check and the pending retry of a failed evaluation. A `send_after` task
    /// owns a reference to this actor's cell (mailboxes and all) until it fires, so both are
    /// aborted when the supervisor stops: otherwise every announced workflow's supervisor stays
    /// in memory for the whole idle period (thousands of them at a few hundred workflows/s).
    idle_timer: Option<Timer>,
    retry_timer: Option<Timer>,
}

impl SupervisorState {
    fn record(&mut self, step_id: StepId, state: TerminalState, at: Instant) {
        self.overlay.insert(step_id, state);
        self.last_report = Some(self.last_report.map_or(at, |t| t.max(at)));
        self.last_activity = Instant::now();
    }
}

impl Supervisor {
    /// Removes this supervisor from the lookup map (only if the entry is still this actor).
    fn forget(&self, myself: &ActorRef<SupervisorMessage>, wf: WorkflowId) {
        self.inner
            .supervisors
            .remove_if(&wf, |_, r| r.get_id() == myself.get_id());
    }

    async fn evaluate(&self, myself: &ActorRef<SupervisorMessage>, state: &mut SupervisorState) {
        state.evaluate_queued = false;
        let wf = state.workflow_id;
        if self.inner.running.has_workflow(wf) {
            // A step of this workflow executes on this node: it has not settled, and the end of
            // that step brings a report (or a nudge) here. No query needed yet.
            self.inner.stats.check_deferred();
            return;
        }
        let result = self
            .inner
            .claim(
                wf,
                &mut state.overlay,
                DetectedBy::Prompt,
                state.last_report,
            )
            .await;
        match result {
            Ok(ClaimResult::NotSettled) => state.failures = 0,
            Ok(ClaimResult::Won(_)) | Ok(ClaimResult::Lost) => {
                self.forget(myself, wf);
                myself.stop(None);
            }
            Ok(ClaimResult::Unknown) => {
                self.inner.stats.check_error();
                warn!(workflow_id = %wf, "check reported a step of an unknown workflow");
                self.forget(myself, wf);
                myself.stop(None);
            }
            Err(e) => {
                self.inner.stats.check_error();
                state.failures += 1;
                if state.failures > MAX_RETRIES {
                    warn!(workflow_id = %wf, error = %e, "detection keeps failing; leaving the workflow to the sweep");
                    self.forget(myself, wf);
                    myself.stop(None);
                    return;
                }
                let delay = transient_backoff(state.failures);
                warn!(workflow_id = %wf, error = %e, retry_in = ?delay, "detection failed; will retry");
                state.evaluate_queued = true;
                state.retry_timer = Some(myself.send_after(delay, || SupervisorMessage::Evaluate));
            }
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = WorkflowId;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        workflow_id: WorkflowId,
    ) -> Result<Self::State, ActorProcessingErr> {
        metrics::live_supervisors(1.0);
        let idle_timer = myself.send_after(self.inner.config.supervisor_idle, || {
            SupervisorMessage::IdleCheck
        });
        Ok(SupervisorState {
            workflow_id,
            overlay: Overlay::new(),
            evaluate_queued: false,
            last_report: None,
            last_activity: Instant::now(),
            failures: 0,
            idle_timer: Some(idle_timer),
            retry_timer: None,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.forget(&myself, state.workflow_id);
        for timer in [state.idle_timer.take(), state.retry_timer.take()]
            .into_iter()
            .flatten()
        {
            timer.abort();
        }
        metrics::live_supervisors(-1.0);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMessage::StepTerminal {
                step_id,
                state: st,
                at,
            } => {
                state.record(step_id, st, at);
                if !state.evaluate_queued {
                    // Queued behind the reports already in the mailbox: one query for the burst.
                    state.evaluate_queued = true;
                    if myself.send_message(SupervisorMessage::Evaluate).is_err() {
                        // Draining: no more self-messages, decide now.
                        self.evaluate(&myself, state).await;
                    }
                }
            }
            SupervisorMessage::Evaluate => {
                if state.evaluate_queued {
                    self.evaluate(&myself, state).await;
                }
            }
            SupervisorMessage::Reevaluate => self.evaluate(&myself, state).await,
            SupervisorMessage::IdleCheck => {
                let idle = self.inner.config.supervisor_idle;
                if state.last_activity.elapsed() >= idle && !state.evaluate_queued {
                    // Leave the map first so new reports spawn a fresh supervisor, then process
                    // what is already queued before stopping.
                    self.forget(&myself, state.workflow_id);
                    let _ = myself.drain();
                } else {
                    state.idle_timer =
                        Some(myself.send_after(idle, || SupervisorMessage::IdleCheck));
                }
            }
        }
        Ok(())
    }
}
