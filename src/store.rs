//! Storage: one type per backend behind the [`Store`] enum, with the same operations on each.
//!
//! Every statement is a `const` with bound parameters next to the function that runs it.

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::completion::{ClaimResult, Overlay};
use crate::error::{Error, Result};
use crate::event::{DetectedBy, WorkflowFinished};
use crate::ids::{NodeId, StepId, WorkflowId};
use crate::state::{StepState, TerminalState};
use crate::workflow::Workflow;

#[cfg(feature = "postgres")]
pub(crate) use postgres::{PgStore, parse_notice};
#[cfg(feature = "sqlite")]
pub(crate) use sqlite::SqliteStore;

/// How to connect: pool size and the like.
#[derive(Clone, Debug)]
pub(crate) struct StoreOptions {
    /// Connections in the pool (Postgres) or readers (SQLite; writes use one connection).
    pub(crate) max_connections: u32,
    /// How long to wait for a connection before failing.
    pub(crate) acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// A step handed to a worker by [`Store::fetch`].
#[derive(Clone, Debug)]
pub(crate) struct FetchedStep {
    pub(crate) id: StepId,
    pub(crate) workflow_id: WorkflowId,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) args: Value,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
}

/// How an attempt ended, as written by [`Store::end_attempt`].
#[derive(Clone, Debug)]
pub(crate) enum AttemptEnd {
    /// The handler succeeded, adding these steps to its workflow (committed with its own end).
    Completed { added: Vec<crate::workflow::Step> },
    /// The handler failed and another attempt is due after `delay`.
    Retry { error: String, delay: Duration },
    /// The handler failed for good.
    Discarded { error: String },
}

/// A step that reached a terminal state in a committed write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) workflow_id: WorkflowId,
    pub(crate) step_id: StepId,
    pub(crate) state: TerminalState,
    /// The same write found a dependent of this step still waiting on it (and moved it along).
    /// That dependent is non-terminal when this write commits, and whatever ends it commits
    /// later and is reported in turn, so this transition cannot be the one that settles the
    /// workflow and needs no detection of its own.
    pub(crate) dependents_waiting: bool,
}

impl Transition {
    pub(crate) fn new(workflow_id: WorkflowId, step_id: StepId, state: TerminalState) -> Self {
        Self {
            workflow_id,
            step_id,
            state,
            dependents_waiting: false,
        }
    }
}

/// What detection learned about a workflow's non-terminal steps.
#[derive(Clone, Debug, Default)]
pub(crate) struct Outstanding {
    /// Steps the caller believes terminal that the database still shows non-terminal.
    pub(crate) lagging: Vec<StepId>,
    /// Whether any other step is non-terminal.
    pub(crate) others: bool,
}

/// The rows the outcome is computed from.
#[derive(Clone, Debug)]
pub(crate) struct SettlementRows {
    pub(crate) name: String,
    pub(crate) completed: u64,
    /// Every step not `completed` in the database: id, name, state.
    pub(crate) not_completed: Vec<(StepId, String, StepState)>,
}

/// Steps taken back from lost nodes by [`Store::rescue_lost`].
#[derive(Debug, Default)]
pub(crate) struct Rescued {
    /// Steps rescued (back to `retryable`, or terminal).
    pub(crate) count: usize,
    /// The terminal transitions among them, with cascaded cancellations.
    pub(crate) transitions: Vec<Transition>,
}

/// What [`Store::cancel_workflow`] did.
#[derive(Debug, Default)]
pub(crate) struct Cancelled {
    /// The workflow had already been announced: nothing changed.
    pub(crate) already_finished: bool,
    /// Steps that were waiting and are now `cancelled`.
    pub(crate) transitions: Vec<Transition>,
    /// Executing steps asked to stop; they end `cancelled` when their attempt ends.
    pub(crate) executing: Vec<StepId>,
}

impl Cancelled {
    pub(crate) fn already_finished() -> Self {
        Self {
            already_finished: true,
            ..Self::default()
        }
    }
}

