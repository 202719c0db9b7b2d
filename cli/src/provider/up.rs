//! `up`: plan -> lock -> images -> keys -> host network -> disks -> VMs -> SSH -> agent -> node spec -> pods.
//! Converges: a healthy lab is left alone, live VMs are reused, dead ones replaced. On failure everything is
//! torn down (unless --keep) and the error names the node, the stage and the serial log.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// SSHD_STARTED: what testbed's guest init prints on the serial console once sshd runs.
use crate::guest::agent_deploy::{self, AgentDeployError};
use crate::guest::keys;
use crate::guest::{Session, SshError};
use crate::image::{self, ImageArtifacts, ImageError, SSHD_STARTED};
use crate::plan::{ImageRef, NodePlan, Plan};
use crate::ui::Ui;

use super::accel::{self, AccelChoice};
use super::down::{self, Teardown};
use super::hostnet::{netem_args, HostNet, HostNetError};
use super::lab::Lab;
use super::labdir::{self, LabDir, LabDirError, LabState, NodeState};
use super::{procs, qemu};

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
        "lab `{lab}` is already up from a different topology (its plan differs); run `testbed down --lab {lab}` first"
    )]
    PlanChanged { lab: String },
    #[error("image {image}: {source}")]
    Image {
        image: String,
        #[source]
        source: ImageError,
    },
    #[error("SSH keys: {0}")]
    Keys(#[source] SshError),
    #[error("{0}")]
    AgentBinary(#[source] AgentDeployError),
    #[error("host network (netns {netns}): {source}")]
    Net {
        netns: String,
        #[source]
        source: HostNetError,
    },
    #[error("node {node}: {stage}: {message}{}", serial_hint(.serial_log, .serial_tail))]
    Node { node: String, stage: &'static str, message: String, serial_log: Option<PathBuf>, serial_tail: String },
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

impl UpError {
    pub fn is_bad_input(&self) -> bool {
        match self {
            UpError::PlanChanged { .. } => true,
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
    pub accelerator: accel::Accel,
    pub accelerator_reason: String,
    pub seconds: f64,
    pub nodes: Vec<UpNode>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct UpNode {
    pub name: String,
    pub pid: Option<u32>,
    pub ssh_port: u16,
    /// Reused a running VM instead of booting one.
    pub reused: bool,
    /// Seconds spent in each stage (disk, boot, ssh, agent, network), in order.
    pub stage_seconds: Vec<(String, f64)>,
}

/// Times the stages of one node's pipeline and names them on its progress line.
struct Stages<'a> {
    task: &'a crate::ui::Task,
    current: Option<(&'static str, Instant)>,
    done: Vec<(String, f64)>,
}

impl<'a> Stages<'a> {
    fn new(task: &'a crate::ui::Task) -> Self {
        Stages { task, current: None, done: Vec::new() }
    }

    fn enter(&mut self, stage: &'static str) {
        self.close();
        self.task.stage(stage);
        self.current = Some((stage, Instant::now()));
    }

    fn close(&mut self) {
        if let Some((name, t)) = self.current.take() {
            self.done.push((name.to_string(), (t.elapsed().as_secs_f64() * 10.0).round() / 10.0));
        }
    }

    fn finish(mut self) -> Vec<(String, f64)> {
        self.close();
        self.done
    }
}

/// Bridges, taps (master, MTU, up) and netem in the lab netns. Returns true when the host kernel cannot do
/// netem and the impairments must be applied inside the guests instead.
pub fn setup_network(plan: &Plan, net: &dyn HostNet) -> Result<bool, HostNetError> {
    net.create_netns(&plan.netns)?;
    for nw in &plan.networks {
        net.ensure_bridge(&plan.netns, &nw.bridge, nw.mtu)?;
    }
    let mut netem_in_guest = false;
    for node in &plan.nodes {
        for nic in &node.nics {
            let Some(nw) = plan.networks.iter().find(|n| n.name == nic.network) else { continue };
            net.ensure_tap(&plan.netns, &nic.tap, &nw.bridge, nic.mtu)?;
            if netem_in_guest {
                continue;
            }
            match net.set_impairment(&plan.netns, &nic.tap, &nw.impair) {
                Ok(()) => {}
                Err(HostNetError::NetemUnsupported) => netem_in_guest = true,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(netem_in_guest)
}

/// Everything the per-node pipelines share.
struct Ctx {
    ui: Ui,
    plan: Plan,
    dir: LabDir,
    net: Arc<dyn HostNet>,
    images: Vec<(ImageRef, ImageArtifacts)>,
    accel: AccelChoice,
    agent_binary: PathBuf,
    /// Byte size of the agent binary inside the agent disk (the rest is padding).
    agent_size: u64,
    client_pub: String,
    state: Mutex<LabState>,
    netem_in_guest: bool,
    deadline: Instant,
    /// Tracks the pipelines' blocking work so a rollback can wait for it (see `InFlight`).
    inflight: InFlight,
}

impl Ctx {
    fn save_state(&self, update: impl FnOnce(&mut LabState)) -> Result<(), LabDirError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        update(&mut st);
        self.dir.write_state(&st)
    }

    fn node_state(&self, node: &str) -> Option<NodeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).nodes.get(node).cloned()
    }

    fn artifacts(&self, r: &ImageRef) -> Option<&ImageArtifacts> {
        self.images.iter().find(|(i, _)| i == r).map(|(_, a)| a)
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn node_err(&self, node: &str, stage: &'static str, message: impl ToString) -> UpError {
        let serial = self.dir.serial_log(node);
        let (serial_log, serial_tail) = if matches!(stage, "boot" | "ssh" | "agent" | "network") && serial.exists() {
            (Some(serial.clone()), qemu::tail(&serial, 3000))
        } else {
            (None, String::new())
        };
        UpError::Node { node: node.to_string(), stage, message: message.to_string(), serial_log, serial_tail }
    }
}

fn image_label(r: &ImageRef) -> String {
    match r {
        ImageRef::Named(n) => n.clone(),
        ImageRef::Url { url, .. } => url.clone(),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, UpError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| UpError::Task(e.to_string()))
}

/// The blocking work of one `up` that makes lab resources (netns, disks, QEMU launches). A rollback must not
/// look at what exists while any of it still runs: a blocking task keeps going when the future awaiting it is
/// dropped (a failed sibling node, Ctrl-C), so it could launch a QEMU or re-create a node directory after
/// teardown. Each task holds a read guard for as long as it runs; `settle` takes the write side, which both
/// refuses new work and waits for the running work to end.
#[derive(Clone, Default)]
struct InFlight {
    gate: Arc<tokio::sync::RwLock<()>>,
    /// The write guard once settled, kept so nothing can start afterwards.
    settled: Arc<Mutex<Option<tokio::sync::OwnedRwLockWriteGuard<()>>>>,
}

impl InFlight {
    /// Runs `f` on the blocking pool, tracked; `Cancelled` without running it once `settle` has begun.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, UpError> {
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
    fn is_cancelled(&self) -> bool {
        self.gate.try_read().is_err()
    }

    /// Refuses new work and returns once every started task has finished.
    async fn settle(&self) {
        let guard = self.gate.clone().write_owned().await;
        *self.settled.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
    }
}

/// `up` of `plan`, with the real host network.
pub async fn up(ui: &Ui, plan: Plan, opts: &UpOptions, net: Arc<dyn HostNet>) -> Result<UpOutcome, UpError> {
    let started = Instant::now();
    let dir = LabDir::new(&labdir::state_root()?, &plan.lab);
    let _lock = dir.lock()?;
    if dir.plan_path().exists() {
        // A plan.json that cannot be read is a leftover of a broken up: converge over it.
        if let Ok(mut previous) = dir.read_plan() {
            // Only the resolved plan matters: a comment edited in the topology changes the hash, nothing else.
            previous.topology_hash.clone_from(&plan.topology_hash);
            // Declared tests only feed `run`: a changed `tests:` is recorded, not a reason to rebuild.
            previous.tests.clone_from(&plan.tests);
            if previous != plan {
                return Err(UpError::PlanChanged { lab: plan.lab.clone() });
            }
        }
    }
    let mut previous = dir.read_state().ok().flatten();
    let netns_present = net.netns_exists(&plan.netns).unwrap_or(false);
    if let (Some(state), false) = (previous.as_mut(), netns_present) {
        // The netns (and the taps the VMs were attached to) is gone: their underlay is dead for good, so the
        // VMs are replaced rather than reused.
        stop_recorded_vms(&dir, state);
    }
    if let Some(state) = &previous {
        if netns_present && lab_is_healthy(&dir, &plan, state).await {
            dir.write_plan(&plan)?;
            ui.info(format!(
                "lab `{}` is already up and healthy ({} nodes); nothing to do",
                plan.lab,
                plan.nodes.len()
            ));
            return Ok(UpOutcome {
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
            });
        }
    }

    let inflight = InFlight::default();
    let work = converge(ui, plan.clone(), dir.clone(), previous, opts, net.clone(), inflight.clone());
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
    // returns (or rolls back): the rollback below would miss it, and `--keep` should show a settled lab.
    if result.is_err() {
        inflight.settle().await;
    }
    match result {
        Ok(outcome) => Ok(UpOutcome { seconds: started.elapsed().as_secs_f64(), ..outcome }),
        Err(e) if opts.keep => {
            ui.info(format!("keeping the failed lab for inspection (--keep): {}", dir.root.display()));
            Err(e)
        }
        Err(e) => {
            ui.info(format!("`up` failed; removing what it made in lab `{}`", plan.lab));
            let dir2 = dir.clone();
            match blocking(move || down::teardown(&dir2, net.as_ref())).await {
                Ok(Ok(t)) => ui.info(rollback_summary(&t)),
                Ok(Err(te)) => ui.info(format!("rollback incomplete: {te}; run `testbed down --lab {}`", plan.lab)),
                Err(te) => ui.info(format!("rollback incomplete: {te}; run `testbed down --lab {}`", plan.lab)),
            }
            Err(e)
        }
    }
}

fn rollback_summary(t: &Teardown) -> String {
    format!(
        "rolled back: {} VM(s) stopped, netns {}, lab directory {}",
        t.stopped.len(),
        t.netns_deleted.as_deref().unwrap_or("(none)"),
        if t.dir_removed { "removed" } else { "(none)" }
    )
}

/// Stops the VMs a state records (only while they are still this lab's, see `down::is_node_vm`) and
/// forgets their PIDs.
fn stop_recorded_vms(dir: &LabDir, state: &mut LabState) {
    for (node, ns) in state.nodes.iter_mut() {
        if let (Some(pid), Some(start)) = (ns.pid, ns.pid_start_time) {
            if down::is_node_vm(dir, node, pid, start) {
                procs::terminate(pid, start, Duration::from_secs(3));
            }
        }
        ns.pid = None;
        ns.pid_start_time = None;
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

/// Every node's VM alive and its agent answering.
async fn lab_is_healthy(dir: &LabDir, plan: &Plan, state: &LabState) -> bool {
    let all_alive = plan.nodes.iter().all(|n| {
        state.nodes.get(&n.name).is_some_and(|s| match (s.pid, s.pid_start_time) {
            (Some(pid), Some(st)) => down::is_node_vm(dir, &n.name, pid, st) && s.stage == "ready",
            _ => false,
        })
    });
    if !all_alive {
        return false;
    }
    let Ok(lab) = Lab::open_dir(dir.clone()) else { return false };
    let checks = plan.nodes.iter().map(|n| {
        let lab = &lab;
        async move {
            match lab.connect_node(&n.name, Duration::from_secs(5)).await {
                Ok(c) => c.agent.health().await.is_ok(),
                Err(_) => false,
            }
        }
    });
    futures::future::join_all(checks).await.into_iter().all(|ok| ok)
}

async fn converge(
    ui: &Ui,
    plan: Plan,
    dir: LabDir,
    previous: Option<LabState>,
    opts: &UpOptions,
    net: Arc<dyn HostNet>,
    inflight: InFlight,
) -> Result<UpOutcome, UpError> {
    dir.write_plan(&plan)?;

    // Fail fast on a missing agent before any VM boots.
    let agent_binary = agent_deploy::locate_agent_binary().map_err(UpError::AgentBinary)?;
    let agent_size = agent_deploy::write_agent_disk(&agent_binary, &dir.agent_disk()).map_err(UpError::AgentBinary)?;

    let mut images: Vec<(ImageRef, ImageArtifacts)> = Vec::new();
    for node in &plan.nodes {
        if images.iter().any(|(r, _)| *r == node.image) {
            continue;
        }
        let art = image::ensure(ui, &node.image)
            .await
            .map_err(|source| UpError::Image { image: image_label(&node.image), source })?;
        images.push((node.image.clone(), art));
    }

    let cache =
        image::accel_cache_dir().map_err(|source| UpError::Image { image: "(cache directory)".into(), source })?;
    let first = images.first().map(|(_, a)| a.clone());
    let (qemu_version, accel) = blocking(move || {
        let version = qemu::version();
        let choice = match (&version, &first) {
            (Ok(v), Some(a)) => accel::choose(&cache, v, a.kernel.as_deref(), a.initrd.as_deref(), &a.cmdline),
            _ => AccelChoice { accel: accel::Accel::Tcg, reason: "no image to probe KVM with".into() },
        };
        (version, choice)
    })
    .await?;
    let qemu_version = qemu_version.map_err(|e| UpError::Task(e.to_string()))?;
    ui.info(format!("accelerator: {} ({})", accel.accel, accel.reason));

    // Keys: one client key per lab; one host key per node, generated on the host, pinned by the client.
    let client_key = keys::generate_client_key(&dir.root).map_err(UpError::Keys)?;
    let client_pub_path = client_key.with_file_name("id_ed25519.pub");
    let client_pub = std::fs::read_to_string(&client_pub_path)
        .map_err(|source| LabDirError::Io { path: client_pub_path.clone(), source })?
        .trim()
        .to_string();
    let mut nodes_state = std::collections::BTreeMap::new();
    let mut known = Vec::new();
    for node in &plan.nodes {
        let host_public = node_host_key(&dir, &node.name)?;
        known.push((node.ssh_port, host_public.clone()));
        let prev = previous.as_ref().and_then(|s| s.nodes.get(&node.name));
        let live = prev.filter(|p| match (p.pid, p.pid_start_time) {
            (Some(pid), Some(st)) => down::is_node_vm(&dir, &node.name, pid, st),
            _ => false,
        });
        let image_id = images.iter().find(|(r, _)| *r == node.image).map(|(_, a)| a.id.clone()).unwrap_or_default();
        nodes_state.insert(
            node.name.clone(),
            NodeState {
                pid: live.and_then(|p| p.pid),
                pid_start_time: live.and_then(|p| p.pid_start_time),
                ssh_port: node.ssh_port,
                accelerator: live.map_or(accel.accel, |p| p.accelerator),
                host_key_public: host_public,
                image_id,
                stage: if live.is_some() { "boot".into() } else { "disk".into() },
            },
        );
    }
    keys::write_known_hosts(&dir.known_hosts(), &known).map_err(UpError::Keys)?;
    let state = LabState {
        lab: plan.lab.clone(),
        accelerator: accel.accel,
        accelerator_reason: accel.reason.clone(),
        qemu_version,
        created_at: previous.as_ref().map_or_else(labdir::now_rfc3339, |p| p.created_at.clone()),
        nodes: nodes_state,
    };
    dir.write_state(&state)?;

    let plan2 = plan.clone();
    let net2 = net.clone();
    let netem_in_guest = inflight
        .blocking(move || setup_network(&plan2, net2.as_ref()))
        .await?
        .map_err(|source| UpError::Net { netns: plan.netns.clone(), source })?;
    if netem_in_guest {
        ui.info("the host kernel has no netem: link impairments are applied inside the guests (egress of each NIC)");
    }

    let ctx = Arc::new(Ctx {
        ui: ui.clone(),
        plan: plan.clone(),
        dir: dir.clone(),
        net,
        images,
        accel,
        agent_binary,
        agent_size,
        client_pub,
        state: Mutex::new(state),
        netem_in_guest,
        deadline: Instant::now() + opts.timeout,
        inflight,
    });
    let pipelines = plan.nodes.iter().map(|n| {
        let ctx = ctx.clone();
        let node = n.clone();
        async move {
            let task = ctx.ui.task(&node.name);
            let result = node_pipeline(&ctx, &node, &task).await;
            match &result {
                Ok(n) => task.finish(format!(
                    "ready: ssh 127.0.0.1:{} pid {}{} [{}]",
                    n.ssh_port,
                    n.pid.map_or_else(|| "?".into(), |p| p.to_string()),
                    if n.reused { " (reused)" } else { "" },
                    n.stage_seconds.iter().map(|(s, t)| format!("{s} {t:.1}s")).collect::<Vec<_>>().join(", ")
                )),
                Err(UpError::Node { stage, message, .. }) => task.fail(format!("{stage}: {message}")),
                Err(e) => task.fail(e.to_string()),
            }
            result
        }
    });
    let timeout = opts.timeout;
    let nodes =
        match tokio::time::timeout(timeout + Duration::from_secs(5), futures::future::try_join_all(pipelines)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(UpError::Node {
                    node: "(all)".into(),
                    stage: "ready",
                    message: format!("not ready within --timeout {} s", timeout.as_secs()),
                    serial_log: None,
                    serial_tail: String::new(),
                })
            }
        };
    let st = ctx.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(UpOutcome {
        lab: plan.lab.clone(),
        dir: dir.root.clone(),
        already_up: false,
        accelerator: st.accelerator,
        accelerator_reason: st.accelerator_reason.clone(),
        // Filled in by `up`, which started the clock.
        seconds: 0.0,
        nodes,
    })
}

/// How long to wait for that line before trying SSH anyway (an image whose init says something else).
const SSHD_MARKER_WAIT: Duration = Duration::from_secs(90);

/// Waits until the guest says sshd runs, and fails at once if QEMU dies meanwhile. Connecting earlier costs
/// seconds: slirp accepts the host side immediately and then retries its SYN to the not-yet-networked guest
/// with exponential backoff.
async fn wait_for_sshd(ctx: &Ctx, node: &NodePlan) -> Result<(), UpError> {
    let serial = ctx.dir.serial_log(&node.name);
    let until = Instant::now() + SSHD_MARKER_WAIT.min(ctx.remaining());
    let recorded = ctx.node_state(&node.name).and_then(|s| s.pid.zip(s.pid_start_time));
    while Instant::now() < until {
        if std::fs::read(&serial).is_ok_and(|b| b.windows(SSHD_STARTED.len()).any(|w| w == SSHD_STARTED.as_bytes())) {
            return Ok(());
        }
        if let Some((pid, start)) = recorded {
            if !procs::is_same_process(pid, start) {
                let qemu_log = qemu::tail(&ctx.dir.qemu_log(&node.name), 1000);
                return Err(ctx.node_err(
                    &node.name,
                    "boot",
                    format!("QEMU (pid {pid}) exited while the guest booted {qemu_log}"),
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The node's host key pair, generated once and kept in the node directory (0600) so re-`up` reuses it.
fn node_host_key(dir: &LabDir, node: &str) -> Result<String, UpError> {
    let private = dir.host_key(node);
    let public = private.with_file_name("ssh_host_ed25519_key.pub");
    if let (Ok(_), Ok(p)) = (std::fs::metadata(&private), std::fs::read_to_string(&public)) {
        return Ok(p.trim().to_string());
    }
    let keys = keys::generate_host_key().map_err(UpError::Keys)?;
    let node_dir = dir.node_dir(node);
    std::fs::create_dir_all(&node_dir).map_err(|source| LabDirError::Io { path: node_dir.clone(), source })?;
    write_private(&private, keys.host_private_openssh.as_bytes())?;
    std::fs::write(&public, format!("{}\n", keys.host_public_openssh.trim()))
        .map_err(|source| LabDirError::Io { path: public.clone(), source })?;
    Ok(keys.host_public_openssh.trim().to_string())
}

fn write_private(path: &Path, body: &[u8]) -> Result<(), LabDirError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| LabDirError::Io { path: path.to_path_buf(), source })?;
    f.write_all(body).map_err(|source| LabDirError::Io { path: path.to_path_buf(), source })
}

async fn node_pipeline(ctx: &Arc<Ctx>, node: &NodePlan, task: &crate::ui::Task) -> Result<UpNode, UpError> {
    let name = node.name.clone();
    let ns = ctx.node_state(&name).ok_or_else(|| ctx.node_err(&name, "disk", "node missing from the state"))?;
    let reused = ns.pid.is_some();
    let mut pid = ns.pid;
    let mut stages = Stages::new(task);
    if !reused {
        stages.enter("disk");
        let art = ctx.artifacts(&node.image).cloned().ok_or_else(|| ctx.node_err(&name, "disk", "no image"))?;
        let c = ctx.clone();
        let n = node.clone();
        let art2 = art.clone();
        ctx.inflight.blocking(move || prepare_disks(&c, &n, &art2)).await??;
        ctx.save_state(|s| {
            if let Some(x) = s.nodes.get_mut(&name) {
                x.stage = "boot".into();
            }
        })?;

        stages.enter("boot");
        let c = ctx.clone();
        let n = node.clone();
        // launch_node records the PID itself: this future may be dropped while the launch runs.
        let new_pid = ctx.inflight.blocking(move || launch_node(&c, &n, &art)).await??;
        pid = Some(new_pid);
    }

    stages.enter("ssh");
    if !reused && ctx.artifacts(&node.image).is_some_and(|a| a.kernel.is_some()) {
        wait_for_sshd(ctx, node).await?;
    }
    let session = Session::connect(node.ssh_port, &ctx.dir.client_key(), &ns.host_key_public, ctx.remaining())
        .await
        .map_err(|e| ctx.node_err(&name, "ssh", e))?;

    stages.enter("agent");
    // A reused VM booted with the agent disk of an earlier `up`, which may hold another build.
    let from_disk = (!reused).then_some(ctx.agent_size);
    let agent = agent_deploy::deploy(&session, &name, &ctx.agent_binary, from_disk)
        .await
        .map_err(|e| ctx.node_err(&name, "agent", e))?;

    stages.enter("network");
    let spec = ctx.plan.node_spec(node, ctx.plan.cluster.backend);
    agent.apply_node(&spec).await.map_err(|e| ctx.node_err(&name, "network", e))?;
    if ctx.netem_in_guest {
        for nic in &node.nics {
            let Some(nw) = ctx.plan.networks.iter().find(|n| n.name == nic.network) else { continue };
            if nw.impair.is_none() {
                continue;
            }
            let cmd =
                format!("tc qdisc replace dev {} root netem {}", nic.guest_interface, netem_args(&nw.impair).join(" "));
            session
                .exec_checked("netem in the guest", &cmd, None)
                .await
                .map_err(|e| ctx.node_err(&name, "network", e))?;
        }
    }
    for pod in ctx.plan.pods.iter().filter(|p| p.node == name) {
        agent.create_pod(&pod.spec).await.map_err(|e| ctx.node_err(&name, "pods", e))?;
    }
    ctx.save_state(|s| {
        if let Some(x) = s.nodes.get_mut(&name) {
            x.stage = "ready".into();
        }
    })?;
    Ok(UpNode { name: name.clone(), pid, ssh_port: node.ssh_port, reused, stage_seconds: stages.finish() })
}

/// Seed (keys, hostname, NICs) and a fresh overlay on the image's base disk.
fn prepare_disks(ctx: &Ctx, node: &NodePlan, art: &ImageArtifacts) -> Result<(), UpError> {
    let name = &node.name;
    // Queued before a sibling failed: the rollback is about to remove the lab directory.
    if ctx.inflight.is_cancelled() {
        return Err(UpError::Cancelled);
    }
    let node_dir = ctx.dir.node_dir(name);
    std::fs::create_dir_all(&node_dir)
        .map_err(|e| ctx.node_err(name, "disk", format!("{}: {e}", node_dir.display())))?;
    let private = std::fs::read_to_string(ctx.dir.host_key(name))
        .map_err(|e| ctx.node_err(name, "disk", format!("host key: {e}")))?;
    let public = ctx.node_state(name).map(|s| s.host_key_public).unwrap_or_default();
    let seed = image::seed::SeedConfig {
        hostname: name.clone(),
        host_key_ed25519_private: private,
        host_key_ed25519_public: public,
        authorized_keys: vec![ctx.client_pub.clone()],
        nics: node
            .nics
            .iter()
            .map(|n| image::seed::SeedNic {
                name: n.guest_interface.clone(),
                mac: n.mac.clone(),
                address: n.ip,
                prefix_len: n.prefix_len,
                mtu: n.mtu,
            })
            .collect(),
    };
    image::seed::write_seed(&ctx.dir.seed(name), &seed).map_err(|e| ctx.node_err(name, "disk", e))?;
    qemu::create_overlay(&art.disk, &ctx.dir.overlay(name)).map_err(|e| ctx.node_err(name, "disk", e))?;
    Ok(())
}

/// Opens the node's taps, starts its QEMU and records its PID and start time in state.json (here, on the
/// blocking thread, so that a rollback finds the VM even when the caller has stopped waiting); returns the PID.
fn launch_node(ctx: &Ctx, node: &NodePlan, art: &ImageArtifacts) -> Result<u32, UpError> {
    let name = &node.name;
    if ctx.inflight.is_cancelled() {
        return Err(UpError::Cancelled);
    }
    // QEMU would fail later with a vaguer message; name the node and the port now.
    TcpListener::bind(("127.0.0.1", node.ssh_port)).map_err(|e| {
        ctx.node_err(name, "boot", format!("SSH port 127.0.0.1:{} is not free ({e}); stop what uses it", node.ssh_port))
    })?;
    let taps: Vec<OwnedFd> = node
        .nics
        .iter()
        .map(|nic| ctx.net.open_tap(&ctx.plan.netns, &nic.tap).map_err(|e| ctx.node_err(name, "boot", e)))
        .collect::<Result<_, _>>()?;
    let mut cmdline = art.cmdline.clone();
    for a in &node.kernel_args {
        cmdline.push(' ');
        cmdline.push_str(a);
    }
    let cfg = qemu::VmConfig {
        node: name.clone(),
        vm_name: format!("tb-{}-{}", ctx.plan.lab, name),
        accel: ctx.accel.accel,
        memory_mib: node.memory_mib,
        cpus: node.cpus,
        boot: qemu::Boot { kernel: art.kernel.clone(), initrd: art.initrd.clone(), cmdline },
        overlay: ctx.dir.overlay(name),
        seed: ctx.dir.seed(name),
        serial_log: ctx.dir.serial_log(name),
        pidfile: ctx.dir.pidfile(name),
        qmp_socket: ctx.dir.qmp_socket(name),
        ssh_port: node.ssh_port,
        nics: node
            .nics
            .iter()
            .zip(&taps)
            .map(|(nic, fd)| qemu::VmNic { mac: nic.mac.clone(), fd: fd.as_raw_fd() })
            .collect(),
        agent_disk: Some(ctx.dir.agent_disk()),
    };
    let pid = qemu::launch(&cfg, &ctx.dir.qemu_log(name)).map_err(|e| ctx.node_err(name, "boot", e))?;
    // Our copies of the tap fds close here; QEMU holds its own.
    drop(taps);
    let start = procs::start_time(pid)
        .ok_or_else(|| ctx.node_err(name, "boot", format!("QEMU (pid {pid}) exited right after starting")))?;
    ctx.save_state(|s| {
        if let Some(x) = s.nodes.get_mut(name) {
            x.pid = Some(pid);
            x.pid_start_time = Some(start);
            x.accelerator = ctx.accel.accel;
            x.stage = "ssh".into();
        }
    })?;
    Ok(pid)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::hostnet::fake::FakeHostNet;
    use super::*;
    use crate::plan::{ClusterPlan, Impairment, NetworkPlan, NicPlan};

    pub fn test_plan() -> Plan {
        let nic = |node: usize| NicPlan {
            network: "underlay".into(),
            guest_interface: "eth1".into(),
            tap: format!("tb-t-n{node}"),
            mac: format!("52:54:00:00:00:0{node}"),
            ip: format!("192.168.50.{}", 10 + node).parse().unwrap(),
            prefix_len: 24,
            mtu: 1500,
        };
        let node = |i: usize| NodePlan {
            name: format!("node{i}"),
            index: i - 1,
            cpus: 1,
            memory_mib: 512,
            image: ImageRef::Named("debian-12".into()),
            kernel_args: vec![],
            ssh_port: 22000 + i as u16,
            nics: vec![nic(i)],
            pod_subnet: format!("10.244.{i}.0/24").parse().unwrap(),
            vtep_mac: format!("02:00:00:00:00:0{i}"),
        };
        Plan {
            version: 1,
            lab: "t".into(),
            topology_hash: "x".into(),
            netns: "tb-t".into(),
            networks: vec![NetworkPlan {
                name: "underlay".into(),
                bridge: "tb-t-br0".into(),
                cidr: "192.168.50.0/24".parse().unwrap(),
                mtu: 1500,
                impair: Impairment { delay_ms: 5.0, ..Default::default() },
            }],
            nodes: vec![node(1), node(2)],
            cluster: ClusterPlan {
                pod_cidr: "10.244.0.0/16".parse().unwrap(),
                node_subnet_prefix: 24,
                backend: testbed_api::Backend::Vxlan,
            },
            pods: vec![],
            tests: vec![],
        }
    }

    #[test]
    fn node_host_key_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "k");
        let first = node_host_key(&dir, "node1").unwrap();
        assert!(first.starts_with("ssh-ed25519 "));
        let mode = std::fs::metadata(dir.host_key("node1")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(node_host_key(&dir, "node1").unwrap(), first);
        assert_ne!(node_host_key(&dir, "node2").unwrap(), first);
    }

    #[test]
    fn stopping_recorded_vms_forgets_pids_and_spares_strangers() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "x");
        // Looks like node1's QEMU: `-pidfile <node1 dir>/qemu.pid` in its argv (a shell that stays, with
        // that argv, while it waits for sleep).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; exit 0", "qemu-system-x86_64", "-pidfile"])
            .arg(dir.pidfile("node1"))
            .spawn()
            .unwrap();
        let pid = child.id();
        // A live process with the right PID and start time but not a QEMU of this lab (a reboot recycled both).
        let mut stranger = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let stranger_start = procs::start_time(stranger.id()).unwrap();
        let mut start = None;
        for _ in 0..200 {
            // Between fork and exec the child still has our command line.
            if procs::argv(pid).is_some_and(|a| a.iter().any(|x| x.contains("qemu-system"))) {
                start = procs::start_time(pid);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let start = start.unwrap();
        let node = |pid, start| NodeState {
            pid: Some(pid),
            pid_start_time: Some(start),
            ssh_port: 1,
            accelerator: accel::Accel::Tcg,
            host_key_public: String::new(),
            image_id: String::new(),
            stage: "ready".into(),
        };
        let mut state = LabState {
            lab: "x".into(),
            accelerator: accel::Accel::Tcg,
            accelerator_reason: String::new(),
            qemu_version: String::new(),
            created_at: String::new(),
            // node2 records our own PID with a wrong start time: a recycled PID that must not be signalled.
            nodes: [
                ("node1".to_string(), node(pid, start)),
                ("node2".to_string(), node(std::process::id(), 1)),
                ("node3".to_string(), node(stranger.id(), stranger_start)),
            ]
            .into_iter()
            .collect(),
        };
        stop_recorded_vms(&dir, &mut state);
        assert!(state.nodes.values().all(|n| n.pid.is_none() && n.pid_start_time.is_none()));
        assert!(!child.wait().unwrap().success());
        assert!(stranger.try_wait().unwrap().is_none(), "a stranger was signalled");
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    }

    #[test]
    fn network_is_built_netns_then_bridges_then_taps_with_netem() {
        let net = FakeHostNet::default();
        let guest = setup_network(&test_plan(), &net).unwrap();
        assert!(!guest);
        let ops = net.ops.lock().unwrap().clone();
        assert_eq!(
            ops,
            [
                "netns add tb-t",
                "bridge tb-t tb-t-br0 1500",
                "tap tb-t tb-t-n1 tb-t-br0 1500",
                "netem tb-t tb-t-n1 delay 5ms",
                "tap tb-t tb-t-n2 tb-t-br0 1500",
                "netem tb-t tb-t-n2 delay 5ms",
            ]
        );
    }

    /// The bug this guards against: `up` is interrupted while the netns is being built on a blocking thread;
    /// the rollback must wait for that thread, or it runs first and the netns is created afterwards and leaks.
    #[tokio::test]
    async fn rollback_waits_for_blocking_work_of_an_interrupted_up() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "t");
        dir.create().unwrap();
        dir.write_plan(&test_plan()).unwrap();
        let net = Arc::new(FakeHostNet::default());
        let inflight = InFlight::default();
        let (n2, i2) = (net.clone(), inflight.clone());
        let slow_setup = async move {
            i2.blocking(move || {
                std::thread::sleep(Duration::from_millis(300));
                setup_network(&test_plan(), n2.as_ref())
            })
            .await
        };
        // Ctrl-C arrives while the setup runs: the awaiting future is dropped, the thread is not.
        assert!(tokio::time::timeout(Duration::from_millis(20), slow_setup).await.is_err());
        inflight.settle().await;
        assert!(net.netns_exists("tb-t").unwrap(), "settle returned before the setup finished");
        // Nothing new starts after settle.
        let late = inflight.blocking(|| panic!("ran after settle")).await;
        assert!(matches!(late, Err(UpError::Cancelled)));
        assert!(inflight.is_cancelled());
        let t = down::teardown(&dir, net.as_ref()).unwrap();
        assert_eq!(t.netns_deleted.as_deref(), Some("tb-t"));
        assert!(net.namespaces.lock().unwrap().is_empty() && !dir.exists());
    }

    #[tokio::test]
    async fn settle_without_work_returns_at_once() {
        let inflight = InFlight::default();
        assert!(!inflight.is_cancelled());
        assert_eq!(inflight.blocking(|| 7).await.unwrap(), 7);
        tokio::time::timeout(Duration::from_secs(1), inflight.settle()).await.unwrap();
    }

    #[test]
    fn failed_network_setup_is_fully_rolled_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "t");
        dir.create().unwrap();
        let net = FakeHostNet { fail_on: Some("tap tb-t tb-t-n2".into()), ..Default::default() };
        assert!(setup_network(&test_plan(), &net).is_err());
        dir.write_plan(&test_plan()).unwrap();
        let t = down::teardown(&dir, &net).unwrap();
        assert_eq!(t.netns_deleted.as_deref(), Some("tb-t"));
        assert!(!dir.exists());
        assert!(net.namespaces.lock().unwrap().is_empty());
        assert_eq!(net.ops.lock().unwrap().last().map(String::as_str), Some("netns del tb-t"));
    }
}
