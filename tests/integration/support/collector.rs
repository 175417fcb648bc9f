//! A subscriber actor that records every event it receives, for the test to inspect.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::{Baton, Topic, WorkflowFinished, WorkflowId};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::wait_until;

/// What a [`Collector`] received, shared with the test.
#[derive(Clone, Debug, Default)]
pub(crate) struct Events(Arc<Mutex<Vec<WorkflowFinished>>>, Arc<Mutex<Vec<Received>>>);

/// When an event reached the collector.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Received {
    pub(crate) workflow_id: WorkflowId,
    /// Wall clock, comparable with timestamps written by the database on the same machine.
    pub(crate) at: chrono::DateTime<chrono::Utc>,
    /// Monotonic clock, comparable with `Instant`s taken by the test.
    pub(crate) instant: Instant,
}

impl Events {
    pub(crate) fn all(&self) -> Vec<WorkflowFinished> {
        self.0.lock().expect("events lock").clone()
    }

    /// When each event was received, in order of receipt.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.1.lock().expect("events lock").clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.lock().expect("events lock").len()
    }

    /// Events received for one workflow.
    pub(crate) fn of(&self, wf: WorkflowId) -> Vec<WorkflowFinished> {
        self.all()
            .into_iter()
            .filter(|e| e.workflow_id == wf)
            .collect()
    }

    pub(crate) fn count_of(&self, wf: WorkflowId) -> usize {
        self.of(wf).len()
    }

    /// Waits for the first event of `wf` and returns it.
    pub(crate) async fn first_of(&self, wf: WorkflowId, timeout: Duration) -> WorkflowFinished {
        wait_until(&format!("workflow {wf} was announced"), timeout, || {
            self.count_of(wf) > 0
        })
        .await;
        self.of(wf).remove(0)
    }

    fn push(&self, event: WorkflowFinished) {
        let received = Received {
            workflow_id: event.workflow_id,
            at: chrono::Utc::now(),
            instant: Instant::now(),
        };
        self.1.lock().expect("events lock").push(received);
        self.0.lock().expect("events lock").push(event);
    }
}

/// The collector's message: a received event.
#[derive(Debug)]
pub(crate) struct Collected(WorkflowFinished);

impl From<WorkflowFinished> for Collected {
    fn from(event: WorkflowFinished) -> Self {
        Collected(event)
    }
}

/// A subscriber actor that records every event it receives.
pub(crate) struct Collector;

impl Actor for Collector {
    type Msg = Collected;
    type State = Events;
    type Arguments = Events;

    async fn pre_start(
        &self,
        _myself: ActorRef<Collected>,
        events: Events,
    ) -> Result<Events, ActorProcessingErr> {
        Ok(events)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Collected>,
        Collected(event): Collected,
        events: &mut Events,
    ) -> Result<(), ActorProcessingErr> {
        events.push(event);
        Ok(())
    }
}

/// Spawns a [`Collector`] and subscribes it to `topic` on `baton`.
pub(crate) async fn subscribe(baton: &Baton, topic: Topic) -> Events {
    let events = Events::default();
    let (actor, _) = Actor::spawn(None, Collector, events.clone())
        .await
        .expect("spawning a collector");
    baton
        .subscribe(actor, topic)
        .await
        .expect("subscribing a collector");
    events
}
