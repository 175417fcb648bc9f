//! # baton
//!
//! Exactly-once "workflow finished" notifications for Rust job runners, on SQLite and
//! PostgreSQL.
//!
//! A **workflow** is a set of **steps** (background jobs, optionally depending on each other)
//! stored in a database. When the last outstanding step reaches a terminal state, baton
//! announces [`WorkflowFinished`] **exactly once** — however many siblings finish at the same
//! instant, whichever node runs them, whether a worker returned cleanly, crashed or was killed.
//!
//! ## Concepts
//! - [`Workflow`] and [`Step`]: what to run ([`workflow`]).
//! - [`Baton`]: one node's handle; [`Baton::check`] is the prompt detection path,
//!   [`Baton::announce`] the backstop one, both ending in one atomic claim ([`completion`]).
//! - [`Runner`]: the built-in database-backed job runner that executes steps ([`runner`]).
//! - Subscribers: actors registered with [`Baton::subscribe`] on a [`Topic`].
//! - [`metrics`]: what baton measures.
//!
//! ## Quick start (SQLite)
//! ```no_run
//! use baton::{Baton, Runner, Step, StepContext, Topic, Workflow};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let baton = Baton::builder().database_url("sqlite:quickstart.db").migrate(true).connect().await?;
//! let runner = Runner::builder()
//!     .handler("hello", |ctx: StepContext| async move {
//!         println!("running {}", ctx.name);
//!         Ok(())
//!     })
//!     .start(&baton);
//! let id = baton
//!     .insert_workflow(Workflow::new("greetings").step(Step::new("hi", "hello")))
//!     .await?;
//! let event = baton.wait_finished(id, std::time::Duration::from_secs(10)).await?;
//! assert_eq!(event.outcome, baton::Outcome::Completed);
//! runner.shutdown().await;
//! baton.shutdown().await;
//! # let _ = Topic::All; Ok(()) }
//! ```

mod actors;
mod baton;
pub mod completion;
mod error;
mod event;
mod ids;
pub mod metrics;
pub mod runner;
mod state;
mod store;
pub mod workflow;

#[doc(inline)]
pub use crate::actors::Topic;
#[doc(inline)]
pub use crate::baton::{Baton, Builder, CancelOutcome, Cursor, SweepReport};
#[doc(inline)]
pub use crate::completion::{Announcement, Settlement, settle};
#[doc(inline)]
pub use crate::error::{Error, Result};
#[doc(inline)]
pub use crate::event::{DetectedBy, Outcome, StepCounts, WorkflowFinished};
#[doc(inline)]
pub use crate::ids::{NodeId, StepId, WorkflowId};
#[doc(inline)]
pub use crate::metrics::{Stats, StatsSnapshot};
#[doc(inline)]
pub use crate::runner::{Runner, StepContext, StepError};
#[doc(inline)]
pub use crate::state::{StepState, TerminalState};
#[doc(inline)]
pub use crate::store::{WorkflowStatus, redact_url};
#[doc(inline)]
pub use crate::workflow::{Step, Workflow};

/// The README's Rust examples, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