/// The event a claim publishes, when `rows` (with `overlay`) show the workflow settled.
pub(crate) fn finished_event(
    workflow_id: WorkflowId,
    rows: SettlementRows,
    overlay: &Overlay,
    detected_by: DetectedBy,
    node: &NodeId,
) -> Option<WorkflowFinished> {
    match crate::completion::decide(&rows, overlay) {
        crate::completion::Settlement::Settled {
            outcome,
            failed_steps,
            counts,
        } => Some(WorkflowFinished {
            workflow_id,
            name: rows.name,
            outcome,
            failed_steps,
            counts,
            detected_by,
            node: node.clone(),
            // At the precision both backends store (SQLite keeps milliseconds), so the event
            // published here equals the one read back from the database by any other path.
            finished_at: chrono::DateTime::from_timestamp_millis(
                chrono::Utc::now().timestamp_millis(),
            )
            .unwrap_or_else(chrono::Utc::now),
            seq: 0,
        }),
        crate::completion::Settlement::Running { .. } => None,
    }
}

/// A workflow's progress, as shown by `baton status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowStatus {
    /// The workflow.
    pub id: WorkflowId,
    /// Its name.
    pub name: String,
    /// Steps per state (states with no steps are left out).
    pub counts: BTreeMap<String, u64>,
    /// The announcement, once the workflow has finished.
    pub finished: Option<WorkflowFinished>,
}

/// A database: PostgreSQL or SQLite.
#[derive(Clone, Debug)]
pub(crate) enum Store {
    #[cfg(feature = "postgres")]
    Postgres(Box<PgStore>),
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
}

macro_rules! dispatch {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            #[cfg(feature = "postgres")]
            Store::Postgres($s) => $body,
            #[cfg(feature = "sqlite")]
            Store::Sqlite($s) => $body,
        }
    };
}

