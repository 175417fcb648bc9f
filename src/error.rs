//! Errors returned by baton's public API.

use crate::ids::WorkflowId;

/// A `Result` whose error is baton's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in baton, with enough context to act on.
///
/// ```
/// let err = baton::Error::WorkflowNotFound(baton::WorkflowId::nil());
/// assert!(err.to_string().contains("not found"));
/// assert!(!err.is_transient());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database URL could not be parsed or names an unsupported backend.
    #[error("invalid database URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, with any password redacted.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A database operation failed.
    #[error("database error while {context}: {source}")]
    Database {
        /// What baton was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database has no baton tables yet.
    #[error("the database has no baton schema (or an outdated one): run `baton migrate` first")]
    NotMigrated,
    /// A workflow definition is invalid (cycle, duplicate or unknown step name, empty name, ...).
    #[error("invalid workflow: {0}")]
    InvalidWorkflow(String),
    /// No workflow with this id exists.
    #[error("workflow {0} not found")]
    WorkflowNotFound(WorkflowId),
    /// The workflow was already announced; it accepts no new or retried steps.
    #[error("workflow {0} is already finished and closed to changes")]
    WorkflowClosed(WorkflowId),
    /// A wait ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// An actor could not be spawned or reached.
    #[error("actor error while {context}: {reason}")]
    Actor {
        /// What baton was doing.
        context: &'static str,
        /// The actor system's error.
        reason: String,
    },
    /// The baton instance is shut down.
    #[error("baton is shut down")]
    Shutdown,
}

impl Error {
    /// Wraps a driver error with what baton was doing when it happened.
    pub(crate) fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| {
            if is_missing_table(&source) {
                Error::NotMigrated
            } else {
                Error::Database { context, source }
            }
        }
    }

    /// Whether retrying the same operation later may succeed: lost connections,
    /// pool timeouts, serialization failures, deadlocks and SQLite busy/locked.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database { source, .. } => is_transient_sqlx(source),
            Error::Timeout(_) => true,
            _ => false,
        }
    }
}

/// Classifies a driver error as transient (worth a retry).
pub(crate) fn is_transient_sqlx(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            matches!(
                code.as_ref(),
                // Postgres: serialization failure, deadlock, connection and shutdown classes.
                "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300" | "08000" | "08003"
                    | "08006" | "08001" | "08004"
                    // SQLite: BUSY, LOCKED and their extended codes.
                    | "5" | "6" | "261" | "517" | "262" | "773"
            )
        }
        _ => false,
    }
}

fn is_missing_table(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("42P01")
                || (db.message().contains("no such table") && db.message().contains("baton_"))
        }
        _ => false,
    }
}
