//! The pod runtime: the `Agent` and its API-facing methods. The work is split by stage of a pod's life:
//! `create` (sandbox and launchers), `supervise` (restarts with back-off), `teardown` (delete), `store`
//! (persistence and re-adoption after an agent restart), `recover` (pods the reconcile loop brings back) and
//! `exec`; `node` is the node half (NodeSpec, network convergence, the reconcile loop). Processes are
//! reached through the `PodProcesses` trait (`processes`), so these rules have unit tests against a fake.

mod bundle;
mod create;
mod creds;
pub mod exec;
pub mod infra;
pub mod launcher;
mod logs;
mod node;
mod oci;
mod phase;
mod probe_run;
mod probe_state;
mod probing;
mod processes;
mod reaper;
mod record;
mod recover;
pub mod sandbox;
mod store;
mod supervise;
mod teardown;
mod volumes;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use testbed_api::{ApiError, ContainerStatus, Health, Leak, PodPhase, PodSpec, PodStatus};

use crate::cgroups::{CgroupError, Cgroups};
use crate::net::{NetError, Network};
use node::NodeState;
use phase::pod_phase;
use processes::{LaunchError, LinuxProcesses, PodProcesses};
use record::{container_pid, Pod};
use sandbox::SandboxError;

pub use create::Sandbox;
pub use node::RECONCILE_PERIOD;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Cgroup leaf of the infra process; `_` keeps it apart from container names (DNS labels).
const INFRA_CGROUP: &str = "_infra";

pub struct Config {
    pub state_dir: PathBuf,
    /// Where the IPAM keeps its leases (one file per address).
    pub lease_dir: PathBuf,
    /// Binary re-executed as container launcher (`/proc/self/exe`: the running agent, even after the
    /// file on disk has been replaced by a push).
    pub exe: PathBuf,
    /// SIGTERM -> SIGKILL grace when a pod is deleted without one (`?grace_period_secs`).
    pub kill_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Invalid(ApiError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Failed(String),
    /// A container's image is not in the node's store, and nothing is pulled (the kubelet's
    /// `ErrImageNeverPull`): the pod waits until the image is put there.
    #[error("{0}")]
    ImageNeverPull(String),
    /// A deleted pod's teardown left these behind; the agent keeps retrying it (`teardown::Unfinished`).
    #[error(
        "pod `{pod}` is stopped but not fully removed: {}; the agent retries every {} s, and a DELETE retries at once",
        leaks.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        RECONCILE_PERIOD.as_secs()
    )]
    Leaked { pod: String, leaks: Vec<Leak> },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

type Result<T, E = AgentError> = std::result::Result<T, E>;

pub struct Agent {
    cfg: Config,
    net: Network,
    cgroups: Box<dyn Cgroups>,
    processes: Box<dyn PodProcesses>,
    node: Mutex<NodeState>,
    /// Serialises kernel network convergence (PUT /v1/node and the periodic reconcile).
    apply_lock: tokio::sync::Mutex<()>,
    pods: Mutex<BTreeMap<String, Arc<Pod>>>,
    /// One async lock per pod name, held for the whole of a create, a delete, or the delete + create of a
    /// lost sandbox: those steps of one pod never interleave (a create racing a delete left a live pod no
    /// API could see), and a second DELETE waits for the first one to finish. Entries exist only while
    /// someone holds or waits for them.
    name_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Deleted pods whose teardown left something behind (no longer in `pods`), by name; persisted in
    /// state_dir/teardown so an agent restart keeps retrying them too.
    unfinished: Mutex<BTreeMap<String, teardown::Unfinished>>,
}

