//! The sweeper: the backstop that announces every settled workflow no `check` announced.
//!
//! It scans open workflows only (a partial index), in bounded batches, and re-arms its timer
//! at the end of each sweep so ticks never pile up behind a slow one.

use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{Instrument, info_span, warn};

use crate::baton::Baton;

/// Messages to the sweeper.
pub(crate) enum SweeperMessage {
    /// Run one sweep now.
    Tick,
}

/// The sweeper actor.
pub(crate) struct Sweeper;

/// The sweeper's state.
pub(crate) struct SweeperState {
    baton: Baton,
    /// Since when every sweep has reached the database. Rescue waits for a full lease of
    /// health, so that after an outage live owners renew their leases before anyone judges them.
    healthy_since: Option<Instant>,
}

impl Sweeper {
    /// Takes back the steps of nodes whose lease expired; reports the terminal transitions.
    async fn rescue(state: &mut SweeperState) -> bool {
        let baton = &state.baton;
        let lease = baton.inner.config.lease;
        if state.healthy_since.is_none_or(|t| t.elapsed() < lease) {
            return false;
        }
        match baton
            .inner
            .store
            .rescue_lost(baton.inner.config.sweep_batch)
            .await
        {
            Ok(rescued) => {
                if rescued.count > 0 {
                    warn!(steps = rescued.count, "rescued steps of lost nodes");
                    baton.inner.work_available.notify_waiters();
                }
                baton.report(&rescued.transitions).await;
                false
            }
            Err(e) => {
                warn!(error = %e, "sweep: rescuing steps of lost nodes failed");
                true
            }
        }
    }
}

impl Actor for Sweeper {
    type Msg = SweeperMessage;
    type State = SweeperState;
    type Arguments = Baton;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        baton: Baton,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_after(baton.inner.config.sweep_interval, || SweeperMessage::Tick);
        Ok(SweeperState {
            baton,
            healthy_since: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SweeperMessage::Tick => {
                let started = Instant::now();
                let span = info_span!("baton.sweep", node = %state.baton.inner.node);
                let rescue_failed = Self::rescue(state).instrument(span.clone()).await;
                let swept = state.baton.sweep_once().instrument(span).await;
                let errors = rescue_failed || !swept.is_ok_and(|r| r.failed == 0);
                if errors {
                    state.healthy_since = None;
                } else if state.healthy_since.is_none() {
                    state.healthy_since = Some(started);
                }
                let baton = &state.baton;
                baton.inner.stats.sweep(started.elapsed(), errors);
                myself.send_after(baton.inner.config.sweep_interval, || SweeperMessage::Tick);
            }
        }
        Ok(())
    }
}
