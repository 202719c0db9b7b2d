//! The control loops that make the cluster keep what it was told (Kubernetes' kube-controller-manager):
//! they watch the API and write to it like any other client, and run on one control-plane member at a
//! time, the holder of the Lease `kube-system/testbed-controller-manager` ([`leader`]).
//!
//! Each loop keeps list+watch caches ([`cache`]) that feed a work queue of `namespace/name` keys
//! ([`queue`]), reconciles a key from the caches, and (for the ReplicaSet controller) uses expectations
//! ([`expectations`]) so a write is never repeated before its watch event arrives.
//!
//! The loops [`manager::run`] starts are the static list [`manager::LOOPS`], one line per loop: a loop is
//! `pub async fn run(ctx: Context) -> Result<(), ClientError>` (or takes a config too, supplied in its
//! line), so adding the scheduler or the node lifecycle controller is one line there.

pub mod cache;
pub mod deployment;
pub mod endpointslice;
pub mod events;
pub mod expectations;
pub mod gc;
pub mod leader;
pub mod manager;
pub mod node_lifecycle;
mod owners;
mod podutil;
pub mod queue;
pub mod replicaset;
pub mod scheduler;
mod worker;

use std::sync::Arc;

use crate::client::Client;

pub use events::EventRecorder;
use worker::{resync, work};

/// What every control loop gets: the API client, where to report what it did, and who it is.
#[derive(Clone)]
pub struct Context {
    /// The lab's API servers.
    pub client: Arc<Client>,
    /// Records Events for `kubectl describe`.
    pub events: EventRecorder,
    /// This member's identity (its node name), as leases and events name it.
    pub identity: String,
    /// The loops' settings (the controller manager's flags).
    pub settings: Settings,
}

/// The settings of the loops that have any.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The scheduler's name and parallelism.
    pub scheduler: scheduler::SchedulerConfig,
    /// The node lifecycle controller's grace period and eviction timeout.
    pub node_lifecycle: node_lifecycle::NodeLifecycleConfig,
}

impl Context {
    /// The context of `identity`, reporting as `identity` too.
    pub fn new(client: Arc<Client>, identity: &str) -> Self {
        Self {
            events: EventRecorder::new(client.clone(), identity),
            client,
            identity: identity.to_string(),
            settings: Settings::default(),
        }
    }
}
