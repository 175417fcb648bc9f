//! Configuring and starting a [`Baton`] instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use dashmap::DashMap;
use ractor::Actor;
use tokio::sync::Notify;

use super::{Baton, Config, Inner};
use crate::actors::registry::Registry;
use crate::actors::sweeper::Sweeper;
use crate::error::{Error, Result};
use crate::ids::NodeId;
use crate::metrics::Stats;
use crate::runner::running::Running;
use crate::store::{Store, StoreOptions};

/// Builds a [`Baton`].
///
/// ```no_run
/// # async fn run() -> baton::Result<()> {
/// use std::time::Duration;
/// let baton = baton::Baton::builder()
///     .database_url("postgres://baton@localhost/app")
///     .sweep_interval(Duration::from_millis(500))
///     .max_connections(16)
///     .connect()
///     .await?;
/// # let _ = baton; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Builder {
    url: Option<String>,
    node: Option<NodeId>,
    migrate: bool,
    sweeper: bool,
    listen: bool,
    config: Config,
    store: StoreOptions,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            url: None,
            node: None,
            migrate: false,
            sweeper: true,
            listen: true,
            config: Config {
                sweep_interval: Duration::from_secs(1),
                sweep_batch: 500,
                supervisor_idle: Duration::from_secs(30),
                lease: Duration::from_secs(30),
            },
            store: StoreOptions::default(),
        }
    }
}

impl Builder {
    /// The database: `postgres://…` or `sqlite:path` (the file is created if missing).
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Overrides the node id (default: a fresh incarnation id).
    pub fn node(mut self, node: NodeId) -> Self {
        self.node = Some(node);
        self
    }

    /// Applies baton's migrations on connect (default: no, and connecting to a database
    /// without them fails with [`Error::NotMigrated`]).
    pub fn migrate(mut self, yes: bool) -> Self {
        self.migrate = yes;
        self
    }

    /// Runs the sweeper, the backstop that announces workflows no `check` announced
    /// (default: yes). Turn it off only for a process that merely watches.
    pub fn sweeper(mut self, yes: bool) -> Self {
        self.sweeper = yes;
        self
    }

    /// On PostgreSQL, listens for claims made by other nodes and delivers them to this node's
    /// subscribers (default: yes). Needs a direct session connection, not a transaction pooler.
    pub fn listen(mut self, yes: bool) -> Self {
        self.listen = yes;
        self
    }

    /// How often the sweeper looks for settled, unannounced workflows (default 1 s).
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.config.sweep_interval = every;
        self
    }

    /// How many workflows one sweep query returns at most (default 500).
    pub fn sweep_batch(mut self, n: u32) -> Self {
        self.config.sweep_batch = n.max(1);
        self
    }

    /// How long a workflow supervisor lives without reports before it stops (default 30 s).
    pub fn supervisor_idle(mut self, after: Duration) -> Self {
        self.config.supervisor_idle = after;
        self
    }

    /// How long a node's lease on the steps it runs lasts without renewal (default 30 s). Its
    /// runner renews it every third of that; steps of a node whose lease expired are rescued by
    /// the others' sweepers. Use one value across all nodes.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// Database connections in the pool (default 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.store.max_connections = n.max(1);
        self
    }

    /// Connects, checks (or applies) migrations, and starts the registry and sweeper.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`], a database error when it cannot be reached, or
    /// [`Error::NotMigrated`].
    pub async fn connect(self) -> Result<Baton> {
        let url = self.url.ok_or_else(|| Error::InvalidUrl {
            url: String::new(),
            reason: "no database URL given".into(),
        })?;
        let store = Store::connect(&url, &self.store).await?;
        if self.migrate {
            store.migrate().await?;
        } else {
            store.ensure_migrated().await?;
        }
        let (registry, _) = Actor::spawn(None, Registry, ())
            .await
            .map_err(|e| Error::Actor {
                context: "starting the registry",
                reason: e.to_string(),
            })?;
        let inner = Arc::new(Inner {
            store,
            node: self.node.unwrap_or_else(NodeId::fresh),
            config: self.config,
            stats: Stats::default(),
            registry,
            supervisors: DashMap::new(),
            background: std::sync::Mutex::new(Vec::new()),
            work_available: Notify::new(),
            running: Running::default(),
            shut_down: AtomicBool::new(false),
            next_token: AtomicU64::new(0),
        });
        let baton = Baton { inner };
        if self.sweeper {
            let (sweeper, _) = Actor::spawn(None, Sweeper, baton.clone())
                .await
                .map_err(|e| Error::Actor {
                    context: "starting the sweeper",
                    reason: e.to_string(),
                })?;
            if let Ok(mut background) = baton.inner.background.lock() {
                background.push(sweeper.get_cell());
            }
        }
        #[cfg(feature = "postgres")]
        if let (true, Store::Postgres(pg)) = (self.listen, &baton.inner.store) {
            let (notifier, _) = Actor::spawn(
                None,
                crate::actors::notifier::Notifier,
                (baton.clone(), (**pg).clone()),
            )
            .await
            .map_err(|e| Error::Actor {
                context: "starting the claims listener",
                reason: e.to_string(),
            })?;
            if let Ok(mut background) = baton.inner.background.lock() {
                background.push(notifier.get_cell());
            }
        }
        Ok(baton)
    }
}
