//! What the lab layer needs from a provider: the contract `up`, `teardown` and `status` are written against.
//! It lives here, beside the lab's own types, so that the implementations (`crate::provider::*`) depend on the
//! lab layer and never the other way round.

use futures::future::BoxFuture;

use crate::plan::Plan;
use crate::ui::Ui;

use super::dir::LabDir;
use super::state::{LabState, NodeState};
use super::up::{InFlight, UpError, UpOptions, UpOutcome};

/// A provider's own failure, kept as it is so that its message reaches the user unchanged.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ProviderError(Box<dyn std::error::Error + Send + Sync>);

impl ProviderError {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ProviderError(Box::new(e))
    }
}

/// What a provider must do for the lab layer.
pub trait Provider: Send + Sync {
    /// Brings every node of `plan` to a running machine with a healthy agent and the plan's pods, reusing the
    /// machines `previous` records that still run. Everything it starts is recorded in the lab directory as soon
    /// as it exists, so that [`stop_machines`](Self::stop_machines) finds it even when this future is dropped;
    /// blocking work that makes resources runs through `inflight`, so that a rollback can wait for it.
    fn converge<'a>(
        &'a self,
        ui: &'a Ui,
        plan: Plan,
        dir: LabDir,
        previous: Option<LabState>,
        opts: &'a UpOptions,
        inflight: InFlight,
    ) -> BoxFuture<'a, Result<UpOutcome, UpError>>;

    /// Whether the machine `state` records for `node` still runs and is still this lab's.
    fn is_running(&self, dir: &LabDir, node: &str, state: &NodeState) -> bool;

    /// Whether what the lab's machines are attached to on the host (QEMU: the lab's netns) still exists; when it
    /// does not, `up` replaces the machines instead of reusing them.
    fn host_resources_exist(&self, plan: &Plan) -> bool;

    /// Stops every machine of the lab that still runs, found from the lab directory alone (no topology, no
    /// plan needed); returns (node, pid) of each. Any machine that may still run is an error.
    fn stop_machines(&self, dir: &LabDir) -> Result<Vec<(String, u32)>, ProviderError>;

    /// Removes what the provider made for the lab outside its directory; returns its name when something was
    /// removed. Idempotent.
    fn remove_host_resources(&self, dir: &LabDir) -> Result<Option<String>, ProviderError>;
}
