//! What the lab layer needs from a provider: the contract `up`, `teardown` and `status` are written against.
//! It lives here, beside the lab's own types, so that the implementations (`crate::provider::*`) depend on the
//! lab layer and never the other way round.
//!
//! A provider only makes machines reachable: lab-wide preparation ([`Provider::prepare`]: images, host
//! resources, the state to record), then one node at a time a running machine with an SSH endpoint and a
//! host key ([`Machines::reach`]). Everything after that (the agent, the node's network, pods) is the lab
//! layer's (`node_setup`), the same for every provider.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::plan::{NodePlan, Plan};
use crate::ui::Ui;

use super::dir::LabDir;
use super::progress::NodeProgress;
use super::recorder::StateRecorder;
use super::state::{LabState, NodeState};
use super::up::{InFlight, UpError};

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
    /// Everything lab-wide before the nodes come up: images, the host resources the machines attach to, and
    /// the state `up` records (every node with its SSH port and host key; machines of `lab.previous` that still
    /// run are kept). The state is written to the lab directory before any host resource is made, so that
    /// [`stop_machines`](Self::stop_machines) and [`remove_host_resources`](Self::remove_host_resources) find
    /// everything even when this future is dropped; blocking work that makes resources runs through
    /// `lab.inflight`, so that a rollback can wait for it.
    fn prepare<'a>(&'a self, lab: &'a UpContext) -> BoxFuture<'a, Result<PreparedLab, UpError>>;

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

    /// Stops the machine of `node` (one node of the running lab `plan`, which is leaving it) when it runs and
    /// removes what the provider made for that node alone outside the lab directory (QEMU: its taps); returns
    /// the PID it stopped. Idempotent; any machine of the node that may still run is an error.
    fn remove_machine(&self, dir: &LabDir, plan: &Plan, node: &NodePlan) -> Result<Option<u32>, ProviderError>;
}

/// Which of the plan's nodes an `up` brings up: all of them, or only the nodes it adds to a running lab (the
/// others are left alone, not even asked whether their machine runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    All,
    Only(BTreeSet<String>),
}

impl Targets {
    pub fn includes(&self, node: &str) -> bool {
        match self {
            Targets::All => true,
            Targets::Only(names) => names.contains(node),
        }
    }
}

/// What one `up` gives its provider.
pub struct UpContext {
    pub ui: Ui,
    pub plan: Plan,
    pub dir: LabDir,
    /// What the lab recorded before this `up`, when it was up before.
    pub previous: Option<LabState>,
    /// The nodes to bring up; the state of every other node is `previous`'s, unchanged.
    pub targets: Targets,
    /// The static agent the lab layer deploys (a provider may put it on a disk the machines boot with).
    pub agent_binary: PathBuf,
    /// The lab's client key (OpenSSH public key line), to be authorised in every guest.
    pub client_public_key: String,
    /// When every node must be ready (`up --timeout`).
    pub deadline: Instant,
    /// Tracks the blocking work that makes resources (see [`InFlight`]).
    pub inflight: InFlight,
}

impl UpContext {
    /// Time left until the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// What [`Provider::prepare`] made.
pub struct PreparedLab {
    /// The state it recorded (already in the lab directory).
    pub state: LabState,
    /// True when the links' impairments could not be applied on the host and must be applied inside each guest
    /// (on the egress of its underlay NICs, with the same one-way semantics).
    pub impairments_in_guest: bool,
    pub machines: Arc<dyn Machines>,
}

/// The machines of one `up`, made reachable one node at a time (the lab layer runs every node concurrently).
pub trait Machines: Send + Sync {
    /// Brings `node` from its recorded state to a running machine whose sshd answers or is about to (the lab
    /// layer retries the connection until the deadline), reusing the machine the state records when it still
    /// runs. Records every machine in `state` as soon as it exists; names each of its stages on `progress`.
    fn reach<'a>(
        self: Arc<Self>,
        node: &'a NodePlan,
        state: &'a Arc<StateRecorder>,
        progress: &'a mut NodeProgress,
    ) -> BoxFuture<'a, Result<ReachableNode, UpError>>;
}

/// A node whose machine runs: how to get into it.
#[derive(Debug, Clone)]
pub struct ReachableNode {
    /// The machine's process on the host (QEMU's PID), for `up`'s report.
    pub pid: Option<u32>,
    /// An already running machine was reused instead of started.
    pub reused: bool,
    pub ssh: SshEndpoint,
    /// The agent binary's size on a disk the machine booted with (QEMU's agent disk), so that deploying it is a
    /// copy inside the guest instead of an upload; None when there is no such disk or it may hold another
    /// build (a reused machine).
    pub agent_disk_size: Option<u64>,
}

/// Where a node's sshd listens on the host's 127.0.0.1 and the host key it must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshEndpoint {
    pub port: u16,
    /// OpenSSH public key line, pinned by the client.
    pub host_key: String,
}