impl Store {
    /// Connects to `url`: `postgres://…`/`postgresql://…`, or `sqlite:…` (file created if missing).
    pub(crate) async fn connect(url: &str, options: &StoreOptions) -> Result<Store> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            // Without `//` the driver would read the rest as a database name, and the server
            // would echo it — password and all — in its error.
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" if !url[scheme.len() + 1..].starts_with("//") => {
                Err(Error::InvalidUrl {
                    url: redact_url(url),
                    reason: "a PostgreSQL URL starts with postgres:// (or postgresql://)".into(),
                })
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Ok(Store::Postgres(Box::new(
                PgStore::connect(url, options).await?,
            ))),
            #[cfg(feature = "sqlite")]
            "sqlite" => Ok(Store::Sqlite(SqliteStore::connect(url, options).await?)),
            _ => Err(Error::InvalidUrl {
                url: redact_url(url),
                reason: "expected a postgres://, postgresql:// or sqlite: URL".into(),
            }),
        }
    }

    /// Which backend this is, for logs.
    pub(crate) fn backend(&self) -> &'static str {
        dispatch!(self, _s => _s.backend())
    }

    /// Applies baton's migrations (idempotent), in baton's own ledger table.
    pub(crate) async fn migrate(&self) -> Result<()> {
        dispatch!(self, s => s.migrate().await)
    }

    /// Fails with [`Error::NotMigrated`] unless every migration has been applied.
    pub(crate) async fn ensure_migrated(&self) -> Result<()> {
        dispatch!(self, s => s.ensure_migrated().await)
    }

    /// Inserts a validated workflow and all its steps in one transaction.
    pub(crate) async fn insert_workflow(&self, wf: &Workflow) -> Result<()> {
        dispatch!(self, s => s.insert_workflow(wf).await)
    }

    /// Detection's one query: which of `believed_terminal` still read non-terminal, and whether
    /// any other step does. Reads O(|believed_terminal| + 1) index rows.
    pub(crate) async fn outstanding(
        &self,
        wf: WorkflowId,
        believed_terminal: &[StepId],
    ) -> Result<Outstanding> {
        dispatch!(self, s => s.outstanding(wf, believed_terminal).await)
    }

    /// The claim, in one transaction: lock the workflow row, read its steps, decide settledness
    /// and outcome (with `overlay`), insert the completion row unless one exists, close the
    /// workflow and (on Postgres) notify other nodes, so the notice goes out iff the claim commits.
    pub(crate) async fn claim(
        &self,
        wf: WorkflowId,
        overlay: &Overlay,
        detected_by: DetectedBy,
        node: &NodeId,
    ) -> Result<ClaimResult> {
        dispatch!(self, s => s.claim(wf, overlay, detected_by, node).await)
    }

    /// Open workflows whose steps are all terminal, oldest first, at most `limit`.
    pub(crate) async fn settled_open_workflows(&self, limit: u32) -> Result<Vec<WorkflowId>> {
        dispatch!(self, s => s.settled_open_workflows(limit).await)
    }

    /// How many workflows are not yet announced (an index-only count over open workflows).
    pub(crate) async fn open_workflows(&self) -> Result<u64> {
        dispatch!(self, s => s.open_workflows().await)
    }

    /// The stored announcement of a workflow, if it has been claimed.
    pub(crate) async fn completion(&self, wf: WorkflowId) -> Result<Option<WorkflowFinished>> {
        dispatch!(self, s => s.completion(wf).await)
    }

    /// Claims after `position` (and with `seq > seq_floor`), in the order they became visible,
    /// at most `limit`, each with its position. Unlike `seq`, positions never let a reader pass
    /// over a claim that commits late: SQLite assigns `seq` under its single write lock; Postgres
    /// positions are claiming-transaction ids, returned only once no older transaction runs.
    pub(crate) async fn follow(
        &self,
        position: i64,
        seq_floor: i64,
        limit: u32,
    ) -> Result<Vec<(WorkflowFinished, i64)>> {
        dispatch!(self, s => s.follow(position, seq_floor, limit).await)
    }

    /// The position before every claim that can still become visible.
    pub(crate) async fn head_position(&self) -> Result<i64> {
        dispatch!(self, s => s.head_position().await)
    }

    /// Claims after `seq`, in order, at most `limit`.
    pub(crate) async fn completions_after(
        &self,
        seq: i64,
        limit: u32,
    ) -> Result<Vec<WorkflowFinished>> {
        dispatch!(self, s => s.completions_after(seq, limit).await)
    }

    /// Counts by state and the announcement, or `None` for an unknown workflow.
    pub(crate) async fn status(&self, wf: WorkflowId) -> Result<Option<WorkflowStatus>> {
        dispatch!(self, s => s.status(wf).await)
    }

    /// Marks up to `limit` runnable steps of the given kinds `executing` for `node`, fenced by a
    /// fresh attempt number, and returns them.
    pub(crate) async fn fetch(
        &self,
        node: &NodeId,
        kinds: &[String],
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<FetchedStep>> {
        dispatch!(self, s => s.fetch(node, kinds, limit, lease).await)
    }

    /// Ends an attempt, fenced by step id and attempt number: writes the new state, promotes the
    /// dependents of a completed step, cancels the dependents of a discarded one, all in one
    /// transaction. Returns the terminal transitions it committed (none when the attempt was stale).
    pub(crate) async fn end_attempt(
        &self,
        step: &FetchedStep,
        end: &AttemptEnd,
    ) -> Result<Vec<Transition>> {
        dispatch!(self, s => s.end_attempt(step, end).await)
    }

    /// Renews this node's lease (registering it on first call) and returns the executing steps
    /// it owns whose workflow was cancelled.
    pub(crate) async fn heartbeat(&self, node: &NodeId, lease: Duration) -> Result<Vec<StepId>> {
        dispatch!(self, s => s.heartbeat(node, lease).await)
    }

    /// Gives up this node's lease (at graceful shutdown): whatever it still owns is rescued.
    pub(crate) async fn release_node(&self, node: &NodeId) -> Result<()> {
        dispatch!(self, s => s.release_node(node).await)
    }

    /// Takes back up to `limit` executing steps whose owner's lease expired: to `retryable` when
    /// attempts remain, else `discarded` (or `cancelled` when cancellation was requested), with
    /// the same dependent handling as [`end_attempt`](Self::end_attempt).
    pub(crate) async fn rescue_lost(&self, limit: u32) -> Result<Rescued> {
        dispatch!(self, s => s.rescue_lost(limit).await)
    }

    /// Cancels every waiting step of an open workflow and flags its executing ones.
    pub(crate) async fn cancel_workflow(&self, wf: WorkflowId) -> Result<Cancelled> {
        dispatch!(self, s => s.cancel_workflow(wf).await)
    }

    /// Gives a discarded or cancelled step of an open workflow one more attempt.
    pub(crate) async fn retry_step(&self, wf: WorkflowId, name: &str) -> Result<()> {
        dispatch!(self, s => s.retry_step(wf, name).await)
    }

    /// Deletes up to `limit` workflows announced more than `older_than` ago; returns how many.
    pub(crate) async fn prune(&self, older_than: Duration, limit: u32) -> Result<u64> {
        dispatch!(self, s => s.prune(older_than, limit).await)
    }

    /// Closes the pool.
    pub(crate) async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }
}

