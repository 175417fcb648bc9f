//! The built-in job runner: the host that makes baton work out of the box.
//!
//! Steps are rows. Workers fetch runnable steps (Postgres: `FOR UPDATE SKIP LOCKED`; SQLite: one
//! atomic `UPDATE … RETURNING` on the single writer), run the handler registered for the step's
//! kind, **commit the terminal state (fenced by attempt) and then call
//! [`check`](crate::Baton::check)**. Failed attempts are retried with exponential backoff and
//! jitter up to the step's `max_attempts`, then the step is discarded and its dependents are
//! cancelled — each of those a terminal transition reported like any other. A panicking handler
//! is a failed attempt, not a dead worker.
//!
//! ```no_run
//! use baton::{Runner, StepContext, StepError};
//! # async fn run(baton: baton::Baton) {
//! let runner = Runner::builder()
//!     .concurrency(16)
//!     .handler("resize", |ctx: StepContext| async move {
//!         let path = ctx.args["path"].as_str().ok_or_else(|| StepError::permanent("no path"))?;
//!         # let _ = path;
//!         Ok(())
//!     })
//!     .start(&baton);
//! // ...
//! runner.shutdown().await;
//! # }
//! ```

mod handler;
pub(crate) mod running;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use handler::{Handler, HandlerFuture, StepContext, StepError};

use crate::baton::Baton;

/// Entry point for configuring a runner; see [`Runner::builder`].
#[derive(Debug)]
pub struct Runner;

impl Runner {
    /// Starts configuring a runner.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

/// The runner's settings.
#[derive(Clone)]
pub(crate) struct RunnerConfig {
    pub(crate) handlers: HashMap<String, Arc<dyn Handler>>,
    pub(crate) concurrency: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) detect: bool,
}

impl RunnerConfig {
    /// Exponential backoff with full jitter in [delay/2, delay].
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.backoff_max);
        let half = exp / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// Configures a [`Runner`]: handlers by step kind, concurrency, timing.
///
/// ```
/// let builder = baton::Runner::builder()
///     .concurrency(4)
///     .handler("noop", |_ctx: baton::StepContext| async { Ok(()) });
/// # let _ = builder;
/// ```
pub struct Builder {
    config: RunnerConfig,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            config: RunnerConfig {
                handlers: HashMap::new(),
                concurrency: 8,
                poll_interval: Duration::from_millis(100),
                backoff_base: Duration::from_millis(200),
                backoff_max: Duration::from_secs(60),
                detect: true,
            },
        }
    }
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kinds: Vec<&String> = self.config.handlers.keys().collect();
        kinds.sort();
        f.debug_struct("Builder")
            .field("kinds", &kinds)
            .field("concurrency", &self.config.concurrency)
            .finish()
    }
}

impl Builder {
    /// Registers the handler for steps of `kind`.
    pub fn handler(mut self, kind: impl Into<String>, handler: impl Handler) -> Self {
        self.config.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    /// How many steps run at once (default 8).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n.max(1);
        self
    }

    /// How often to look for runnable steps when idle (default 100 ms). Steps inserted or
    /// promoted by this process wake the runner at once.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.config.poll_interval = every;
        self
    }

    /// Backoff between attempts: `base × 2^(attempt-1)`, capped at `max`, with jitter
    /// (default 200 ms, 60 s).
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config.backoff_base = base;
        self.config.backoff_max = max.max(base);
        self
    }

    /// Whether to report terminal steps to [`check`](crate::Baton::check) (default: yes). Off,
    /// only the sweep announces; benchmarks use this to measure what prompt detection costs.
    pub fn prompt_detection(mut self, yes: bool) -> Self {
        self.config.detect = yes;
        self
    }

    /// Starts fetching and running steps on `baton`'s database.
    pub fn start(self, baton: &Baton) -> RunnerHandle {
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker::fetch_loop(
            baton.clone(),
            Arc::new(self.config),
            stop.clone(),
        ));
        RunnerHandle { stop, task }
    }
}

/// A running runner; [`shutdown`](RunnerHandle::shutdown) stops it gracefully.
#[derive(Debug)]
pub struct RunnerHandle {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RunnerHandle {
    /// Stops fetching, waits for in-flight steps to finish and report, and gives up this node's
    /// lease.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