/// Holds a pod name's lock (`Agent::lock_name`); forgets the lock on drop when nobody else waits for it.
struct NameGuard<'a> {
    agent: &'a Agent,
    name: String,
    mutex: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        let mut locks = lock(&self.agent.name_locks);
        self.guard.take();
        // Clones are only made under `name_locks`: the map's and ours left means no one else waits.
        if Arc::strong_count(&self.mutex) == 2 {
            locks.remove(&self.name);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn pod_cgroup(pod: &str) -> String {
    format!("pod-{pod}")
}
fn infra_cgroup(pod: &str) -> String {
    format!("pod-{pod}/{INFRA_CGROUP}")
}
fn container_cgroup(pod: &str, container: &str) -> String {
    format!("pod-{pod}/{container}")
}

impl Agent {
    pub async fn new(cfg: Config, cgroups: Box<dyn Cgroups>) -> Result<Arc<Agent>> {
        let processes = LinuxProcesses::new(&cfg.exe).map_err(io("memfd for the infra program"))?;
        Agent::with_processes(cfg, cgroups, Box::new(processes)).await
    }

    /// `new` with the given process interface (unit tests pass a fake).
    async fn with_processes(
        cfg: Config,
        cgroups: Box<dyn Cgroups>,
        processes: Box<dyn PodProcesses>,
    ) -> Result<Arc<Agent>> {
        for dir in ["pods", teardown::UNFINISHED_DIR] {
            std::fs::create_dir_all(cfg.state_dir.join(dir))
                .map_err(io(format!("create {}", cfg.state_dir.display())))?;
        }
        cgroups.init()?;
        let net =
            Network::new(&cfg.lease_dir, |pid, pod| sandbox::is_ours(pid, sandbox::INFRA_ROLE, pod, None)).await?;
        Ok(Arc::new(Agent {
            cfg,
            net,
            cgroups,
            processes,
            node: Mutex::new(NodeState::default()),
            apply_lock: tokio::sync::Mutex::new(()),
            pods: Mutex::new(BTreeMap::new()),
            name_locks: Mutex::new(HashMap::new()),
            unfinished: Mutex::new(BTreeMap::new()),
        }))
    }

    /// Waits for, then holds, the lock of pod name `name` (see `name_locks`).
    async fn lock_name(&self, name: &str) -> NameGuard<'_> {
        let mutex = lock(&self.name_locks).entry(name.to_string()).or_default().clone();
        let guard = mutex.clone().lock_owned().await;
        NameGuard { agent: self, name: name.to_string(), mutex, guard: Some(guard) }
    }

    pub fn health(&self) -> Health {
        Health { status: "ok".into(), agent_version: AGENT_VERSION.into() }
    }

    pub fn list_pods(&self) -> Vec<PodStatus> {
        let pods: Vec<Arc<Pod>> = lock(&self.pods).values().cloned().collect();
        pods.iter().map(|p| self.status_of(p)).collect()
    }

    /// The spec of every pod on the node.
    pub fn pod_specs(&self) -> Vec<PodSpec> {
        lock(&self.pods).values().map(|p| p.spec.clone()).collect()
    }

    pub fn get_pod(&self, name: &str) -> Result<PodStatus> {
        let pod = self.find(name)?;
        Ok(self.status_of(&pod))
    }

    fn find(&self, name: &str) -> Result<Arc<Pod>> {
        lock(&self.pods).get(name).cloned().ok_or_else(|| AgentError::NotFound(format!("pod `{name}` not found")))
    }

    fn status_of(&self, pod: &Pod) -> PodStatus {
        let rec = lock(&pod.record);
        let phase = match rec.infra_pid {
            None => PodPhase::Pending,
            Some(_) => pod_phase(pod.spec.restart_policy, rec.containers.iter().map(|c| &c.state)),
        };
        PodStatus {
            name: pod.spec.name.clone(),
            phase,
            qos_class: pod.qos,
            ip: rec.ip,
            infra_pid: rec.infra_pid,
            host_veth: rec.host_veth.clone(),
            cgroup: self.cgroups.display_path(&pod_cgroup(&pod.spec.name)),
            containers: rec
                .containers
                .iter()
                .map(|c| ContainerStatus {
                    name: c.name.clone(),
                    state: c.state.clone(),
                    restart_count: c.restart_count,
                    ready: c.started && c.ready && container_pid(&c.state).is_some(),
                    started: c.started && container_pid(&c.state).is_some(),
                    last_state: c.last_terminated.clone(),
                    cgroup: self.cgroups.display_path(&container_cgroup(&pod.spec.name, &c.name)),
                })
                .collect(),
        }
    }

    /// Creates the pod. Ok((true, status)) when created, Ok((false, status)) when an identical pod exists.
    pub async fn create_pod(self: &Arc<Self>, spec: PodSpec) -> Result<(bool, PodStatus)> {
        testbed_api::validate::validate_pod(&spec).map_err(AgentError::Invalid)?;
        let _name = self.lock_name(&spec.name).await;
        self.create_locked(spec).await
    }

    /// `grace`: SIGTERM -> SIGKILL delay (`None`: the configured default). Ok means the pod is gone, all of
    /// it: a teardown that leaves something behind is `AgentError::Leaked` (and is retried, see
    /// `teardown::Unfinished`). A DELETE that arrives while another one runs waits for it (name lock) and then
    /// answers as that one ended; one of a pod whose teardown is unfinished retries it now.
    pub async fn delete_pod(self: &Arc<Self>, name: &str, grace: Option<Duration>) -> Result<()> {
        let existed = lock(&self.pods).contains_key(name) || lock(&self.unfinished).contains_key(name);
        let _name = self.lock_name(name).await;
        match self.find(name) {
            Ok(pod) => self.delete_locked(&pod, grace.unwrap_or(self.cfg.kill_grace)).await,
            Err(_) if lock(&self.unfinished).contains_key(name) => self.finish_teardown(name).await,
            // Deleted by the request we waited for.
            Err(_) if existed => Ok(()),
            Err(e) => Err(e),
        }
    }
}
