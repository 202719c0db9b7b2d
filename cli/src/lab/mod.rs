//! A lab: its directory (`dir`: paths, lock, plan.json and state.json), what it records (`state`, written as it
//! changes during `up` by `recorder`), its SSH keys (`keys`), choosing one (`select`), opening and connecting to
//! a running one (`handle`), and its lifecycle whatever the provider: `up` (its frame in `up`, the work in
//! `converge`, one node after its machine is reachable in `node_setup`, timed by `progress`), `teardown` and
//! `status`. What it needs from a provider is the contract in `provider`; the implementations live in
//! `crate::provider` and depend on this module, never the other way round.

pub mod container_images;
pub mod control_plane;
mod converge;
pub mod dir;
pub mod forwarder;
pub mod handle;
pub mod keys;
pub mod node_setup;
pub mod progress;
pub mod provider;
pub mod recorder;
mod resize;
pub mod select;
pub mod state;
pub mod status;
pub mod teardown;
pub mod up;
mod workloads;

#[cfg(test)]
pub(crate) mod fixtures;

pub use dir::LabDir;
pub use handle::{ConnectedLab, ConnectedNode, Lab};
pub use progress::NodeProgress;
pub use provider::{Machines, PreparedLab, Provider, ProviderError, ReachableNode, SshEndpoint, Targets, UpContext};
pub use recorder::StateRecorder;
pub use select::{LabArgs, LabSelector};
pub use state::{now_rfc3339, Accel, LabState, NodeState, ProviderKind, RecordedProcess, Stage};
pub use teardown::{teardown, DownReport};
pub use up::{blocking, up, InFlight, UpError, UpOptions};
