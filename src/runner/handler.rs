//! Step handlers: what a step receives and how it reports failure.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use crate::ids::{StepId, WorkflowId};

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
