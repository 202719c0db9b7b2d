//! The QEMU provider's `up`: images, accelerator, keys and the initial state, the lab's host network, then
//! every node's pipeline (`node.rs`) concurrently. The lab layer around it (`crate::lab::up`) holds the lock and
//! rolls back on failure.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::guest::{agent_deploy, keys};
use crate::image::{self, ImageArtifacts};
use crate::lab::{
    self, Accel, InFlight, LabDir, LabDirError, LabState, NodeState, Stage, UpError, UpNode, UpOptions, UpOutcome,
};
use crate::plan::{ImageRef, Plan};
use crate::ui::Ui;

use super::accel::{self, AccelChoice};
use super::hostnet::{HostNet, HostNetError};
use super::{machines, node, vm};

/// Everything the per-node pipelines share.
pub(super) struct Ctx {
    pub(super) ui: Ui,
    pub(super) plan: Plan,
    pub(super) dir: LabDir,
    pub(super) net: Arc<dyn HostNet>,
    pub(super) images: Vec<(ImageRef, ImageArtifacts)>,
    pub(super) accel: AccelChoice,
    pub(super) agent_binary: PathBuf,
    /// Byte size of the agent binary inside the agent disk (the rest is padding).
    pub(super) agent_size: u64,
    pub(super) client_pub: String,
    pub(super) state: Mutex<LabState>,
    pub(super) netem_in_guest: bool,
    pub(super) deadline: Instant,
    /// Tracks the pipelines' blocking work so a rollback can wait for it (see `InFlight`).
    pub(super) inflight: InFlight,
}

