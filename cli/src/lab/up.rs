//! `up`, whatever the provider: lock the lab, keep the running lab's allocation, refuse a plan that changes more
//! than its set of nodes, leave a healthy lab alone, add and remove nodes of a healthy lab in place
//! (`resize.rs`), else converge every node (`converge.rs`); on failure or interruption (Ctrl-C, SIGTERM,
//! SIGHUP) wait for its blocking work and tear down everything it made (unless --keep): the whole lab, or only
//! the nodes a resize was adding. Errors name the node, the stage and the serial log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::guest::agent_deploy::AgentDeployError;
use crate::guest::SshError;
use crate::image::ImageError;
use crate::plan::{NodeChange, Plan};
use crate::ui::Ui;

use super::converge::{converge, Start};
use super::dir::{self as labdir, LabDir, LabDirError};
use super::handle::Lab;
use super::provider::Provider;
use super::provider::Targets;
use super::resize::{resize, roll_back_added, Resize};
use super::state::{Accel, LabState, NodeState, Stage};
use super::teardown::teardown;

#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Leave whatever was made in place when `up` fails (for debugging).
    pub keep: bool,
    /// Budget for booting every node to a ready agent (image builds not included).
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    LabDir(#[from] LabDirError),
    #[error(
        "lab `{lab}` is already up from a different topology: {reason}. `up` can add nodes to a running lab and \
         remove nodes from it, nothing else; run `testbed down --lab {lab}` first"
    )]
    PlanChanged { lab: String, reason: crate::plan::RefusedChange },
    #[error(
        "lab `{lab}` cannot add or remove nodes now: {} not running or not answering; run `up` with the \
         topology it was made from to repair it first, or `testbed down --lab {lab}`",
        .nodes.join(", ")
    )]
    NotHealthy { lab: String, nodes: Vec<String> },
    #[error(transparent)]
    Remove(#[from] super::resize::RemoveError),
    // Each source below follows in the error chain (`CliError` prints it), so no message repeats it.
    #[error("image {image}")]
    Image {
        image: String,
        #[source]
        source: ImageError,
    },
    #[error("SSH keys")]
    Keys(#[source] SshError),
    #[error(transparent)]
    AgentBinary(AgentDeployError),
    #[error("host network (netns {netns})")]
    Net {
        netns: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("node {node}: {stage}: {message}{}", serial_hint(.serial_log, .serial_tail))]
    Node { node: String, stage: Stage, message: String, serial_log: Option<PathBuf>, serial_tail: String },
    #[error("control plane: {0}")]
    ControlPlane(Box<super::control_plane::ControlPlaneError>),
    #[error(transparent)]
    Forwarder(#[from] super::forwarder::ForwarderError),
    #[error("applying the topology's namespaces, services, network policies and deployments: {0}")]
    Workloads(#[source] crate::cluster::ClusterError),
    #[error(transparent)]
    Provider(#[from] super::provider::ProviderError),
    #[error("the {provider} provider cannot make this lab: {reason}")]
    Unsupported { provider: super::state::ProviderKind, reason: String },
    #[error("interrupted")]
    Interrupted,
    #[error("stopped: another step of this `up` failed")]
    Cancelled,
    #[error("internal task failed: {0}")]
    Task(String),
}

fn serial_hint(log: &Option<PathBuf>, tail: &str) -> String {
    match log {
        None => String::new(),
        Some(p) if tail.is_empty() => format!("\n  serial log: {} (empty)", p.display()),
        Some(p) => format!("\n  serial log: {}; last lines:\n{}", p.display(), indent(tail)),
    }
}

fn indent(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(15);
    lines[start..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

impl From<super::control_plane::ControlPlaneError> for UpError {
    fn from(e: super::control_plane::ControlPlaneError) -> Self {
        UpError::ControlPlane(Box::new(e))
    }
}

impl UpError {
    /// `node` failed in `stage`; once its guest had started, the error carries the end of its serial log.
    pub fn node(dir: &LabDir, node: &str, stage: Stage, message: impl ToString) -> UpError {
        let serial = dir.serial_log(node);
        let (serial_log, serial_tail) = if stage.guest_started() && serial.exists() {
            (Some(serial.clone()), labdir::log_tail(&serial, 3000))
        } else {
            (None, String::new())
        };
        UpError::Node { node: node.to_string(), stage, message: message.to_string(), serial_log, serial_tail }
    }

    pub fn is_bad_input(&self) -> bool {
        match self {
            UpError::PlanChanged { .. } | UpError::Unsupported { .. } => true,
            UpError::Image { source, .. } => source.is_bad_input(),
            _ => false,
        }
    }
}

impl From<UpError> for crate::exit::CliError {
    fn from(e: UpError) -> Self {
        if e.is_bad_input() {
            crate::exit::CliError::bad_input(e)
        } else {
            crate::exit::CliError::infra(e)
        }
    }
}

/// What `up` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpOutcome {
    pub lab: String,
    pub dir: PathBuf,
    /// True when the lab was already up and healthy: nothing was done.
    pub already_up: bool,
    pub accelerator: Accel,
    pub accelerator_reason: String,
    pub seconds: f64,
    pub nodes: Vec<UpNode>,
    /// `<lab dir>/kubeconfig`: kubectl reaches the lab's API server with it.
    pub kubeconfig: Option<PathBuf>,
    /// The forwarder's port on the host's 127.0.0.1 (the kubeconfig's server).
    pub api_port: Option<u16>,
    /// Seconds from every node ready to the API answering and every agent joined (0 when already up).
    pub control_plane_wait_seconds: f64,
    /// The nodes this `up` added to a running lab (`nodes` shows them) and removed from it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct UpNode {
    pub name: String,
    pub pid: Option<u32>,
    pub ssh_port: u16,
    /// Reused a running VM instead of booting one.
    pub reused: bool,
    /// Seconds spent in each stage (disk, boot, ssh, agent, network), in order.
    pub stage_seconds: Vec<(Stage, f64)>,
}

/// Runs `f` on the blocking pool (untracked: for work that makes nothing a rollback must wait for).
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, UpError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| UpError::Task(e.to_string()))
}

/// The blocking work of one `up` that makes lab resources (netns, disks, QEMU launches). A rollback must not
/// look at what exists while any of it still runs: a blocking task keeps going when the future awaiting it is
/// dropped (a failed sibling node, Ctrl-C), so it could launch a QEMU or re-create a node directory after
/// teardown. Each task holds a read guard for as long as it runs; `settle` takes the write side, which both
/// refuses new work and waits for the running work to end.
#[derive(Clone, Default)]
pub struct InFlight {
    gate: Arc<tokio::sync::RwLock<()>>,
    /// The write guard once settled, kept so nothing can start afterwards.
    settled: Arc<Mutex<Option<tokio::sync::OwnedRwLockWriteGuard<()>>>>,
}

impl InFlight {
    /// Runs `f` on the blocking pool, tracked; `Cancelled` without running it once `settle` has begun.
    /// Runs `f` on the blocking pool (untracked: for work that makes nothing a rollback must wait for).
    pub async fn blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, UpError> {
        let guard = self.gate.clone().try_read_owned().map_err(|_| UpError::Cancelled)?;
        tokio::task::spawn_blocking(move || {
            let out = f();
            drop(guard);
            out
        })
        .await
        .map_err(|e| UpError::Task(e.to_string()))
    }

    /// True once `settle` has begun: blocking work checks it before making anything new.
    pub fn is_cancelled(&self) -> bool {
        self.gate.try_read().is_err()
    }

    /// Refuses new work and returns once every started task has finished.
    pub async fn settle(&self) {
        let guard = self.gate.clone().write_owned().await;
        *self.settled.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
    }
}

/// `up` of `plan` with `provider` (see the module doc).
pub async fn up(ui: &Ui, plan: Plan, opts: &UpOptions, provider: Arc<dyn Provider>) -> Result<UpOutcome, UpError> {
    let started = Instant::now();
    let dir = LabDir::new(&labdir::state_root()?, &plan.lab);
    let _lock = dir.lock()?;
    // A plan.json that cannot be read is a leftover of a broken up: converge over it.
    let recorded = dir.read_plan().ok();
    let plan = match &recorded {
        Some(r) => crate::plan::keep_allocation(plan, r),
        None => plan,
    };
    let change = match &recorded {
        Some(r) => crate::plan::node_change(r, &plan)
            .map_err(|reason| UpError::PlanChanged { lab: plan.lab.clone(), reason })?,
        None => NodeChange::default(),
    };
    let mut previous = dir.read_state().ok().flatten();
    let host_resources_present = provider.host_resources_exist(&plan);
    if let (Some(state), false) = (previous.as_mut(), host_resources_present) {
        // What the machines were attached to (QEMU: the netns and its taps) is gone: their underlay is dead for
        // good, so they are replaced rather than reused. A machine that survives the stop is not reused either.
        let _ = provider.stop_machines(&dir);
        state.nodes.values_mut().for_each(NodeState::forget_process);
    }
    if let (Some(recorded), false) = (recorded, change.is_empty()) {
        // Only the nodes that stay must be up: a removed node may be the reason for the change.
        let staying: Vec<&str> =
            recorded.nodes.iter().map(|n| n.name.as_str()).filter(|n| !change.removed.iter().any(|r| r == n)).collect();
        let unhealthy = match (&previous, host_resources_present) {
            (Some(state), true) => unhealthy_nodes(&dir, &staying, state, provider.as_ref()).await,
            _ => staying.iter().map(|n| n.to_string()).collect(),
        };
        let Some(state) = previous.filter(|_| unhealthy.is_empty()) else {
            return Err(UpError::NotHealthy { lab: plan.lab.clone(), nodes: unhealthy });
        };
        let (added, removed) = (change.added.clone(), change.removed.clone());
        let inflight = InFlight::default();
        let resize_to = Resize { plan: plan.clone(), recorded, change, state };
        let work = resize(ui, resize_to, dir.clone(), opts, provider.clone(), inflight.clone());
        return match until_signalled(work, &inflight).await {
            Ok(outcome) => Ok(UpOutcome { seconds: started.elapsed().as_secs_f64(), added, removed, ..outcome }),
            Err(e) if opts.keep => {
                ui.info(format!("keeping the failed nodes for inspection (--keep): {}", dir.root.display()));
                Err(e)
            }
            Err(e) => {
                roll_back_added(ui, &dir, &plan, &added, provider).await;
                Err(e)
            }
        };
    }
    if let Some(state) = &previous {
        let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
        if host_resources_present && unhealthy_nodes(&dir, &names, state, provider.as_ref()).await.is_empty() {
            dir.write_plan(&plan)?;
            // The nodes are fine; the host's way to the API may not be (a forwarder killed, a host reboot).
            let (kubeconfig, port) = reach_api(&dir, &plan, Instant::now() + opts.timeout).await?;
            super::workloads::apply_all(ui, &plan, &kubeconfig).await?;
            ui.info(format!(
                "lab `{}` is already up and healthy ({} nodes); nothing to do",
                plan.lab,
                plan.nodes.len()
            ));
            let mut outcome = already_up(&dir, &plan, state, started);
            (outcome.kubeconfig, outcome.api_port) = (Some(kubeconfig), Some(port));
            return Ok(outcome);
        }
    }

    let inflight = InFlight::default();
    let work = converge(
        ui,
        plan.clone(),
        dir.clone(),
        Start { previous, targets: Targets::All },
        opts,
        provider.as_ref(),
        inflight.clone(),
    );
    match until_signalled(work, &inflight).await {
        Ok(outcome) => Ok(UpOutcome { seconds: started.elapsed().as_secs_f64(), ..outcome }),
        Err(e) if opts.keep => {
            ui.info(format!("keeping the failed lab for inspection (--keep): {}", dir.root.display()));
            Err(e)
        }
        Err(e) => {
            roll_back(ui, &dir, provider).await;
            Err(e)
        }
    }
}

/// `work` until it ends, or an interruption (Ctrl-C, SIGTERM, SIGHUP) ends it; once it failed, none of its
/// blocking work still runs.
async fn until_signalled(
    work: impl std::future::Future<Output = Result<UpOutcome, UpError>>,
    inflight: &InFlight,
) -> Result<UpOutcome, UpError> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    // A dropped SSH session sends SIGHUP: roll back as for Ctrl-C instead of dying with VMs left running.
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let result = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(UpError::Interrupted),
        _ = signalled(sigterm.as_mut()) => Err(UpError::Interrupted),
        _ = signalled(sighup.as_mut()) => Err(UpError::Interrupted),
    };
    // Whatever happened, no disk preparation or QEMU launch of this run may still be under way once `up`
    // returns (or rolls back): the rollback would miss it, and `--keep` should show a settled lab.
    if result.is_err() {
        inflight.settle().await;
    }
    result
}

/// The outcome of an `up` that found the lab healthy and did nothing.
pub(super) fn already_up(dir: &LabDir, plan: &Plan, state: &LabState, started: Instant) -> UpOutcome {
    UpOutcome {
        lab: plan.lab.clone(),
        dir: dir.root.clone(),
        already_up: true,
        accelerator: state.accelerator,
        accelerator_reason: state.accelerator_reason.clone(),
        seconds: started.elapsed().as_secs_f64(),
        nodes: plan
            .nodes
            .iter()
            .map(|n| UpNode {
                name: n.name.clone(),
                pid: state.nodes.get(&n.name).and_then(|s| s.pid),
                ssh_port: n.ssh_port,
                reused: true,
                stage_seconds: Vec::new(),
            })
            .collect(),
        kubeconfig: None,
        api_port: None,
        control_plane_wait_seconds: 0.0,
        added: Vec::new(),
        removed: Vec::new(),
    }
}

/// The forwarder of a running lab (started again when it is gone), the API answering through it, and the
/// kubeconfig naming its port.
pub(super) async fn reach_api(dir: &LabDir, plan: &Plan, deadline: Instant) -> Result<(PathBuf, u16), UpError> {
    let credentials = super::control_plane::credentials(dir, plan)?;
    let fwd = super::forwarder::ensure(dir).await?;
    super::control_plane::wait_ready(fwd.port, &credentials, deadline).await?;
    Ok((super::control_plane::write_kubeconfig(dir, fwd.port, &credentials)?, fwd.port))
}

/// Removes what the failed `up` made; a rollback that fails says how to finish it.
async fn roll_back(ui: &Ui, dir: &LabDir, provider: Arc<dyn Provider>) {
    ui.info(format!("`up` failed; removing what it made in lab `{}`", dir.name));
    let d = dir.clone();
    match blocking(move || teardown(&d, provider.as_ref())).await {
        Ok(Ok(t)) => ui.info(t.rollback_summary()),
        Ok(Err(e)) => ui.info(format!("rollback incomplete: {e}; run `testbed down --lab {}`", dir.name)),
        Err(e) => ui.info(format!("rollback incomplete: {e}; run `testbed down --lab {}`", dir.name)),
    }
}

/// Resolves when `signal` arrives (never when it could not be installed).
async fn signalled(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The nodes of `names` whose VM is not alive or whose agent does not answer (all of them when the lab cannot
/// be opened).
async fn unhealthy_nodes(dir: &LabDir, names: &[&str], state: &LabState, provider: &dyn Provider) -> Vec<String> {
    let dead: Vec<String> = names
        .iter()
        .filter(|n| !state.nodes.get(**n).is_some_and(|s| s.stage == Stage::Ready && provider.is_running(dir, n, s)))
        .map(|n| n.to_string())
        .collect();
    if !dead.is_empty() {
        return dead;
    }
    let Ok(lab) = Lab::open_dir(dir.clone()) else { return names.iter().map(|n| n.to_string()).collect() };
    let checks = names.iter().map(|n| {
        let lab = &lab;
        async move {
            match lab.connect_node(n, Duration::from_secs(5)).await {
                Ok(c) if c.agent.health().await.is_ok() => None,
                _ => Some(n.to_string()),
            }
        }
    });
    futures::future::join_all(checks).await.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settle_without_work_returns_at_once() {
        let inflight = InFlight::default();
        assert!(!inflight.is_cancelled());
        assert_eq!(inflight.blocking(|| 7).await.unwrap(), 7);
        tokio::time::timeout(Duration::from_secs(1), inflight.settle()).await.unwrap();
    }
}