/// Replaces the password of a URL with `***`, for logs and errors: in the user-info part and in
/// query parameters such as `?password=…`. What cannot be parsed as a URL with an authority is
/// shown only up to the host.
///
/// ```
/// use baton::redact_url;
/// assert_eq!(redact_url("postgres://app:s3cret@db:5432/x"), "postgres://app:***@db:5432/x");
/// assert_eq!(redact_url("postgres://db/x?password=s3cret&sslmode=disable"),
///            "postgres://db/x?password=***&sslmode=disable");
/// assert_eq!(redact_url("sqlite:baton.db"), "sqlite:baton.db");
/// // A forgotten `//`, and a password read as a port: nothing after the scheme but the host.
/// assert_eq!(redact_url("postgres:app:s3cret@db/x"), "<redacted>@db/x");
/// assert_eq!(redact_url("postgres://app:s3cret"), "postgres://<redacted>");
/// ```
pub fn redact_url(url: &str) -> String {
    fn secret(key: &str) -> bool {
        key.to_ascii_lowercase().contains("password")
    }
    match url::Url::parse(url) {
        Ok(parsed) if parsed.scheme() == "sqlite" && !url.contains('@') => url.to_owned(),
        Ok(mut parsed) if !parsed.cannot_be_a_base() => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            if parsed.query_pairs().any(|(k, _)| secret(&k)) {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret(&k) {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string().replace("%2A%2A%2A", "***")
        }
        // Opaque (`app:s3cret@db/x`, a forgotten `//`) or unparseable (`postgres://app:s3cret`,
        // whose password reads as a bad port): keep only what cannot hold a password.
        Ok(_) | Err(_) => match (url.rsplit_once('@'), url.split_once("://")) {
            (Some((_, host)), _) => format!("<redacted>@{host}"),
            (None, Some((scheme, _))) => format!("{scheme}://<redacted>"),
            (None, None) => "<redacted>".into(),
        },
    }
}

/// Backoff for retrying transient database errors: 50 ms doubling to 2 s, with jitter.
pub(crate) fn transient_backoff(attempt: u32) -> Duration {
    let base = 50u64.saturating_mul(1 << attempt.min(6)).min(2_000);
    let jitter = rand::random::<u64>() % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn no_shape_of_url_shows_its_password() {
        let secret = "hunter2";
        for url in [
            format!("postgres://app:{secret}@db:5432/x"),
            format!("postgres://db/x?password={secret}"),
            format!("postgres:///x?host=db&port=1&PassWord={secret}"),
            format!("postgres://app@db/x?sslpassword={secret}&sslmode=require"),
            format!("postgres://app:{secret}"),
            format!("postgres://app:{secret}/x"),
            format!("postgres:app:{secret}@db/x"),
            format!("app:{secret}@db/x"),
            format!("sqlite://app:{secret}@x.db"),
            secret.to_string(),
        ] {
            let shown = redact_url(&url);
            assert!(!shown.contains(secret), "{url} shown as {shown}");
        }
        assert_eq!(
            redact_url("sqlite:/tmp/my dir/x.db"),
            "sqlite:/tmp/my dir/x.db"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
    }
}