impl Ctx {
    pub(super) fn save_state(&self, update: impl FnOnce(&mut LabState)) -> Result<(), LabDirError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        update(&mut st);
        self.dir.write_state(&st)
    }

    /// Records that `node` reached `stage`.
    pub(super) fn record_stage(&self, node: &str, stage: Stage) -> Result<(), LabDirError> {
        self.save_state(|s| {
            if let Some(x) = s.nodes.get_mut(node) {
                x.stage = stage;
            }
        })
    }

    pub(super) fn node_state(&self, node: &str) -> Option<NodeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).nodes.get(node).cloned()
    }

    pub(super) fn artifacts(&self, r: &ImageRef) -> Option<&ImageArtifacts> {
        self.images.iter().find(|(i, _)| i == r).map(|(_, a)| a)
    }

    pub(super) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub(super) fn node_err(&self, node: &str, stage: Stage, message: impl ToString) -> UpError {
        let serial = self.dir.serial_log(node);
        let (serial_log, serial_tail) = if stage.guest_started() && serial.exists() {
            (Some(serial.clone()), vm::tail(&serial, 3000))
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

/// `up`'s work for the QEMU provider, step by step (see the module doc).
pub(super) async fn converge(
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
    let images = ensure_images(ui, &plan).await?;
    let (qemu_version, accel) = choose_accelerator(&images).await?;
    ui.info(format!("accelerator: {} ({})", accel.accel, accel.reason));
    let client_pub = lab_keys(&dir, &plan)?;
    let state = initial_state(&plan, &dir, previous.as_ref(), &images, &accel, qemu_version)?;
    dir.write_state(&state)?;
    let netem_in_guest = build_network(&plan, net.clone(), &inflight).await?;
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
    let nodes = run_node_pipelines(&ctx, opts.timeout).await?;
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

/// Every image the plan's nodes use, built or fetched once each.
async fn ensure_images(ui: &Ui, plan: &Plan) -> Result<Vec<(ImageRef, ImageArtifacts)>, UpError> {
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
    Ok(images)
}

/// QEMU's version and the accelerator, probed with the first image's kernel (cached per QEMU and kernel).
async fn choose_accelerator(images: &[(ImageRef, ImageArtifacts)]) -> Result<(String, AccelChoice), UpError> {
    let cache =
        image::accel_cache_dir().map_err(|source| UpError::Image { image: "(cache directory)".into(), source })?;
    let first = images.first().map(|(_, a)| a.clone());
    let (qemu_version, accel) = lab::blocking(move || {
        let version = vm::version();
        let choice = match (&version, &first) {
            (Ok(v), Some(a)) => accel::choose(&cache, v, a.kernel.as_deref(), a.initrd.as_deref(), &a.cmdline),
            _ => AccelChoice { accel: Accel::Tcg, reason: "no image to probe KVM with".into() },
        };
        (version, choice)
    })
    .await?;
    let qemu_version = qemu_version.map_err(|e| UpError::Task(e.to_string()))?;
    Ok((qemu_version, accel))
}

/// One client key per lab, one host key per node (generated on the host, pinned by the client) and the
/// known_hosts of `testbed ssh`; returns the client's public key for the seeds.
fn lab_keys(dir: &LabDir, plan: &Plan) -> Result<String, UpError> {
    let client_key = keys::generate_client_key(&dir.root).map_err(UpError::Keys)?;
    let client_pub_path = client_key.with_file_name("id_ed25519.pub");
    let client_pub = std::fs::read_to_string(&client_pub_path)
        .map_err(|source| LabDirError::Io { path: client_pub_path.clone(), source })?
        .trim()
        .to_string();
    let mut known = Vec::new();
    for node in &plan.nodes {
        known.push((node.ssh_port, node_host_key(dir, &node.name)?));
    }
    keys::write_known_hosts(&dir.known_hosts(), &known).map_err(UpError::Keys)?;
    Ok(client_pub)
}

/// The state `up` starts from: VMs of `previous` that still run are kept (their nodes start at the boot stage),
/// every other node starts at the disk stage.
fn initial_state(
    plan: &Plan,
    dir: &LabDir,
    previous: Option<&LabState>,
    images: &[(ImageRef, ImageArtifacts)],
    accel: &AccelChoice,
    qemu_version: String,
) -> Result<LabState, UpError> {
    let mut nodes = std::collections::BTreeMap::new();
    for node in &plan.nodes {
        let live = previous.and_then(|s| s.nodes.get(&node.name)).filter(|p| machines::is_running(dir, &node.name, p));
        let image_id = images.iter().find(|(r, _)| *r == node.image).map(|(_, a)| a.id.clone()).unwrap_or_default();
        let state = NodeState {
            pid: live.and_then(|p| p.pid),
            pid_start_time: live.and_then(|p| p.pid_start_time),
            ssh_port: node.ssh_port,
            accelerator: live.map_or(accel.accel, |p| p.accelerator),
            host_key_public: node_host_key(dir, &node.name)?,
            image_id,
            stage: if live.is_some() { Stage::Boot } else { Stage::Disk },
        };
        nodes.insert(node.name.clone(), state);
    }
    Ok(LabState {
        lab: plan.lab.clone(),
        accelerator: accel.accel,
        accelerator_reason: accel.reason.clone(),
        qemu_version,
        created_at: previous.map_or_else(lab::now_rfc3339, |p| p.created_at.clone()),
        nodes,
    })
}

/// The lab's netns, bridges and taps (tracked, so a rollback waits for it); true when netem must run in the
/// guests.
async fn build_network(plan: &Plan, net: Arc<dyn HostNet>, inflight: &InFlight) -> Result<bool, UpError> {
    let plan2 = plan.clone();
    inflight
        .blocking(move || setup_network(&plan2, net.as_ref()))
        .await?
        .map_err(|source| UpError::Net { netns: plan.netns.clone(), source: Box::new(source) })
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

/// Every node's pipeline at once, bounded by `timeout` (plus a margin for the pipelines' own deadline errors).
async fn run_node_pipelines(ctx: &Arc<Ctx>, timeout: Duration) -> Result<Vec<UpNode>, UpError> {
    let pipelines = ctx.plan.nodes.iter().map(|n| {
        let ctx = ctx.clone();
        let node = n.clone();
        async move {
            let task = ctx.ui.task(&node.name);
            let result = node::node_pipeline(&ctx, &node, &task).await;
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
    match tokio::time::timeout(timeout + Duration::from_secs(5), futures::future::try_join_all(pipelines)).await {
        Ok(r) => r,
        Err(_) => Err(UpError::Node {
            node: "(all)".into(),
            stage: Stage::Ready,
            message: format!("not ready within --timeout {} s", timeout.as_secs()),
            serial_log: None,
            serial_tail: String::new(),
        }),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::fixtures::test_plan;
    use crate::provider::qemu::hostnet::fake::FakeHostNet;
    use crate::provider::qemu::QemuProvider;

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

    #[test]
    fn failed_network_setup_is_fully_rolled_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "t");
        dir.create().unwrap();
        let net = Arc::new(FakeHostNet { fail_on: Some("tap tb-t tb-t-n2".into()), ..Default::default() });
        assert!(setup_network(&test_plan(), net.as_ref()).is_err());
        dir.write_plan(&test_plan()).unwrap();
        let t = lab::teardown(&dir, &QemuProvider::new(net.clone())).unwrap();
        assert_eq!(t.netns_deleted.as_deref(), Some("tb-t"));
        assert!(!dir.exists());
        assert!(net.namespaces.lock().unwrap().is_empty());
        assert_eq!(net.ops.lock().unwrap().last().map(String::as_str), Some("netns del tb-t"));
    }
}
