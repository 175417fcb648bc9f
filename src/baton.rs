//! The public handle: insert workflows, report terminal steps, announce, subscribe, wait.

mod builder;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ractor::{Actor, ActorRef, MessagingErr};
use tokio::sync::Notify;
use tracing::{Instrument, debug, info_span, warn};

pub use builder::Builder;

use crate::actors::Topic;
use crate::actors::registry::{RegistryMessage, Subscriber};
use crate::actors::supervisor::{Supervisor, SupervisorMessage};
use crate::completion::{Announcement, ClaimResult, Overlay, try_claim};
use crate::error::{Error, Result};
use crate::event::{DetectedBy, WorkflowFinished};
use crate::ids::{NodeId, StepId, WorkflowId};
use crate::metrics::{Stats, StatsSnapshot};
use crate::runner::running::Running;
use crate::state::TerminalState;
use crate::store::{Store, Transition, WorkflowStatus};
use crate::workflow::Workflow;

/// A position in the stream of announcements, for [`Baton::follow`].
///
/// ```
/// let start = baton::Cursor::START;
/// let after_17 = baton::Cursor::after_seq(17);
/// assert_ne!(start, after_17);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    position: i64,
    seq_floor: i64,
}

impl Cursor {
    /// Before every announcement.
    pub const START: Cursor = Cursor {
        position: 0,
        seq_floor: 0,
    };

    /// Announcements whose `seq` is above `seq` (e.g. to resume after the last one seen).
    pub fn after_seq(seq: i64) -> Cursor {
        Cursor {
            position: 0,
            seq_floor: seq.max(0),
        }
    }
}

/// What one [`Baton::sweep_once`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Workflows this sweep announced.
    pub announced: usize,
    /// Workflows whose announcement failed (retried next sweep).
    pub failed: usize,
    /// Workflows still open after the sweep.
    pub open_workflows: u64,
}

/// What [`Baton::cancel_workflow`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CancelOutcome {
    /// The workflow had already been announced; nothing changed.
    pub already_finished: bool,
    /// Waiting steps cancelled at once.
    pub cancelled: usize,
    /// Executing steps asked to stop; they end `cancelled`.
    pub stopping: usize,
}

/// Tunables, set through [`Builder`].
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) sweep_interval: Duration,
    pub(crate) sweep_batch: u32,
    pub(crate) supervisor_idle: Duration,
    /// How long a node's lease lasts without renewal; its runner renews it every third of that.
    pub(crate) lease: Duration,
}

/// State shared by the handle, the actors and the runner.
pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) node: NodeId,
    pub(crate) config: Config,
    pub(crate) stats: Stats,
    pub(crate) registry: ActorRef<RegistryMessage>,
    pub(crate) supervisors: DashMap<WorkflowId, ActorRef<SupervisorMessage>>,
    /// The sweeper and the notifier, stopped first at shutdown.
    pub(crate) background: std::sync::Mutex<Vec<ractor::ActorCell>>,
    /// Wakes the runner's fetcher when new work may be available.
    pub(crate) work_available: Notify,
    /// The steps this node is executing.
    pub(crate) running: Running,
    pub(crate) shut_down: AtomicBool,
    next_token: AtomicU64,
}

/// A baton instance: one node's view of a database, its actors and its subscribers.
///
/// Cheap to clone; every clone is the same instance.
///
/// ```no_run
/// use baton::{Baton, Step, Workflow};
/// # async fn run() -> baton::Result<()> {
/// let baton = Baton::builder().database_url("sqlite:baton.db").migrate(true).connect().await?;
/// let wf = Workflow::new("hello").step(Step::new("greet", "print"));
/// let id = baton.insert_workflow(wf).await?;
/// # let _ = id;
/// baton.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Baton {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Baton {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Baton")
            .field("node", &self.inner.node)
            .field("backend", &self.inner.store.backend())
            .finish()
    }
}

impl Baton {
    /// Starts configuring a baton instance.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// This instance's node id (fresh per process incarnation).
    pub fn node(&self) -> &NodeId {
        &self.inner.node
    }

