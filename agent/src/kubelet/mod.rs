//! The kubelet role: the agent follows a lab's API server. `PUT /v1/control-plane` hands it a join (servers,
//! CA, token, node name), kept in `<state-dir>/kubelet/join.json` so that a restarted agent follows again;
//! the follow loop (`follow.rs`) registers the Node, renews its Lease, runs the API pods bound to the node
//! through the agent's own pod runtime and writes their status back. Pods of the node-local API are never
//! touched: the loop acts only on pods it created (`owned.rs`). It also watches every Node: their subnet
//! leases (flannel's annotations, `leases.rs`) become the node's peers (`subnets.rs`); and every Service
//! and EndpointSlice, which become the service proxy's rules (`services.rs`, `proxy_spec.rs`); and every
//! NetworkPolicy, Pod and Namespace, which become the policy enforcer's (`network_policies.rs`,
//! `policy_spec.rs`).
//!
//! Files: `diff.rs` (what to create and delete), `status.rs` (a pod's API status) and `leases.rs` (leases
//! to peers) decide without I/O; `node.rs` (Node and Lease), `tasks.rs` (creates and deletes),
//! `subnets.rs` (peers applied) and `follow.rs` (sessions) act.

mod diff;
mod follow;
mod leases;
mod mirror;
mod network_policies;
mod node;
mod owned;
mod policy_spec;
mod proxy_spec;
mod services;
mod status;
mod subnets;
mod tasks;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use testbed_api::{ApplyResponse, ControlPlaneJoin, ControlPlaneStatus, NodeSpec};
use testbed_control_plane::client::Client;

