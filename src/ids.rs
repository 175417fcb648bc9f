//! Identifier newtypes for workflows, steps and nodes.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUIDv7).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The all-zero id, useful in examples and tests.
            pub fn nil() -> Self {
                Self(Uuid::nil())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// Identifies a workflow.
    ///
    /// ```
    /// let id: baton::WorkflowId = "0192d6a0-0000-7000-8000-000000000000".parse().unwrap();
    /// assert_eq!(id.to_string(), "0192d6a0-0000-7000-8000-000000000000");
    /// ```
    WorkflowId
);
uuid_id!(
    /// Identifies one step of a workflow.
    ///
    /// ```
    /// let a = baton::StepId::new();
    /// assert_ne!(a, baton::StepId::new());
    /// ```
    StepId
);

/// Identifies one incarnation of a baton process: fresh at every start, never reused.
///
/// ```
/// let a = baton::NodeId::fresh();
/// assert_ne!(a, baton::NodeId::fresh());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    /// A new incarnation id: host name, process id and a random suffix.
    pub fn fresh() -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".to_owned());
        let suffix = Uuid::new_v4().simple().to_string();
        Self(format!("{host}-{}-{}", std::process::id(), &suffix[..8]))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
