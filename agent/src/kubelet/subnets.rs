//! Peers from the subnet leases. The follow loop publishes every Node's lease as it lists and watches
//! them; an applier task turns the latest leases into the NodeSpec's peers and converges the kernel through
//! `Agent::apply_node`, the path `PUT /v1/node` takes. Which source wins: once the node follows an API and
//! has listed the Nodes, its peers are the leases' plus every peer the CLI planned that no lease names (the
//! rest of the spec is the CLI's). A lease overrides the planned entry of its node (a moved underlay
//! address), a node only the API knows is added, and one deleted from the API goes unless the CLI planned
//! it. The planned peers stay as a floor because leases lag: a node that has not registered yet, or that
//! switched backend and has not republished its annotations (every 10 s), would otherwise drop out of every
//! other node's routes for that time. The floor ends for a node whose Node this agent has seen and that is
//! gone from the API: it was removed from the lab (`up` without it), and the CLI does not tell the nodes that
//! stay. Before the first list, and after leaving, the CLI's spec is applied whole.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use testbed_api::{ApplyResponse, NodeSpec, PeerSpec};
use tokio::sync::watch;

use super::leases::{self, Leases};
use super::lock;
use crate::pod::{Agent, AgentError};

pub struct Subnets {
    agent: Arc<Agent>,
    /// The latest leases; None while the node follows no API or has not listed the Nodes yet.
    leases: watch::Sender<Option<Arc<Leases>>>,
    /// Held from reading the agent's spec to applying it with new peers, by the applier and by `PUT
    /// /v1/node`: otherwise one could apply a spec the other has just replaced.
    apply: tokio::sync::Mutex<()>,
    /// The reason each lease was last left out for, so that each is logged once rather than per change.
    skipped: Mutex<BTreeMap<String, String>>,
    /// The peers of the CLI's last `PUT /v1/node`; None until one arrives (the stored spec's then stand in).
    planned: Mutex<Option<Vec<PeerSpec>>>,
    /// Every node whose Node the follow loop has listed or watched since the node joined.
    seen: Mutex<BTreeSet<String>>,
}

impl Subnets {
    pub fn new(agent: Arc<Agent>) -> Arc<Self> {
        let (leases, _) = watch::channel(None);
        Arc::new(Self {
            agent,
            leases,
            apply: tokio::sync::Mutex::new(()),
            skipped: Mutex::default(),
            planned: Mutex::default(),
            seen: Mutex::default(),
        })
    }

    /// The follow loop's latest view of every Node's lease.
    pub fn publish(&self, leases: Leases) {
        lock(&self.seen).extend(leases.keys().cloned());
        self.leases.send_replace(Some(Arc::new(leases)));
    }

    /// Back to the CLI's peers at its next `PUT /v1/node`; the kernel keeps the API's until then.
    pub fn forget(&self) {
        lock(&self.seen).clear();
        self.leases.send_replace(None);
    }

    /// `PUT /v1/node`: the spec with the leases' peers added when there are leases, else as given.
    pub async fn apply_node(&self, mut spec: NodeSpec) -> Result<ApplyResponse, AgentError> {
        let _guard = self.apply.lock().await;
        *lock(&self.planned) = Some(spec.peers.clone());
        let leases = self.leases.borrow().clone();
        if let Some(leases) = leases {
            // Validation of the rest of the spec comes first, as without leases.
            testbed_api::validate::validate_node(&NodeSpec { peers: vec![], ..spec.clone() })
                .map_err(AgentError::Invalid)?;
            spec.peers = self.peers(&leases, &spec);
        }
        self.agent.apply_node(spec).await
    }

    /// Converges the kernel to each new set of leases until the loop is stopped; a burst of changes is one
    /// apply with the latest of them.
    pub async fn run(self: Arc<Self>) {
        let mut rx = self.leases.subscribe();
        loop {
            // Applied in a task of its own: an apply stopped half-way (the loop aborted) would leave the
            // kernel half-changed.
            let me = self.clone();
            let _ = tokio::spawn(async move { me.converge().await }).await;
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    async fn converge(&self) {
        let _guard = self.apply.lock().await;
        let Some(leases) = self.leases.borrow().clone() else { return };
        // No spec applied yet: the first `PUT /v1/node` takes the leases' peers.
        let Some(mut spec) = self.agent.node_status().await.spec else { return };
        let peers = self.peers(&leases, &spec);
        if peers == spec.peers {
            return;
        }
        let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
        tracing::info!(peers = ?names, "subnet leases: converging to new peers");
        spec.peers = peers;
        match self.agent.apply_node(spec).await {
            Ok(r) if !r.changes.is_empty() => tracing::info!(changes = ?r.changes, "subnet leases applied"),
            Ok(_) => {}
            // The spec is stored all the same and the agent's reconcile loop retries it.
            Err(e) => tracing::warn!(error = %e, "subnet leases: the node did not converge"),
        }
    }

    fn peers(&self, leases: &Leases, spec: &NodeSpec) -> Vec<PeerSpec> {
        let planned = lock(&self.planned).clone().unwrap_or_else(|| spec.peers.clone());
        let deleted: BTreeSet<String> = lock(&self.seen).iter().filter(|n| !leases.contains_key(*n)).cloned().collect();
        let (peers, skipped) = leases::peers(leases, &NodeSpec { peers: planned, ..spec.clone() }, &deleted);
        let mut logged = lock(&self.skipped);
        for (node, reason) in &skipped {
            if logged.get(node) != Some(reason) {
                tracing::warn!(node = %node, reason = %reason, "subnet lease ignored");
            }
        }
        *logged = skipped;
        peers
    }
}