use crate::pod::{Agent, AgentError};
use crate::policy::Enforcer;
use crate::proxy::Proxy;

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The join cannot be followed (no server, a CA that holds no certificate, a bad node name).
    #[error("{0}")]
    Invalid(String),
    /// The join or the ownership records could not be read or written.
    #[error("kubelet state: {0}")]
    State(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data behind these locks: a panic elsewhere leaves it usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `data` to `path` through a temporary file and a rename, readable by `mode`.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), KubeletError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| KubeletError::State(format!("{}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(fail)?;
    file.write_all(data).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

struct Running {
    join: ControlPlaneJoin,
    task: tokio::task::JoinHandle<()>,
    peers: tokio::task::JoinHandle<()>,
    services: tokio::task::JoinHandle<()>,
    policies: tokio::task::JoinHandle<()>,
    shared: Arc<Mutex<ControlPlaneStatus>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Pod creates and deletes run in tasks of their own and finish; only the loop stops.
        self.task.abort();
        self.peers.abort();
        self.services.abort();
        self.policies.abort();
    }
}

pub struct Kubelet {
    agent: Arc<Agent>,
    dir: PathBuf,
    /// One of each for every loop this agent runs: a replaced loop's creates and deletes still finish and
    /// must record what they did in the same place, and keep their names busy for the new loop.
    owned: Arc<owned::Owned>,
    tasks: tasks::Tasks,
    subnets: Arc<subnets::Subnets>,
    proxy: Arc<Proxy>,
    policy: Arc<Enforcer>,
    running: Mutex<Option<Running>>,
}

impl Kubelet {
    /// The kubelet of `agent`, keeping its state in `<state_dir>/kubelet`; `proxy` follows the API's Services,
    /// `policy` its NetworkPolicies.
    pub fn new(
        agent: Arc<Agent>,
        proxy: Arc<Proxy>,
        policy: Arc<Enforcer>,
        state_dir: &Path,
    ) -> Result<Arc<Self>, KubeletError> {
        let dir = state_dir.join("kubelet");
        std::fs::create_dir_all(&dir).map_err(|e| KubeletError::State(format!("{}: {e}", dir.display())))?;
        let owned = Arc::new(owned::Owned::load(dir.join("pods.json"))?);
        let subnets = subnets::Subnets::new(agent.clone());
        Ok(Arc::new(Self {
            agent,
            dir,
            owned,
            tasks: tasks::Tasks::default(),
            subnets,
            proxy,
            policy,
            running: Mutex::new(None),
        }))
    }

    fn join_file(&self) -> PathBuf {
        self.dir.join("join.json")
    }

    /// Follows the stored join, if there is one (agent start).
    pub fn resume(&self) {
        let data = match std::fs::read(self.join_file()) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => return tracing::error!("{}: {e}", self.join_file().display()),
        };
        match serde_json::from_slice(&data).map_err(|e| KubeletError::State(e.to_string())).and_then(|j| self.start(j))
        {
            Ok(()) => tracing::info!("control plane: following the stored join"),
            Err(e) => tracing::error!("{}: {e}", self.join_file().display()),
        }
    }

    /// Stores `join` and follows it (the same join again changes nothing; another one replaces the loop).
    pub fn join(&self, join: ControlPlaneJoin) -> Result<(), KubeletError> {
        if lock(&self.running).as_ref().is_some_and(|r| r.join == join) {
            return Ok(());
        }
        Self::client(&join)?;
        // The token is a credential: only root reads the file.
        let data = serde_json::to_vec_pretty(&join).map_err(|e| KubeletError::State(e.to_string()))?;
        write_atomic(&self.join_file(), &data, 0o600)?;
        self.start(join)
    }

    /// Stops following and forgets the join; the pods the loop created keep running.
    pub fn leave(&self) -> Result<(), KubeletError> {
        lock(&self.running).take();
        self.subnets.forget();
        match std::fs::remove_file(self.join_file()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(KubeletError::State(format!("{}: {e}", self.join_file().display()))),
        }
    }

    /// `PUT /v1/node`: the CLI's spec, with the subnet leases' peers while the node follows an API.
    pub async fn apply_node(&self, spec: NodeSpec) -> Result<ApplyResponse, AgentError> {
        self.subnets.apply_node(spec).await
    }

    /// Counts a `PUT /v1/node` in the agent's NodeStatus.
    pub fn count_node_put(&self) {
        self.agent.count_node_put();
    }

    pub fn status(&self) -> ControlPlaneStatus {
        match lock(&self.running).as_ref() {
            Some(r) => ControlPlaneStatus { following: true, ..lock(&r.shared).clone() },
            None => ControlPlaneStatus::default(),
        }
    }

    fn client(join: &ControlPlaneJoin) -> Result<Client, KubeletError> {
        if !testbed_api::validate::is_dns_label(&join.node_name, 63) {
            return Err(KubeletError::Invalid(format!("node_name `{}` is not a DNS label", join.node_name)));
        }
        if let Some(bad) = join.servers.iter().find(|s| !s.starts_with("https://")) {
            return Err(KubeletError::Invalid(format!("server `{bad}` is not an https:// URL")));
        }
        Client::new(&join.servers, &join.ca_pem, &join.token).map_err(|e| KubeletError::Invalid(e.to_string()))
    }

    fn start(&self, join: ControlPlaneJoin) -> Result<(), KubeletError> {
        let api = Arc::new(Self::client(&join)?);
        let shared = Arc::new(Mutex::new(ControlPlaneStatus {
            node_name: Some(join.node_name.clone()),
            pods: self.owned.snapshot().len(),
            ..Default::default()
        }));
        let services = tokio::spawn(services::run(api.clone(), join.node_name.clone(), self.proxy.clone()));
        let policies = tokio::spawn(network_policies::run(api.clone(), join.node_name.clone(), self.policy.clone()));
        let follower = follow::Follower {
            agent: self.agent.clone(),
            api,
            node: join.node_name.clone(),
            owned: self.owned.clone(),
            shared: shared.clone(),
            tasks: self.tasks.clone(),
            subnets: self.subnets.clone(),
        };
        let follower = follower.into_loop();
        let task = tokio::spawn(follower.run());
        let peers = tokio::spawn(self.subnets.clone().run());
        // Replacing the old Running drops it, which stops its loops.
        *lock(&self.running) = Some(Running { join, task, peers, services, policies, shared });
        Ok(())
    }
}
