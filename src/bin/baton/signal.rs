//! Waiting for SIGTERM or SIGINT.

/// Resolves at the first SIGTERM or SIGINT (Ctrl-C); returns the signal's name. A signal that
/// cannot be listened for is logged and never fires.
pub(crate) async fn shutdown() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let wait = |kind: SignalKind, name: &'static str| async move {
            match signal(kind) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
            name
        };
        tokio::select! {
            name = wait(SignalKind::terminate(), "SIGTERM") => name,
            name = wait(SignalKind::interrupt(), "SIGINT") => name,
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        "Ctrl-C"
    }
}