    /// Which backend this instance uses: `"postgres"` or `"sqlite"`.
    pub fn backend(&self) -> &'static str {
        self.inner.store.backend()
    }

    /// Counters kept by this instance.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Inserts a workflow and all its steps in one transaction.
    ///
    /// A workflow with no steps is announced `completed` at once.
    ///
    /// # Errors
    /// [`Error::InvalidWorkflow`] for a bad definition (nothing is written), or a database error.
    pub async fn insert_workflow(&self, workflow: Workflow) -> Result<WorkflowId> {
        workflow.validate()?;
        self.inner.store.insert_workflow(&workflow).await?;
        let id = workflow.id;
        if workflow.steps.is_empty() {
            // Nothing will ever call check for it: announce now (the sweep is the backstop).
            if let Err(e) = self.announce_by(id, DetectedBy::Prompt).await {
                warn!(workflow_id = %id, error = %e, "announcing an empty workflow failed; the sweep will retry");
            }
        } else {
            self.inner.work_available.notify_waiters();
        }
        Ok(id)
    }

    /// Reports that `step` of `workflow` reached `state`. The prompt detection path.
    ///
    /// Call it after every terminal transition, after (or, for hosts that write late, before)
    /// the state is committed: `state` is overlaid on what the database reports. It never fails
    /// and never waits on the database: errors are logged and counted, and the sweep announces
    /// anything a failed check missed.
    pub async fn check(&self, workflow: WorkflowId, step: StepId, state: TerminalState) {
        self.inner.stats.check();
        let span =
            info_span!("baton.check", workflow_id = %workflow, step_id = %step, state = ?state);
        async {
            let mut msg = SupervisorMessage::StepTerminal {
                step_id: step,
                state,
                at: Instant::now(),
            };
            for _ in 0..3 {
                let sup = match self.supervisor(workflow).await {
                    Ok(sup) => sup,
                    Err(e) => {
                        self.inner.stats.check_error();
                        warn!(error = %e, "check could not reach a supervisor; the sweep will announce");
                        return;
                    }
                };
                match sup.send_message(msg) {
                    Ok(()) => return,
                    Err(MessagingErr::SendErr(back)) => {
                        // The supervisor stopped between lookup and send: forget it, try a new one.
                        self.inner
                            .supervisors
                            .remove_if(&workflow, |_, r| r.get_id() == sup.get_id());
                        msg = back;
                    }
                    Err(_) => break,
                }
            }
            self.inner.stats.check_error();
            warn!("check could not deliver its report; the sweep will announce");
        }
        .instrument(span)
        .await
    }

    async fn supervisor(&self, wf: WorkflowId) -> Result<ActorRef<SupervisorMessage>> {
        if let Some(sup) = self.inner.supervisors.get(&wf) {
            return Ok(sup.clone());
        }
        if self.inner.shut_down.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        let (sup, _) = Actor::spawn(None, Supervisor::new(self.inner.clone()), wf)
            .await
            .map_err(|e| Error::Actor {
                context: "spawning a workflow supervisor",
                reason: e.to_string(),
            })?;
        // Two checks may race to spawn: the first one in the map wins, the other stops its own.
        let winner = self
            .inner
            .supervisors
            .entry(wf)
            .or_insert_with(|| sup.clone())
            .clone();
        if winner.get_id() != sup.get_id() {
            sup.stop(None);
        }
        Ok(winner)
    }

    /// Announces `workflow` if it has settled: the backstop path, reading the database only.
    ///
    /// Returns [`Announcement::Finished`] when this call made the announcement, and
    /// [`Announcement::Noop`] when the workflow is still running or was already announced.
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`] for an unknown id, or a database error.
    pub async fn announce(&self, workflow: WorkflowId) -> Result<Announcement> {
        self.announce_by(workflow, DetectedBy::Sweep).await
    }

    pub(crate) async fn announce_by(
        &self,
        workflow: WorkflowId,
        detected_by: DetectedBy,
    ) -> Result<Announcement> {
        let result = self
            .inner
            .claim(workflow, &mut Overlay::new(), detected_by, None)
            .await?;
        match result {
            ClaimResult::Won(event) => Ok(Announcement::Finished(Box::new(event))),
            ClaimResult::Unknown => Err(Error::WorkflowNotFound(workflow)),
            ClaimResult::NotSettled | ClaimResult::Lost => Ok(Announcement::Noop),
        }
    }

    /// Runs one sweep now: announces every settled, unannounced workflow (in pages of
    /// `sweep_batch`, at most 20 pages). The sweeper actor calls this on its timer.
    ///
    /// # Errors
    /// A database error while listing settled workflows; failures to announce single
    /// workflows are logged and counted in [`SweepReport::failed`].
    pub async fn sweep_once(&self) -> Result<SweepReport> {
        const MAX_PAGES: usize = 20;
        let batch = self.inner.config.sweep_batch;
        let mut report = SweepReport::default();
        for _ in 0..MAX_PAGES {
            let ids = self.inner.store.settled_open_workflows(batch).await?;
            let mut progressed = 0;
            for id in &ids {
                match self.announce_by(*id, DetectedBy::Sweep).await {
                    Ok(Announcement::Finished(_)) => {
                        report.announced += 1;
                        progressed += 1;
                    }
                    Ok(Announcement::Noop) => progressed += 1,
                    Err(e) => {
                        report.failed += 1;
                        warn!(workflow_id = %id, error = %e, "sweep: announcing failed; retrying next tick");
                    }
                }
            }
            // A short page means we have seen them all; a page of failures means stop for now.
            if (ids.len() as u32) < batch || progressed == 0 {
                break;
            }
        }
        report.open_workflows = self.inner.store.open_workflows().await?;
        crate::metrics::open_workflows(report.open_workflows);
        Ok(report)
    }

    /// Subscribes an actor to finished workflows on `topic`. Its message type must be buildable
    /// from [`WorkflowFinished`]. The subscription is in place when this returns.
    ///
    /// [`Topic::Workflow`] is the actor's [`wait_finished`](Self::wait_finished): interest is
    /// registered first and the claim read afterwards, so the actor gets that workflow's event
    /// exactly once — the stored one if it was announced before the call — and the subscription
    /// ends with it. The id may belong to a workflow not inserted yet.
    ///
    /// # Errors
    /// [`Error::Actor`] when the registry is gone (the instance was shut down). For
    /// [`Topic::Workflow`], a database error reading the claim (the subscription stays in place
    /// and hears a future announcement).
    pub async fn subscribe<M>(&self, actor: ActorRef<M>, topic: Topic) -> Result<()>
    where
        M: ractor::Message + From<WorkflowFinished>,
    {
        let actor_id = actor.get_id();
        let one = match &topic {
            Topic::Workflow(id) => Some(*id),
            _ => None,
        };
        let subscriber = Subscriber::new(actor);
        ractor::call_t!(
            self.inner.registry,
            |reply| RegistryMessage::Subscribe {
                subscriber,
                topic,
                reply
            },
            5_000
        )
        .map_err(|e| Error::Actor {
            context: "subscribing",
            reason: e.to_string(),
        })?;
        if let Some(id) = one
            && let Some(event) = self.inner.store.completion(id).await?
        {
            let _ = self.inner.registry.send_message(RegistryMessage::Settle {
                actor: actor_id,
                event,
            });
        }
        Ok(())
    }

    /// Removes every subscription of `actor`.
    pub fn unsubscribe<M: ractor::Message>(&self, actor: &ActorRef<M>) {
        let _ = self
            .inner
            .registry
            .send_message(RegistryMessage::Unsubscribe {
                actor: actor.get_id(),
            });
    }

    /// Waits until `workflow` is announced and returns the event; returns the stored event at
    /// once for a workflow announced long ago.
    ///
    /// Interest is registered before the database is read, so an announcement at any instant
    /// around the call is seen.
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`] at once for an unknown id; [`Error::Timeout`] after `timeout`.
    ///
    /// # Cancel Safety
    /// Cancel-safe: dropping the future leaves at most a waiter entry that the next
    /// announcement of that workflow clears.
    pub async fn wait_finished(
        &self,
        workflow: WorkflowId,
        timeout: Duration,
    ) -> Result<WorkflowFinished> {
        let deadline = tokio::time::Instant::now() + timeout;
        let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        ractor::call_t!(
            self.inner.registry,
            |reply| RegistryMessage::Wait {
                workflow_id: workflow,
                token,
                waiter: tx,
                reply
            },
            5_000
        )
        .map_err(|e| Error::Actor {
            context: "registering a waiter",
            reason: e.to_string(),
        })?;
        let unwait = || {
            let _ = self.inner.registry.send_message(RegistryMessage::Unwait {
                workflow_id: workflow,
                token,
            });
        };
        let mut first = true;
        loop {
            // Another node may have claimed it: the database is the truth, re-read it now and then.
            match self.inner.store.completion(workflow).await {
                Ok(Some(done)) => {
                    unwait();
                    return Ok(done);
                }
                Ok(None) if first => {
                    if self.inner.store.status(workflow).await?.is_none() {
                        unwait();
                        return Err(Error::WorkflowNotFound(workflow));
                    }
                }
                Ok(None) => {}
                Err(e) => debug!(error = %e, "wait_finished: reading the claim failed; retrying"),
            }
            first = false;
            let poll = deadline.min(tokio::time::Instant::now() + self.inner.config.sweep_interval);
            match tokio::time::timeout_at(poll, &mut rx).await {
                Ok(Ok(event)) => return Ok(event),
                Ok(Err(_)) => return Err(Error::Shutdown),
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    unwait();
                    return Err(Error::Timeout(timeout));
                }
                Err(_) => {}
            }
        }
    }

    /// Cancels a workflow: every waiting step becomes `cancelled` now; executing ones are asked
    /// to stop (their handler sees [`StepContext::cancelled`](crate::StepContext::cancelled)) and
    /// end `cancelled`. The workflow is then announced `failed` once, listing the cancelled steps.
    /// Cancelling an announced workflow changes nothing and says so.
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`] for an unknown id, or a database error.
    pub async fn cancel_workflow(&self, workflow: WorkflowId) -> Result<CancelOutcome> {
        let cancelled = self.inner.store.cancel_workflow(workflow).await?;
        for step in &cancelled.executing {
            self.inner.running.cancel(step);
        }
        self.report(&cancelled.transitions).await;
        Ok(CancelOutcome {
            already_finished: cancelled.already_finished,
            cancelled: cancelled.transitions.len(),
            stopping: cancelled.executing.len(),
        })
    }

    /// Gives a discarded or cancelled step (whose dependencies completed) of a running workflow
    /// one more attempt.
    ///
    /// # Errors
    /// [`Error::WorkflowClosed`] once the workflow was announced; [`Error::WorkflowNotFound`];
    /// [`Error::InvalidWorkflow`] when the step is not discarded or cancelled.
    pub async fn retry_step(&self, workflow: WorkflowId, step_name: &str) -> Result<()> {
        self.inner.store.retry_step(workflow, step_name).await?;
        self.inner.work_available.notify_waiters();
        Ok(())
    }

    /// Deletes workflows announced more than `older_than` ago — their steps, then their claim
    /// rows — in batches of `batch`. Unannounced workflows are never touched, however old.
    /// Returns how many workflows were deleted.
    ///
    /// # Errors
    /// A database error (batches already deleted stay deleted).
    pub async fn prune(&self, older_than: Duration, batch: u32) -> Result<u64> {
        let batch = batch.max(1);
        let mut total = 0;
        loop {
            let n = self.inner.store.prune(older_than, batch).await?;
            total += n;
            if n < u64::from(batch) {
                return Ok(total);
            }
        }
    }

    /// Counts by state, and the announcement once finished.
    ///
    /// # Errors
    /// [`Error::WorkflowNotFound`] for an unknown id, or a database error.
    pub async fn status(&self, workflow: WorkflowId) -> Result<WorkflowStatus> {
        self.inner
            .store
            .status(workflow)
            .await?
            .ok_or(Error::WorkflowNotFound(workflow))
    }

    /// Follows announcements made by any process: returns those after `cursor`, in the order
    /// they became visible, and the cursor to pass next time. Nothing is ever passed over, even
    /// on PostgreSQL where claims can commit out of `seq` order. Start with [`Cursor::START`]
    /// (everything) or [`Baton::cursor_now`] (from now on).
    ///
    /// ```no_run
    /// # async fn run(baton: baton::Baton) -> baton::Result<()> {
    /// let mut cursor = baton::Cursor::START;
    /// loop {
    ///     let (events, next) = baton.follow(cursor, 500).await?;
    ///     for e in &events {
    ///         println!("{} {}", e.workflow_id, e.outcome.as_str());
    ///     }
    ///     cursor = next;
    ///     if events.is_empty() {
    ///         tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    ///     }
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// A database error.
    pub async fn follow(
        &self,
        cursor: Cursor,
        limit: u32,
    ) -> Result<(Vec<WorkflowFinished>, Cursor)> {
        let rows = self
            .inner
            .store
            .follow(cursor.position, cursor.seq_floor, limit)
            .await?;
        let mut next = cursor;
        let events = rows
            .into_iter()
            .map(|(event, position)| {
                next.position = next.position.max(position);
                event
            })
            .collect();
        Ok((events, next))
    }

    /// A cursor for [`follow`](Self::follow) that skips every announcement already made.
    ///
    /// # Errors
    /// A database error.
    pub async fn cursor_now(&self) -> Result<Cursor> {
        Ok(Cursor {
            position: self.inner.store.head_position().await?,
            seq_floor: 0,
        })
    }

    /// Announcements after position `seq` of the completions table, in `seq` order: a listing
    /// of what is stored. To follow new announcements as they come, use [`follow`](Self::follow).
    ///
    /// # Errors
    /// A database error.
    pub async fn completions_after(&self, seq: i64, limit: u32) -> Result<Vec<WorkflowFinished>> {
        self.inner.store.completions_after(seq, limit).await
    }

    /// Has the workflow's supervisor (spawned if need be) decide again whether it has settled:
    /// after a stale attempt on this node, whose step may have ended elsewhere while detection
    /// here was waiting for it.
    pub(crate) async fn nudge(&self, workflow: WorkflowId) {
        match self.supervisor(workflow).await {
            Ok(sup) => {
                let _ = sup.send_message(SupervisorMessage::Reevaluate);
            }
            Err(e) => {
                debug!(workflow_id = %workflow, error = %e, "nudge: no supervisor; the sweep will look")
            }
        }
    }

    /// Reports every terminal transition a committed write made. The single path from a
    /// terminal write to the claim.
    ///
    /// A step whose write moved a waiting dependent along cannot have settled its workflow (the
    /// dependent is outstanding, and its own end is reported after this commit): its check is
    /// left out, which spares a fan-out/fan-in workflow a detection query per inner step.
    pub(crate) async fn report(&self, transitions: &[Transition]) {
        for t in transitions {
            crate::metrics::step_finished(crate::state::StepState::from(t.state).as_str());
            if t.dependents_waiting {
                self.inner.stats.check_deferred();
                continue;
            }
            self.check(t.workflow_id, t.step_id, t.state).await;
        }
    }

    /// Stops the sweeper, the notifier, the supervisors and the registry, and closes the
    /// database pool.
    pub async fn shutdown(&self) {
        if self.inner.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let background = self
            .inner
            .background
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default();
        for actor in background {
            let _ = actor
                .stop_and_wait(None, Some(Duration::from_secs(10)))
                .await;
        }
        let sups: Vec<_> = self
            .inner
            .supervisors
            .iter()
            .map(|e| e.value().clone())
            .collect();
        for sup in sups {
            let _ = sup.stop_and_wait(None, Some(Duration::from_secs(5))).await;
        }
        self.inner.supervisors.clear();
        let _ = self
            .inner
            .registry
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        self.inner.store.close().await;
    }
}

impl Inner {
    /// Claims `wf` if settled and, when this call won, publishes the event and records metrics.
    pub(crate) async fn claim(
        &self,
        wf: WorkflowId,
        overlay: &mut Overlay,
        detected_by: DetectedBy,
        last_report: Option<Instant>,
    ) -> Result<ClaimResult> {
        let result = try_claim(
            &self.store,
            wf,
            overlay,
            detected_by,
            &self.node,
            &self.stats,
        )
        .await?;
        if let ClaimResult::Won(event) = &result {
            self.stats
                .claim_won(event.outcome, detected_by, last_report.map(|t| t.elapsed()));
            tracing::info!(
                workflow_id = %wf,
                name = %event.name,
                outcome = event.outcome.as_str(),
                failed = event.failed_steps.len(),
                path = detected_by.as_str(),
                "workflow finished"
            );
            self.publish(event.clone());
        }
        Ok(result)
    }

    /// Hands an announcement to this node's registry (which drops repeats).
    pub(crate) fn publish(&self, event: WorkflowFinished) {
        let _ = self
            .registry
            .send_message(RegistryMessage::Publish(Arc::new(event)));
    }
}
