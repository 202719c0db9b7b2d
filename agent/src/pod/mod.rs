//! The agent's state and the pod lifecycle: sandbox (cgroups, infra process, network attachment), container
//! supervision with restart policies, deletion, persistence and re-adoption after an agent restart, and the
//! periodic reconcile that repairs network drift.
//!
//! Across an agent restart, pods keep running: infra processes and launchers are not tied to the agent's
//! life (launchers run in their own process group, containers die only with their launcher). The new agent
//! reads state_dir/pods/*.json, adopts every pod whose infra process is still alive and ours (checked through
//! /proc/<pid>/cmdline), watches adopted launchers by polling /proc and reads their exit status from the exit
//! file they write. A pod whose infra process is gone is torn down and created again from its spec.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use testbed_api::{
    ApiError, ApplyResponse, ContainerState, ContainerStatus, Health, NodeSpec, NodeStatus, ObservedNetwork, PodPhase,
    PodSpec, PodStatus, QosClass, RestartPolicy,
};
use tokio::io::AsyncBufReadExt;

pub mod exec;
pub mod infra;
pub mod launcher;
mod phase;
pub mod sandbox;

use crate::cgroups::{CgroupError, CgroupLimits, Cgroups};
use crate::net::{NetError, Network};
use crate::qos::{container_limits, pod_limits, qos_class};
use phase::{pod_phase, should_restart, terminated_reason};
use sandbox::{SandboxError, INFRA_ROLE, LAUNCHER_ROLE};

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Containers get this PATH (plus their spec's env), not the agent's environment.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Cgroup leaf of the infra process; `_` keeps it apart from container names (DNS labels).
const INFRA_CGROUP: &str = "_infra";
const RESTART_BACKOFF_START: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A container that ran this long before exiting restarts without backoff history.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(3);
/// Waiting reason of the containers of a pod whose sandbox could not be made again (the kubelet's name for it).
const SANDBOX_ERROR: &str = "CreatePodSandboxError";
/// How long a SIGKILLed process may take to exit (it can be stuck in uninterruptible sleep) before we go on.
const KILL_WAIT: Duration = Duration::from_secs(5);

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
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Failed(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

type Result<T, E = AgentError> = std::result::Result<T, E>;

#[derive(Default)]
struct NodeState {
    spec: Option<NodeSpec>,
    converged: bool,
    last_error: Option<String>,
    drift_repairs: u64,
}

/// What is persisted per pod in state_dir/pods/<name>.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PodRecord {
    spec: PodSpec,
    infra_pid: Option<u32>,
    ip: Option<Ipv4Addr>,
    host_veth: Option<String>,
    containers: Vec<ContainerRecord>,
    /// The sandbox is gone and the pod stays in its final phase (see `settle_after_lost_sandbox`).
    #[serde(default)]
    sandbox_lost: bool,
}

impl PodRecord {
    /// The kubelet's rule for a pod whose sandbox is gone (computePodActions): a pod that has finished, or a
    /// restartPolicy Never pod whose containers have run, is not started again. Its containers that were
    /// running end as Terminated (137, Error) and the pod keeps its final phase. Returns the launchers still
    /// recorded (container, PID), to be stopped, or None when the pod is to be recreated instead.
    fn settle_after_lost_sandbox(&mut self) -> Option<Vec<(String, u32)>> {
        let policy = self.spec.restart_policy;
        let finished = matches!(
            pod_phase(policy, self.containers.iter().map(|c| &c.state)),
            PodPhase::Succeeded | PodPhase::Failed
        );
        let ran =
            self.containers.iter().any(|c| c.restart_count > 0 || !matches!(c.state, ContainerState::Waiting { .. }));
        if !(finished || policy == RestartPolicy::Never && ran) {
            return None;
        }
        let mut launchers = Vec::new();
        for c in &mut self.containers {
            if matches!(c.state, ContainerState::Running { .. }) {
                c.state = ContainerState::Terminated { exit_code: 137, reason: "Error".into() };
            }
            if let Some(pid) = c.launcher_pid.take() {
                launchers.push((c.name.clone(), pid));
            }
        }
        self.sandbox_lost = true;
        Some(launchers)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ContainerRecord {
    name: String,
    state: ContainerState,
    restart_count: u32,
    launcher_pid: Option<u32>,
    /// memory OOM-kill counter of the container cgroup when it last started.
    #[serde(default)]
    oom_baseline: u64,
}

struct Pod {
    spec: PodSpec,
    qos: QosClass,
    record: Mutex<PodRecord>,
    deleting: AtomicBool,
    wake: tokio::sync::Notify,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Pod {
    /// A pod without a sandbox yet, its containers waiting with `reason`.
    fn pending(spec: PodSpec, reason: &str) -> Arc<Pod> {
        let containers = spec
            .containers
            .iter()
            .map(|c| ContainerRecord {
                name: c.name.clone(),
                state: ContainerState::Waiting { reason: reason.into() },
                restart_count: 0,
                launcher_pid: None,
                oom_baseline: 0,
            })
            .collect();
        let record = PodRecord {
            spec: spec.clone(),
            infra_pid: None,
            ip: None,
            host_veth: None,
            containers,
            sandbox_lost: false,
        };
        Arc::new(Pod {
            qos: qos_class(&spec),
            spec,
            record: Mutex::new(record),
            deleting: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            tasks: Mutex::new(Vec::new()),
        })
    }
}

/// How a container supervisor begins.
enum Start {
    Fresh,
    Started(tokio::process::Child),
    /// A launcher left by a previous agent (maybe already gone).
    Adopted(u32),
}

/// The sandbox of a pod: its infra process and network attachment.
pub struct Sandbox {
    pub infra_pid: u32,
    pub ip: Option<Ipv4Addr>,
    pub host_veth: Option<String>,
}

pub struct Agent {
    cfg: Config,
    net: Network,
    cgroups: Box<dyn Cgroups>,
    /// The infra program, executed from this memfd for every pod.
    infra_image: std::os::fd::OwnedFd,
    node: Mutex<NodeState>,
    /// Serialises kernel network convergence (PUT /v1/node and the periodic reconcile).
    apply_lock: tokio::sync::Mutex<()>,
    pods: Mutex<BTreeMap<String, Arc<Pod>>>,
    /// One async lock per pod name, held for the whole of a create, a delete, or the delete + create of a
    /// lost sandbox: those steps of one pod never interleave (a create racing a delete left a live pod no
    /// API could see), and a second DELETE waits for the first one to finish. Entries exist only while
    /// someone holds or waits for them.
    name_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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

fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let data =
        serde_json::to_vec_pretty(value).map_err(|e| AgentError::Failed(format!("encode {}: {e}", path.display())))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, data).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("rename {}", path.display())))
}

impl Agent {
    pub async fn new(cfg: Config, cgroups: Box<dyn Cgroups>) -> Result<Arc<Agent>> {
        std::fs::create_dir_all(cfg.state_dir.join("pods"))
            .map_err(io(format!("create {}", cfg.state_dir.display())))?;
        cgroups.init()?;
        let net = Network::new(&cfg.lease_dir, |pid, pod| sandbox::is_ours(pid, INFRA_ROLE, pod, None)).await?;
        let infra_image = infra::memfd().map_err(io("memfd for the infra program"))?;
        Ok(Arc::new(Agent {
            cfg,
            net,
            cgroups,
            infra_image,
            node: Mutex::new(NodeState::default()),
            apply_lock: tokio::sync::Mutex::new(()),
            pods: Mutex::new(BTreeMap::new()),
            name_locks: Mutex::new(HashMap::new()),
        }))
    }

    fn node_file(&self) -> PathBuf {
        self.cfg.state_dir.join("node.json")
    }
    fn pod_file(&self, pod: &str) -> PathBuf {
        self.cfg.state_dir.join("pods").join(format!("{pod}.json"))
    }
    /// Logs and exit files of the pod's containers.
    fn pod_dir(&self, pod: &str) -> PathBuf {
        self.cfg.state_dir.join("pods").join(pod)
    }

    /// Waits for, then holds, the lock of pod name `name` (see `name_locks`).
    async fn lock_name(&self, name: &str) -> NameGuard<'_> {
        let mutex = lock(&self.name_locks).entry(name.to_string()).or_default().clone();
        let guard = mutex.clone().lock_owned().await;
        NameGuard { agent: self, name: name.to_string(), mutex, guard: Some(guard) }
    }

    pub fn exe(&self) -> &Path {
        &self.cfg.exe
    }

    /// The namespaces (and container process and cgroup) an exec into `pod` enters.
    pub fn exec_target(&self, pod: &str, container: Option<&str>) -> Result<exec::ExecTarget> {
        let p = self.find(pod)?;
        let rec = lock(&p.record);
        let infra_pid = rec.infra_pid.ok_or_else(|| AgentError::Conflict(format!("pod `{pod}` has no sandbox yet")))?;
        let mut target = exec::ExecTarget { pod: pod.to_string(), infra_pid, container: None, env: vec![] };
        if let Some(name) = container {
            let idx = p.spec.containers.iter().position(|c| c.name == name).ok_or_else(|| {
                AgentError::Invalid(ApiError {
                    field: Some("container".into()),
                    message: format!("pod `{pod}` has no container `{name}`"),
                })
            })?;
            let pid = exec::container_pid(&rec.containers[idx].state)
                .ok_or_else(|| AgentError::Conflict(format!("container `{name}` of pod `{pod}` is not running")))?;
            let procs = self.cgroups.procs_files(&container_cgroup(pod, name));
            target.container = Some((name.to_string(), pid, procs));
            target.env = p.spec.containers[idx].env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        Ok(target)
    }

    pub fn health(&self) -> Health {
        Health { status: "ok".into(), agent_version: AGENT_VERSION.into() }
    }

    // ---- node -------------------------------------------------------------------------------------------

    /// Re-applies the stored NodeSpec and re-adopts the stored pods (agent start).
    pub async fn restore(self: &Arc<Self>) {
        match std::fs::read(self.node_file()) {
            Ok(data) => match serde_json::from_slice::<NodeSpec>(&data) {
                // On failure apply_node keeps the spec, so the periodic reconcile retries it.
                Ok(spec) => {
                    if let Err(e) = self.apply_node(spec).await {
                        tracing::error!("re-applying the stored NodeSpec: {e}");
                    }
                }
                Err(e) => tracing::error!("{}: {e}", self.node_file().display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!("{}: {e}", self.node_file().display()),
        }
        let Ok(entries) = std::fs::read_dir(self.cfg.state_dir.join("pods")) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let record = match std::fs::read(&path).map(|d| serde_json::from_slice::<PodRecord>(&d)) {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::error!("{}: {e}; ignoring it", path.display());
                    continue;
                }
                Err(e) => {
                    tracing::error!("{}: {e}", path.display());
                    continue;
                }
            };
            self.readopt(record).await;
        }
    }

    async fn readopt(self: &Arc<Self>, mut record: PodRecord) {
        let name = record.spec.name.clone();
        let alive = record.infra_pid.is_some_and(|pid| sandbox::is_ours(pid, INFRA_ROLE, &name, None));
        if !alive && !record.sandbox_lost {
            if let Some(launchers) = record.settle_after_lost_sandbox() {
                tracing::warn!(pod = %name, "infra process gone while the agent was down: the pod has run and stays finished");
                self.stop_lost_sandbox(&record.spec, &launchers).await;
            } else {
                tracing::warn!(pod = %name, "infra process gone while the agent was down: recreating the pod");
                self.teardown(&record).await;
                if let Err(e) = self.create_pod(record.spec.clone()).await {
                    tracing::error!(pod = %name, "recreating: {e}; retrying every {RECONCILE_PERIOD:?}");
                    self.keep_pending(record.spec);
                }
                return;
            }
        }
        tracing::info!(pod = %name, infra = ?record.infra_pid, lost = record.sandbox_lost, "re-adopted pod");
        let pod = Arc::new(Pod {
            qos: qos_class(&record.spec),
            spec: record.spec.clone(),
            record: Mutex::new(record.clone()),
            deleting: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            tasks: Mutex::new(Vec::new()),
        });
        lock(&self.pods).insert(name.clone(), pod.clone());
        if record.sandbox_lost {
            // Finished for good: nothing is started, the record (now settled) is kept until DELETE.
            self.persist(&pod);
            return;
        }
        for (idx, c) in record.containers.iter().enumerate() {
            let start = match (&c.state, c.launcher_pid) {
                (_, Some(pid)) => Start::Adopted(pid),
                (ContainerState::Terminated { exit_code, .. }, None)
                    if !should_restart(record.spec.restart_policy, *exit_code) =>
                {
                    continue
                }
                _ => Start::Fresh,
            };
            self.spawn_supervisor(&pod, idx, start);
        }
    }

    /// PUT /v1/node. A spec that fails validation is refused (400) before anything is touched. A valid spec
    /// becomes the node's desired state even when converging the kernel to it fails part-way (say the
    /// underlay interface is not there yet): it is stored (memory and node.json), the error is returned and
    /// kept in NodeStatus.last_error with converged = false, and the periodic reconcile keeps converging
    /// toward it. No rollback: the network worker already works from the new spec after a partial failure,
    /// and keeping one desired spec on both sides is what stops the two from flip-flopping.
    pub async fn apply_node(&self, spec: NodeSpec) -> Result<ApplyResponse> {
        testbed_api::validate::validate_node(&spec).map_err(AgentError::Invalid)?;
        let _guard = self.apply_lock.lock().await;
        let result = self.net.apply(&spec).await;
        if let Err(e @ NetError::InvalidInput(_)) = result {
            // Refused as a whole: the spec is not taken on.
            return Err(e.into());
        }
        let stored = write_json_atomic(&self.node_file(), &spec);
        let mut node = lock(&self.node);
        node.spec = Some(spec);
        match result {
            Ok(changes) => {
                node.converged = true;
                node.last_error = None;
                stored?;
                Ok(ApplyResponse { changes })
            }
            Err(e) => {
                node.converged = false;
                node.last_error = Some(format!("apply: {e}"));
                Err(AgentError::Failed(format!(
                    "the NodeSpec is stored but the node did not converge to it ({e}); the agent keeps retrying \
                     every {} s (see last_error in GET /v1/node)",
                    RECONCILE_PERIOD.as_secs()
                )))
            }
        }
    }

    pub async fn node_status(&self) -> NodeStatus {
        let network = self.net.observe().await;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        let pods = self.list_pods();
        let node = lock(&self.node);
        let (network, last_error) = match network {
            Ok(n) => (n, node.last_error.clone()),
            Err(e) => (
                ObservedNetwork { links: vec![], routes: vec![], neighbours: vec![], fdb: vec![] },
                node.last_error.clone().or(Some(format!("observe: {e}"))),
            ),
        };
        NodeStatus {
            node_name: node.spec.as_ref().map_or(hostname, |s| s.node_name.clone()),
            agent_version: AGENT_VERSION.into(),
            kernel,
            cgroup_version: self.cgroups.version().into(),
            spec: node.spec.clone(),
            converged: node.converged,
            last_error,
            drift_repairs: node.drift_repairs,
            network,
            pods,
        }
    }

    /// One periodic pass: converge the network to the last spec again and re-plug pods whose veth vanished.
    /// Each pass that had to change something counts as one drift repair.
    pub async fn reconcile_once(&self) {
        let spec = lock(&self.node).spec.clone();
        let Some(spec) = spec else { return };
        let _guard = self.apply_lock.lock().await;
        let mut repairs = Vec::new();
        let mut error = None;
        match self.net.apply(&spec).await {
            Ok(changes) => repairs.extend(changes),
            Err(e) => error = Some(format!("apply: {e}")),
        }
        let attached: Vec<(String, u32)> = lock(&self.pods)
            .values()
            .filter(|p| !p.spec.host_network && !p.deleting.load(Ordering::Relaxed))
            .filter_map(|p| {
                let rec = lock(&p.record);
                rec.infra_pid.filter(|_| !rec.sandbox_lost).map(|pid| (p.spec.name.clone(), pid))
            })
            .collect();
        if !attached.is_empty() {
            match self.net.repair_pods(&attached).await {
                Ok(changes) => repairs.extend(changes),
                Err(e) => error = Some(format!("repair pods: {e}")),
            }
        }
        let mut node = lock(&self.node);
        if !repairs.is_empty() {
            node.drift_repairs += 1;
            tracing::warn!(changes = ?repairs, "repaired drift");
        }
        node.converged = error.is_none();
        node.last_error = error;
    }

    pub async fn reconcile_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RECONCILE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.recreate_lost_sandboxes().await;
            self.retry_pending_sandboxes().await;
            self.reconcile_once().await;
        }
    }

    /// A pod whose infra process died has lost its namespaces: like the kubelet on a sandbox change, kill
    /// the pod's containers and create the pod again from its spec (restart counts start over).
    async fn recreate_lost_sandboxes(self: &Arc<Self>) {
        let lost: Vec<PodSpec> = lock(&self.pods)
            .values()
            .filter(|p| !p.deleting.load(Ordering::Relaxed))
            .filter(|p| {
                let rec = lock(&p.record);
                !rec.sandbox_lost
                    && rec.infra_pid.is_some_and(|pid| !sandbox::is_ours(pid, INFRA_ROLE, &p.spec.name, None))
            })
            .map(|p| p.spec.clone())
            .collect();
        for spec in lost {
            // Under the name lock, and only if the pod is still the one found broken: a DELETE that came
            // first must not see its pod come back.
            let _name = self.lock_name(&spec.name).await;
            let Ok(pod) = self.find(&spec.name) else { continue };
            let infra = lock(&pod.record).infra_pid;
            if pod.spec != spec || infra.is_none_or(|pid| sandbox::is_ours(pid, INFRA_ROLE, &spec.name, None)) {
                continue;
            }
            let settled = lock(&pod.record).settle_after_lost_sandbox();
            if let Some(launchers) = settled {
                tracing::warn!(pod = %spec.name, "infra process gone: the pod has run and stays finished");
                self.persist(&pod);
                self.stop_lost_sandbox(&spec, &launchers).await;
                continue;
            }
            tracing::warn!(pod = %spec.name, "infra process gone: recreating the pod");
            self.delete_locked(&pod, self.cfg.kill_grace).await;
            if let Err(e) = self.create_locked(spec.clone()).await {
                tracing::error!(pod = %spec.name, "recreating: {e}; retrying every {RECONCILE_PERIOD:?}");
                self.keep_pending(spec);
            }
        }
    }

    /// A pod the agent must bring back (after a reboot or a lost sandbox) but could not, say because the
    /// network was not ready: kept visible as Pending, its containers waiting with `SANDBOX_ERROR`, and
    /// retried by the reconcile loop, instead of vanishing with nobody left to retry it.
    fn keep_pending(&self, spec: PodSpec) {
        let pod = Pod::pending(spec, SANDBOX_ERROR);
        lock(&self.pods).insert(pod.spec.name.clone(), pod.clone());
        self.persist(&pod);
    }

    /// Tries again to create the pods `keep_pending` holds.
    async fn retry_pending_sandboxes(self: &Arc<Self>) {
        let waiting = |p: &Pod| {
            let rec = lock(&p.record);
            rec.infra_pid.is_none()
                && rec
                    .containers
                    .iter()
                    .all(|c| matches!(&c.state, ContainerState::Waiting { reason } if reason == SANDBOX_ERROR))
        };
        let pending: Vec<Arc<Pod>> =
            lock(&self.pods).values().filter(|p| !p.deleting.load(Ordering::Relaxed) && waiting(p)).cloned().collect();
        for pod in pending {
            let _name = self.lock_name(&pod.spec.name).await;
            // Still the same pending pod (no DELETE or POST of this name got in first)?
            let same = self.find(&pod.spec.name).is_ok_and(|p| Arc::ptr_eq(&p, &pod));
            if !same || !waiting(&pod) {
                continue;
            }
            lock(&self.pods).remove(&pod.spec.name);
            match self.create_locked(pod.spec.clone()).await {
                Ok(_) => tracing::info!(pod = %pod.spec.name, "recreated"),
                Err(e) => {
                    tracing::debug!(pod = %pod.spec.name, "recreating: {e}");
                    self.keep_pending(pod.spec.clone());
                }
            }
        }
    }

    // ---- pods -------------------------------------------------------------------------------------------

    pub fn list_pods(&self) -> Vec<PodStatus> {
        let pods: Vec<Arc<Pod>> = lock(&self.pods).values().cloned().collect();
        pods.iter().map(|p| self.status_of(p)).collect()
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
                    cgroup: self.cgroups.display_path(&container_cgroup(&pod.spec.name, &c.name)),
                })
                .collect(),
        }
    }

    fn persist(&self, pod: &Pod) {
        let rec = lock(&pod.record).clone();
        if pod.deleting.load(Ordering::Relaxed) && rec.infra_pid.is_none() {
            return;
        }
        if let Err(e) = write_json_atomic(&self.pod_file(&pod.spec.name), &rec) {
            tracing::error!(pod = %pod.spec.name, "persisting state: {e}");
        }
    }

    /// Creates the pod. Ok((true, status)) when created, Ok((false, status)) when an identical pod exists.
    pub async fn create_pod(self: &Arc<Self>, spec: PodSpec) -> Result<(bool, PodStatus)> {
        testbed_api::validate::validate_pod(&spec).map_err(AgentError::Invalid)?;
        let _name = self.lock_name(&spec.name).await;
        self.create_locked(spec).await
    }

    /// `create_pod` for a caller that holds the name lock.
    async fn create_locked(self: &Arc<Self>, spec: PodSpec) -> Result<(bool, PodStatus)> {
        if !spec.host_network && lock(&self.node).spec.is_none() {
            return Err(AgentError::Conflict(
                "no NodeSpec applied yet (PUT /v1/node first); only hostNetwork pods can run before".into(),
            ));
        }
        let pod = {
            let mut pods = lock(&self.pods);
            // No delete of this name runs now (we hold its lock): an existing pod is a live one.
            if let Some(existing) = pods.get(&spec.name) {
                if existing.spec == spec {
                    let existing = existing.clone();
                    drop(pods);
                    return Ok((false, self.status_of(&existing)));
                }
                return Err(AgentError::Conflict(format!("pod `{}` exists with a different spec", spec.name)));
            }
            let pod = Pod::pending(spec.clone(), "ContainerCreating");
            pods.insert(spec.name.clone(), pod.clone());
            pod
        };
        let sandbox = match self.create_sandbox(&spec).await {
            Ok(sb) => sb,
            Err(e) => {
                lock(&self.pods).remove(&spec.name);
                return Err(e);
            }
        };
        {
            let mut rec = lock(&pod.record);
            rec.infra_pid = Some(sandbox.infra_pid);
            rec.ip = sandbox.ip;
            rec.host_veth = sandbox.host_veth;
        }
        if let Err(e) = std::fs::create_dir_all(self.pod_dir(&spec.name)) {
            tracing::error!(pod = %spec.name, "creating the pod directory: {e}");
        }
        self.persist(&pod);
        // Start every container before answering, so the answer shows them running (or failed to start).
        for idx in 0..spec.containers.len() {
            let start = match self.start_container(&pod, idx).await {
                Ok(child) => Start::Started(child),
                Err(e) => {
                    tracing::error!(pod = %spec.name, container = %spec.containers[idx].name, "start: {e}");
                    self.mark_terminated(&pod, idx, 128, "StartError");
                    if !should_restart(spec.restart_policy, 128) {
                        continue;
                    }
                    Start::Fresh
                }
            };
            self.spawn_supervisor(&pod, idx, start);
        }
        self.persist(&pod);
        Ok((true, self.status_of(&pod)))
    }

    /// Cgroups, infra process and network attachment of a pod; undone on failure. Used by the benchmark too.
    pub async fn create_sandbox(&self, spec: &PodSpec) -> Result<Sandbox> {
        let name = &spec.name;
        let result = self.create_sandbox_steps(spec).await;
        if result.is_err() {
            let record = PodRecord {
                spec: spec.clone(),
                infra_pid: None,
                ip: None,
                host_veth: None,
                containers: vec![],
                sandbox_lost: false,
            };
            self.teardown(&record).await;
            tracing::debug!(pod = %name, "sandbox creation failed and was undone");
        }
        result
    }

    async fn create_sandbox_steps(&self, spec: &PodSpec) -> Result<Sandbox> {
        let name = &spec.name;
        let t0 = Instant::now();
        self.cgroups.create(&pod_cgroup(name), &pod_limits(spec), true)?;
        self.cgroups.create(&infra_cgroup(name), &CgroupLimits { cpu_shares: 2, ..Default::default() }, false)?;
        let t1 = Instant::now();
        let procs = self.cgroups.procs_files(&infra_cgroup(name));
        let infra_pid = sandbox::spawn_infra(&self.infra_image, name, spec.host_network, &procs)?;
        let t2 = Instant::now();
        let attached: Result<_> = if spec.host_network {
            Ok((lock(&self.node).spec.as_ref().map(|s| s.underlay.address), None))
        } else {
            self.net.attach_pod(name, infra_pid).await.map(|a| (Some(a.ip), Some(a.host_veth))).map_err(Into::into)
        };
        tracing::debug!(
            pod = %name,
            cgroups_us = (t1 - t0).as_micros() as u64,
            infra_us = (t2 - t1).as_micros() as u64,
            attach_us = t2.elapsed().as_micros() as u64,
            "sandbox created"
        );
        match attached {
            Ok((ip, host_veth)) => Ok(Sandbox { infra_pid, ip, host_veth }),
            Err(e) => {
                // Our own child, not reaped yet: its PID cannot have been reused, and right after vfork+exec
                // its cmdline may still read empty, so it is killed without the identity check.
                kill_own_child(infra_pid).await;
                Err(e)
            }
        }
    }

    /// Removes a sandbox created by `create_sandbox` (benchmark).
    pub async fn destroy_sandbox(&self, spec: &PodSpec, sb: &Sandbox) {
        let record = PodRecord {
            spec: spec.clone(),
            infra_pid: Some(sb.infra_pid),
            ip: sb.ip,
            host_veth: sb.host_veth.clone(),
            containers: vec![],
            sandbox_lost: false,
        };
        self.teardown(&record).await;
    }

    /// Starts the launcher of container `idx` and waits until it reports the container's PID.
    async fn start_container(&self, pod: &Pod, idx: usize) -> Result<tokio::process::Child> {
        let spec = &pod.spec;
        let c = &spec.containers[idx];
        let rel = container_cgroup(&spec.name, &c.name);
        self.cgroups.create(&rel, &container_limits(c), false)?;
        let baseline = self.cgroups.oom_kills(&rel).unwrap_or(0);
        let infra_pid = lock(&pod.record)
            .infra_pid
            .ok_or_else(|| AgentError::Failed(format!("pod {}: no infra process", spec.name)))?;
        let dir = self.pod_dir(&spec.name);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let exit_file = dir.join(format!("{}.exit", c.name));
        let _ = std::fs::remove_file(&exit_file);

        let mut cmd = tokio::process::Command::new(&self.cfg.exe);
        cmd.arg(LAUNCHER_ROLE).args([
            "--pod",
            &spec.name,
            "--container",
            &c.name,
            "--infra-pid",
            &infra_pid.to_string(),
        ]);
        if spec.share_process_namespace {
            cmd.arg("--share-pid");
        }
        for f in self.cgroups.procs_files(&rel) {
            cmd.arg("--cgroup-procs").arg(f);
        }
        cmd.arg("--log").arg(dir.join(format!("{}.log", c.name)));
        cmd.arg("--exit-file").arg(&exit_file);
        cmd.arg("--").args(&c.command);
        cmd.env_clear().env("PATH", DEFAULT_PATH);
        if !spec.host_network {
            cmd.env("HOSTNAME", &spec.name);
        }
        cmd.envs(&c.env);
        // Own process group: a signal to the agent's group (Ctrl-C in a test) does not reach containers.
        cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(io(format!("spawn launcher for {}/{}", spec.name, c.name)))?;
        let launcher_pid = child.id().unwrap_or_default();
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let mut reader = tokio::io::BufReader::new(out);
            let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await;
            if !matches!(read, Ok(Ok(n)) if n > 0) {
                line.clear();
            }
        }
        let Some(pid) = parse_container_pid(&line) else {
            // Signals only our own launcher (the Child), never a PID read from the pipe.
            let _ = child.start_kill();
            let status = child.wait().await;
            return Err(AgentError::Failed(format!(
                "launcher for {}/{} did not start the container (it reported {:?}, then {status:?}); see the agent log",
                spec.name,
                c.name,
                line.trim()
            )));
        };
        {
            let mut rec = lock(&pod.record);
            let cr = &mut rec.containers[idx];
            cr.state = ContainerState::Running { pid };
            cr.launcher_pid = Some(launcher_pid);
            cr.oom_baseline = baseline;
        }
        self.persist(pod);
        Ok(child)
    }

    fn mark_terminated(&self, pod: &Pod, idx: usize, exit_code: i32, reason: &str) {
        {
            let mut rec = lock(&pod.record);
            let cr = &mut rec.containers[idx];
            cr.state = ContainerState::Terminated { exit_code, reason: reason.into() };
            cr.launcher_pid = None;
        }
        self.persist(pod);
    }

    fn spawn_supervisor(self: &Arc<Self>, pod: &Arc<Pod>, idx: usize, start: Start) {
        let handle = tokio::spawn(self.clone().supervise(pod.clone(), idx, start));
        lock(&pod.tasks).push(handle);
    }

    /// Watches one container and restarts it according to the pod's restart policy, with the kubelet's
    /// doubling back-off (1 s .. 30 s here).
    async fn supervise(self: Arc<Self>, pod: Arc<Pod>, idx: usize, mut start: Start) {
        let name = pod.spec.containers[idx].name.clone();
        let rel = container_cgroup(&pod.spec.name, &name);
        let mut backoff = RESTART_BACKOFF_START;
        loop {
            let started = Instant::now();
            let exit = match std::mem::replace(&mut start, Start::Fresh) {
                Start::Adopted(launcher) => Some(self.wait_adopted(&pod, &name, launcher).await),
                Start::Started(child) => Some(wait_child(child).await),
                Start::Fresh => {
                    if pod.deleting.load(Ordering::Relaxed) {
                        return;
                    }
                    match self.start_container(&pod, idx).await {
                        Ok(child) => Some(wait_child(child).await),
                        Err(e) => {
                            tracing::error!(pod = %pod.spec.name, container = %name, "start: {e}");
                            self.mark_terminated(&pod, idx, 128, "StartError");
                            None
                        }
                    }
                }
            };
            let code = match exit {
                Some(code) => {
                    let baseline = lock(&pod.record).containers[idx].oom_baseline;
                    let oom = self.cgroups.oom_kills(&rel).map(|n| n > baseline).unwrap_or(false);
                    self.mark_terminated(&pod, idx, code, terminated_reason(code, oom));
                    tracing::info!(pod = %pod.spec.name, container = %name, code, oom, "container exited");
                    code
                }
                None => 128,
            };
            if pod.deleting.load(Ordering::Relaxed) || !should_restart(pod.spec.restart_policy, code) {
                return;
            }
            if started.elapsed() >= BACKOFF_RESET_AFTER {
                backoff = RESTART_BACKOFF_START;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = pod.wake.notified() => {}
            }
            if pod.deleting.load(Ordering::Relaxed) {
                return;
            }
            backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
            lock(&pod.record).containers[idx].restart_count += 1;
        }
    }

    /// Waits for a launcher we did not start (previous agent) and reads the exit status it wrote.
    async fn wait_adopted(&self, pod: &Pod, container: &str, launcher: u32) -> i32 {
        while sandbox::is_ours(launcher, LAUNCHER_ROLE, &pod.spec.name, Some(container)) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let file = self.pod_dir(&pod.spec.name).join(format!("{container}.exit"));
        std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(255)
    }

    /// `grace`: SIGTERM -> SIGKILL delay (`None`: the configured default). Ok means the pod is gone: a
    /// DELETE that arrives while another one runs waits for it (name lock) and then answers Ok too.
    pub async fn delete_pod(self: &Arc<Self>, name: &str, grace: Option<Duration>) -> Result<()> {
        let existed = lock(&self.pods).contains_key(name);
        let _name = self.lock_name(name).await;
        match self.find(name) {
            Ok(pod) => {
                self.delete_locked(&pod, grace.unwrap_or(self.cfg.kill_grace)).await;
                Ok(())
            }
            // Deleted by the request we waited for.
            Err(_) if existed => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stops and removes `pod`; the caller holds its name lock.
    async fn delete_locked(&self, pod: &Pod, grace: Duration) {
        pod.deleting.store(true, Ordering::SeqCst);
        pod.wake.notify_waiters();
        self.stop_containers(pod, grace).await;
        let record = lock(&pod.record).clone();
        self.teardown(&record).await;
        lock(&self.pods).remove(&pod.spec.name);
    }

    /// SIGTERM to every launcher (forwarded to the container), SIGKILL after the grace period. Killing a
    /// launcher kills its container (PDEATHSIG), and with it the container's PID namespace.
    async fn stop_containers(&self, pod: &Pod, grace: Duration) {
        let (targets, container_pids): (Vec<(String, u32)>, Vec<u32>) = {
            let rec = lock(&pod.record);
            let launchers = rec.containers.iter().filter_map(|c| c.launcher_pid.map(|p| (c.name.clone(), p))).collect();
            let pids = rec.containers.iter().filter_map(|c| exec::container_pid(&c.state)).collect();
            (launchers, pids)
        };
        for (c, pid) in &targets {
            sandbox::signal_ours(*pid, LAUNCHER_ROLE, &pod.spec.name, Some(c), Signal::SIGTERM);
        }
        let mut tasks = std::mem::take(&mut *lock(&pod.tasks));
        let all = futures::future::join_all(tasks.iter_mut());
        if tokio::time::timeout(grace, all).await.is_err() {
            for (c, pid) in &targets {
                sandbox::signal_ours(*pid, LAUNCHER_ROLE, &pod.spec.name, Some(c), Signal::SIGKILL);
            }
            let all = futures::future::join_all(tasks.iter_mut());
            if tokio::time::timeout(Duration::from_secs(10), all).await.is_err() {
                tracing::error!(pod = %pod.spec.name, "container supervisors did not stop; aborting them");
                for t in &tasks {
                    t.abort();
                }
            }
        }
        // The containers die of their launcher's death (PDEATHSIG) a moment later; wait for that so a 204
        // means they are gone.
        for pid in container_pids {
            for _ in 0..400 {
                if !sandbox::is_running(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// What is left of a finished pod whose sandbox is gone: its launchers (with their containers) and its
    /// network (the lease goes back to the pool). Cgroups, record and logs stay until the pod is deleted.
    async fn stop_lost_sandbox(&self, spec: &PodSpec, launchers: &[(String, u32)]) {
        for (container, pid) in launchers {
            kill_and_wait(*pid, LAUNCHER_ROLE, &spec.name, Some(container)).await;
        }
        if !spec.host_network {
            if let Err(e) = self.net.detach_pod(&spec.name).await {
                tracing::error!(pod = %spec.name, "detach: {e}");
            }
        }
    }

    /// Undoes whatever exists of a pod: launchers, infra process, network attachment, cgroups, state files.
    /// Every step runs even when an earlier one failed; failures are logged.
    async fn teardown(&self, record: &PodRecord) {
        let name = &record.spec.name;
        for c in &record.containers {
            if let Some(pid) = c.launcher_pid {
                kill_and_wait(pid, LAUNCHER_ROLE, name, Some(&c.name)).await;
            }
        }
        if let Some(pid) = record.infra_pid {
            kill_and_wait(pid, INFRA_ROLE, name, None).await;
        }
        if !record.spec.host_network {
            if let Err(e) = self.net.detach_pod(name).await {
                tracing::error!(pod = %name, "detach: {e}");
            }
        }
        let mut rels: Vec<String> = record.spec.containers.iter().map(|c| container_cgroup(name, &c.name)).collect();
        rels.push(infra_cgroup(name));
        rels.push(pod_cgroup(name));
        for rel in rels {
            if let Err(e) = crate::cgroups::remove_when_empty(self.cgroups.as_ref(), &rel).await {
                tracing::error!(pod = %name, "remove cgroup: {e}");
            }
        }
        let _ = std::fs::remove_file(self.pod_file(name));
        let _ = std::fs::remove_dir_all(self.pod_dir(name));
    }
}

/// The container PID a launcher reports on its first stdout line; None for anything but a positive number
/// (a PID 0 would make every later check and signal aim at the wrong process).
fn parse_container_pid(line: &str) -> Option<u32> {
    line.trim().parse().ok().filter(|pid| *pid > 0)
}

/// Exit code of a launcher we spawned (128+signal when the launcher itself was killed).
async fn wait_child(mut child: tokio::process::Child) -> i32 {
    match child.wait().await {
        Ok(status) => status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Err(_) => 255,
    }
}

/// SIGKILLs the process `fd` names and waits, at most KILL_WAIT, until it has exited. Without a pidfd (a
/// kernel before 5.3) it signals `pid` and polls `gone` instead.
async fn kill_then_wait(pid: u32, fd: Option<sandbox::PidFd>, gone: impl Fn() -> bool) {
    let Some(fd) = fd else {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        let t0 = std::time::Instant::now();
        while !gone() && t0.elapsed() < KILL_WAIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        return;
    };
    fd.kill();
    match tokio::time::timeout(KILL_WAIT, fd.exited()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(pid, "waiting on the pidfd: {e}"),
        Err(_) => tracing::warn!(pid, "process did not exit within {KILL_WAIT:?} of SIGKILL"),
    }
}

/// SIGKILLs our unreaped child `pid`, waits for it to exit and reaps it.
async fn kill_own_child(pid: u32) {
    let fd = sandbox::PidFd::open(pid).ok().flatten();
    kill_then_wait(pid, fd, || sandbox::try_reap(pid)).await;
    sandbox::try_reap(pid);
}

/// SIGKILLs `pid` if it is ours and waits until it is gone. Infra processes are reaped here when they are
/// our children; launchers are reaped by their tokio `Child` (or by init, when adopted).
async fn kill_and_wait(pid: u32, role: &str, pod: &str, container: Option<&str>) {
    let fd = match sandbox::PidFd::open(pid) {
        Ok(None) => return,
        Ok(Some(fd)) => Some(fd),
        Err(_) => None,
    };
    // Checked after opening: from here on the pidfd names exactly the process that was checked. A zombie has
    // an empty cmdline, so "not ours" also covers "exited, not yet reaped".
    if sandbox::is_ours(pid, role, pod, container) {
        kill_then_wait(pid, fd, || !sandbox::is_ours(pid, role, pod, container)).await;
    }
    if role == INFRA_ROLE {
        sandbox::try_reap(pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_pid_line_must_be_a_positive_number() {
        assert_eq!(parse_container_pid("4242\n"), Some(4242));
        assert_eq!(parse_container_pid(" 7 "), Some(7));
        for garbage in ["", "\n", "0\n", "-3", "pid 12", "12abc", "99999999999"] {
            assert_eq!(parse_container_pid(garbage), None, "{garbage:?}");
        }
    }
}
