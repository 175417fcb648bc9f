//! The actors: a supervisor per active workflow, the sweeper, and the subscriber registry.
//!
//! ```text
//!  check ──StepTerminal──▶ WorkflowSupervisor ──┐
//!  Sweeper ──tick──▶ announce ──────────────────┤──▶ claim ──winner──▶ Registry ──▶ subscribers
//!                                                      └─NOTIFY─▶ other nodes' Notifier ──▶ Registry
//! ```

#[cfg(feature = "postgres")]
pub(crate) mod notifier;
pub(crate) mod registry;
pub(crate) mod supervisor;
pub(crate) mod sweeper;

pub use registry::Topic;
