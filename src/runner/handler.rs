//! Step handlers: what a step receives and how it reports failure.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use std::sync::{Arc, Mutex};

use crate::ids::{StepId, WorkflowId};
use crate::workflow::Step;

/// What a handler knows about the step it runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StepContext {
    /// The step's workflow.
    pub workflow_id: WorkflowId,
    /// The step.
    pub step_id: StepId,
    /// The step's name, unique within its workflow.
    pub name: String,
    /// The kind the handler was registered for.
    pub kind: String,
    /// The step's arguments.
    pub args: Value,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Attempts the step gets before it is discarded.
    pub max_attempts: u32,
    pub(crate) cancel: CancellationToken,
    pub(crate) added: Arc<Mutex<Vec<Step>>>,
}

impl StepContext {
    /// Resolves when the step's workflow is cancelled (or this node lost the step): stop work
    /// soon; whatever the handler returns, the step ends `cancelled`.
    ///
    /// ```
    /// # async fn handler(ctx: baton::StepContext) -> Result<(), baton::StepError> {
    /// tokio::select! {
    ///     _ = ctx.cancelled() => Err(baton::StepError::permanent("cancelled")),
    ///     _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => Ok(()),
    /// }
    /// # }
    /// ```
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Adds a step to this step's workflow. Added steps are committed atomically with this
    /// step's completion — so the workflow can never look settled in between — and dropped if
    /// this attempt fails. They may depend on each other and on existing steps, by name.
    ///
    /// ```
    /// # async fn handler(ctx: baton::StepContext) -> Result<(), baton::StepError> {
    /// for i in 0..3 {
    ///     ctx.add_step(baton::Step::new(format!("part-{i}"), "process"));
    /// }
    /// ctx.add_step(baton::Step::new("merge", "merge").depends_on(["part-0", "part-1", "part-2"]));
    /// # Ok(()) }
    /// ```
    pub fn add_step(&self, step: Step) {
        if let Ok(mut added) = self.added.lock() {
            added.push(step);
        }
    }

    /// Whether the step's workflow was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// A failed attempt: retried (the default) or permanent (the step is discarded at once).
///
/// Any error converts with `?` into a retryable `StepError`.
///
/// ```
/// use baton::StepError;
/// fn parse(s: &str) -> Result<u32, StepError> {
///     Ok(s.parse::<u32>()?)
/// }
/// assert!(parse("x").is_err());
/// assert!(StepError::permanent("bad input").is_permanent());
/// ```
#[derive(Debug)]
pub struct StepError {
    message: String,
    permanent: bool,
}

impl StepError {
    /// A failure worth another attempt.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure no retry can fix: the step is discarded now.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }

    /// The error message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the step should be discarded without further attempts.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for StepError {
    fn from(e: E) -> Self {
        Self::retryable(e.to_string())
    }
}

/// The future a handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), StepError>> + Send>>;

/// Runs steps of one kind. Implemented for every `Fn(StepContext) -> impl Future`.
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt of a step.
    fn run(&self, ctx: StepContext) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(StepContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), StepError>> + Send + 'static,
{
    fn run(&self, ctx: StepContext) -> HandlerFuture {
        Box::pin(self(ctx))
    }
}
