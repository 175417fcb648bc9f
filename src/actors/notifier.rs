//! The notifier: relays claims made by other nodes (Postgres LISTEN) to this node's registry.
//!
//! Notifications are hints; the database is the truth. Each (re)connection of the listener, and
//! a timer, start a catch-up from the completions table with [`Baton::follow`], whose cursor never
//! passes over a late-committing claim, so a claim made while the listener was down is still
//! delivered. The registry drops repeats.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::baton::{Baton, Cursor};
use crate::ids::WorkflowId;
use crate::store::{PgStore, parse_notice, transient_backoff};

/// Claims read per catch-up query.
const CATCH_UP_PAGE: u32 = 500;
/// A catch-up runs this often even without reconnections, as a safety net.
const CATCH_UP_EVERY: Duration = Duration::from_secs(5);

/// Messages to the notifier.
pub(crate) enum NotifierMessage {
    /// Another node (or this one) claimed a workflow.
    Claimed { workflow_id: WorkflowId },
    /// Read claims from the cursor on (after a reconnection, and periodically).
    CatchUp,
}

/// The notifier actor.
pub(crate) struct Notifier;

/// The notifier's state.
pub(crate) struct NotifierState {
    baton: Baton,
    /// Where the next catch-up starts; it starts at this node's birth, so subscribers are not
    /// handed claims made before this node existed.
    cursor: Cursor,
    stop: CancellationToken,
    listening: JoinHandle<()>,
}

impl NotifierState {
    async fn deliver(&mut self, workflow_id: WorkflowId) {
        match self.baton.inner.store.completion(workflow_id).await {
            Ok(Some(event)) => self.baton.inner.publish(event),
            Ok(None) => debug!(%workflow_id, "notified claim not found (pruned?)"),
            Err(e) => {
                warn!(%workflow_id, error = %e, "reading a notified claim failed; the catch-up will deliver it")
            }
        }
    }

    async fn catch_up(&mut self) {
        loop {
            match self.baton.follow(self.cursor, CATCH_UP_PAGE).await {
                Ok((events, next)) => {
                    self.cursor = next;
                    let full = events.len() as u32 == CATCH_UP_PAGE;
                    for event in events {
                        self.baton.inner.publish(event);
                    }
                    if !full {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "catching up on claims failed; retrying later");
                    return;
                }
            }
        }
    }
}

/// Listens until stopped, reconnecting with backoff; asks for a catch-up after each connection.
async fn listen(store: PgStore, notifier: ActorRef<NotifierMessage>, stop: CancellationToken) {
    let mut failures = 0;
    loop {
        match store.listen().await {
            Ok(mut listener) => {
                failures = 0;
                let _ = notifier.send_message(NotifierMessage::CatchUp);
                loop {
                    let next = tokio::select! {
                        n = listener.try_recv() => n,
                        _ = stop.cancelled() => return,
                    };
                    match next {
                        Ok(Some(notice)) => {
                            if let Some((_, workflow_id)) = parse_notice(notice.payload()) {
                                let _ =
                                    notifier.send_message(NotifierMessage::Claimed { workflow_id });
                            }
                        }
                        Ok(None) | Err(_) => {
                            warn!("the claims listener lost its connection; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                failures += 1;
                warn!(error = %e, "connecting the claims listener failed; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(transient_backoff(failures)) => {},
            _ = stop.cancelled() => return,
        }
    }
}

impl Actor for Notifier {
    type Msg = NotifierMessage;
    type State = NotifierState;
    type Arguments = (Baton, PgStore);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (baton, store): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let cursor = baton.cursor_now().await?;
        let stop = CancellationToken::new();
        let listening = tokio::spawn(listen(store, myself.clone(), stop.clone()));
        myself.send_after(CATCH_UP_EVERY, || NotifierMessage::CatchUp);
        Ok(NotifierState {
            baton,
            cursor,
            stop,
            listening,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stop.cancel();
        state.listening.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            NotifierMessage::Claimed { workflow_id } => state.deliver(workflow_id).await,
            NotifierMessage::CatchUp => {
                state.catch_up().await;
                myself.send_after(CATCH_UP_EVERY, || NotifierMessage::CatchUp);
            }
        }
        Ok(())
    }
}
