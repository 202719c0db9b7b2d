//! A lab: its directory (`dir`: paths, lock, plan.json and state.json), what it records (`state`), choosing
//! one (`select`), opening and connecting to a running one (`handle`), and its lifecycle whatever the provider:
//! `up`, `teardown` and `status`.

pub mod dir;
pub mod handle;
pub mod provider;
pub mod select;
pub mod state;
pub mod status;
pub mod teardown;
pub mod up;

#[cfg(test)]
pub(crate) mod fixtures;

pub use dir::{LabDir, LabDirError};
pub use handle::{ConnectedLab, ConnectedNode, Lab};
pub use provider::{Provider, ProviderError};
pub use select::LabSelector;
pub use state::{now_rfc3339, Accel, LabState, NodeState, RecordedProcess, Stage};
pub use teardown::teardown;
pub use up::{blocking, up, InFlight, UpError, UpNode, UpOptions, UpOutcome};
