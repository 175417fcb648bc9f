//! The sweeper: the backstop that announces every settled workflow no `check` announced.
//!
//! It scans open workflows only (a partial index), in bounded batches, and re-arms its timer
//! at the end of each sweep so ticks never pile up behind a slow one.

use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{Instrument, info_span, warn};

use crate::baton::Baton;
use crate::completion::Announcement;
use crate::event::DetectedBy;

/// Pages of `sweep_batch` workflows one tick handles at most.
const MAX_PAGES: usize = 20;

/// Messages to the sweeper.
pub(crate) enum SweeperMessage {
    /// Run one sweep now.
    Tick,
}

/// The sweeper actor.
pub(crate) struct Sweeper;

impl Sweeper {
    /// One sweep: announce settled open workflows, batch by batch. Returns whether any error occurred.
    async fn sweep(baton: &Baton) -> bool {
        let batch = baton.inner.config.sweep_batch;
        let mut errors = false;
        // Bounded work per tick; whatever is left waits for the next one.
        for _ in 0..MAX_PAGES {
            let ids = match baton.inner.store.settled_open_workflows(batch).await {
                Ok(ids) => ids,
                Err(e) => {
                    warn!(error = %e, "sweep: listing settled workflows failed; retrying next tick");
                    return true;
                }
            };
            let mut progressed = 0;
            for id in &ids {
                match baton.announce_by(*id, DetectedBy::Sweep).await {
                    Ok(Announcement::Finished(_)) => progressed += 1,
                    Ok(Announcement::Noop) => progressed += 1,
                    Err(e) => {
                        errors = true;
                        warn!(workflow_id = %id, error = %e, "sweep: announcing failed; retrying next tick");
                    }
                }
            }
            // A short page means we have seen them all; a page of failures means stop for now.
            if (ids.len() as u32) < batch || progressed == 0 {
                return errors;
            }
        }
        errors
    }
}

impl Actor for Sweeper {
    type Msg = SweeperMessage;
    type State = Baton;
    type Arguments = Baton;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        baton: Baton,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_after(baton.inner.config.sweep_interval, || SweeperMessage::Tick);
        Ok(baton)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        baton: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SweeperMessage::Tick => {
                let started = Instant::now();
                let errors = Self::sweep(baton)
                    .instrument(info_span!("baton.sweep", node = %baton.inner.node))
                    .await;
                baton.inner.stats.sweep(started.elapsed(), errors);
                myself.send_after(baton.inner.config.sweep_interval, || SweeperMessage::Tick);
            }
        }
        Ok(())
    }
}
