//! The actors: a supervisor per active workflow, the sweeper, and the subscriber registry.
//!
//! ```text
//!  check ──StepTerminal──▶ WorkflowSupervisor ──┐
//!  Sweeper ──tick──▶ announce ──────────────────┤──▶ claim ──winner──▶ Registry ──▶ subscribers
//! ```

pub(crate) mod registry;
pub(crate) mod supervisor;
pub(crate) mod sweeper;

pub use registry::Topic;
