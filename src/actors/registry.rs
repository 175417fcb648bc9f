//! The per-instance registry of subscriber actors and waiters.
//!
//! Publishing never blocks: each delivery is a non-blocking send to the subscriber's own
//! mailbox, so a slow subscriber delays only itself. A subscriber whose actor has stopped is
//! dropped on the next delivery (and counted).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use crate::event::WorkflowFinished;
use crate::ids::WorkflowId;
use crate::metrics;

/// Which finished workflows a subscriber hears about.
///
/// ```
/// use baton::{Topic, WorkflowId};
/// let all = Topic::All;
/// let one = Topic::Workflow(WorkflowId::nil());
/// let by_name = Topic::Name("nightly".into());
/// assert_ne!(all, by_name);
/// # let _ = one;
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Every workflow.
    All,
    /// One workflow, by id.
    Workflow(WorkflowId),
    /// Every workflow with this name.
    Name(String),
}

impl Topic {
    fn matches(&self, event: &WorkflowFinished) -> bool {
        match self {
            Topic::All => true,
            Topic::Workflow(id) => *id == event.workflow_id,
            Topic::Name(name) => *name == event.name,
        }
    }
}

type Deliver = Box<dyn Fn(WorkflowFinished) -> bool + Send + Sync>;

/// A subscribed actor: its cell (for identity) and how to hand it an event.
pub(crate) struct Subscriber {
    pub(crate) cell: ActorCell,
    pub(crate) deliver: Deliver,
}

impl Subscriber {
    /// Wraps an actor whose message type can be built from the event.
    pub(crate) fn new<M>(actor: ActorRef<M>) -> Self
    where
        M: ractor::Message + From<WorkflowFinished>,
    {
        let cell = actor.get_cell();
        let deliver: Deliver = Box::new(move |e| actor.send_message(M::from(e)).is_ok());
        Self { cell, deliver }
    }
}

/// Messages to the registry.
pub(crate) enum RegistryMessage {
    /// Add a subscriber on a topic; the reply confirms it is in place.
    Subscribe {
        subscriber: Subscriber,
        topic: Topic,
        reply: RpcReplyPort<()>,
    },
    /// Remove every subscription of this actor.
    Unsubscribe { actor: ractor::ActorId },
    /// Register a one-shot waiter for a workflow; the reply confirms it is in place.
    Wait {
        workflow_id: WorkflowId,
        token: u64,
        waiter: oneshot::Sender<WorkflowFinished>,
        reply: RpcReplyPort<()>,
    },
    /// Forget a waiter that no longer waits.
    Unwait { workflow_id: WorkflowId, token: u64 },
    /// Deliver a finished workflow to every matching subscriber and waiter.
    Publish(Arc<WorkflowFinished>),
    /// A one-workflow subscriber joined after its workflow was announced: hand it the stored
    /// event, unless a publication already spent its subscription.
    Settle {
        actor: ractor::ActorId,
        event: WorkflowFinished,
    },
}

/// The registry actor.
pub(crate) struct Registry;

/// How many announced workflow ids the registry remembers to drop repeats (the same claim
/// arriving from this node's claim and from the cross-node channel, or from a catch-up).
const REMEMBERED: usize = 16_384;

/// The registry's subscribers and waiters.
#[derive(Default)]
pub(crate) struct RegistryState {
    subscribers: Vec<(Topic, Subscriber)>,
    waiters: HashMap<WorkflowId, Vec<(u64, oneshot::Sender<WorkflowFinished>)>>,
    delivered: HashSet<WorkflowId>,
    delivered_order: VecDeque<WorkflowId>,
}

impl RegistryState {
    /// Records a delivery; false when this workflow was already delivered.
    fn first_delivery(&mut self, id: WorkflowId) -> bool {
        if !self.delivered.insert(id) {
            return false;
        }
        self.delivered_order.push_back(id);
        if self.delivered_order.len() > REMEMBERED
            && let Some(old) = self.delivered_order.pop_front()
        {
            self.delivered.remove(&old);
        }
        true
    }

    fn publish(&mut self, event: &WorkflowFinished) {
        if !self.first_delivery(event.workflow_id) {
            return;
        }
        let mut dropped = 0;
        self.subscribers.retain(|(topic, sub)| {
            if !topic.matches(event) {
                return true;
            }
            let alive = (sub.deliver)(event.clone());
            if !alive {
                dropped += 1;
            }
            // A one-workflow subscription is spent once its workflow is announced.
            alive && !matches!(topic, Topic::Workflow(_))
        });
        for _ in 0..dropped {
            metrics::subscriber_dropped();
        }
        if let Some(waiters) = self.waiters.remove(&event.workflow_id) {
            for (_, w) in waiters {
                let _ = w.send(event.clone());
            }
        }
    }
}

impl Actor for Registry {
    type Msg = RegistryMessage;
    type State = RegistryState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RegistryState::default())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RegistryMessage::Subscribe {
                subscriber,
                topic,
                reply,
            } => {
                state.subscribers.push((topic, subscriber));
                let _ = reply.send(());
            }
            RegistryMessage::Unsubscribe { actor } => {
                state.subscribers.retain(|(_, s)| s.cell.get_id() != actor);
            }
            RegistryMessage::Wait {
                workflow_id,
                token,
                waiter,
                reply,
            } => {
                state
                    .waiters
                    .entry(workflow_id)
                    .or_default()
                    .push((token, waiter));
                let _ = reply.send(());
            }
            RegistryMessage::Unwait { workflow_id, token } => {
                if let Some(list) = state.waiters.get_mut(&workflow_id) {
                    list.retain(|(t, _)| *t != token);
                    if list.is_empty() {
                        state.waiters.remove(&workflow_id);
                    }
                }
            }
            RegistryMessage::Publish(event) => state.publish(&event),
            RegistryMessage::Settle { actor, event } => {
                let topic = Topic::Workflow(event.workflow_id);
                let spent = state
                    .subscribers
                    .iter()
                    .position(|(t, s)| *t == topic && s.cell.get_id() == actor);
                if let Some(i) = spent {
                    let (_, sub) = state.subscribers.swap_remove(i);
                    (sub.deliver)(event);
                }
            }
        }
        Ok(())
    }
}
