//! LISTEN for claims made by other nodes.
//!
//! The listener holds one session connection of its own, outside the main pool, so it never
//! competes with claims for a connection. It needs a direct (session-mode) connection: a
//! pooler in transaction mode never delivers notifications.

use sqlx::postgres::{PgListener, PgPoolOptions};

use super::{CHANNEL, LISTENER_SUFFIX, PgStore};
use crate::error::{Error, Result};
use crate::ids::WorkflowId;

/// A notification of a claim: its sequence number and workflow.
pub(crate) type ClaimNotice = (i64, WorkflowId);

impl PgStore {
    /// Opens a listening connection on the claims channel.
    pub(crate) async fn listen(&self) -> Result<PgListener> {
        let ctx = "listening for claims of other nodes";
        let name = format!(
            "{}{LISTENER_SUFFIX}",
            self.connect_options
                .get_application_name()
                .unwrap_or_default()
        );
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(self.connect_options.clone().application_name(&name))
            .await
            .map_err(Error::db(ctx))?;
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(Error::db(ctx))?;
        // Reconnection is ours to do (a fresh listener, then a catch-up from the cursor).
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await.map_err(Error::db(ctx))?;
        Ok(listener)
    }
}

/// Parses a notification payload `"<seq>:<workflow id>"`.
pub(crate) fn parse_notice(payload: &str) -> Option<ClaimNotice> {
    let (seq, id) = payload.split_once(':')?;
    Some((seq.parse().ok()?, id.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_payloads_and_rejects_garbage() {
        let id = WorkflowId::new();
        assert_eq!(parse_notice(&format!("42:{id}")), Some((42, id)));
        assert_eq!(parse_notice("x:y"), None);
        assert_eq!(parse_notice("42"), None);
    }
}
