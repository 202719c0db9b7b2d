//! The QEMU provider's lab-wide preparation: the agent disk, images, accelerator, host keys and the initial
//! state, then the lab's host network. What it makes ([`Ctx`]) is the lab's machines, each brought up by
//! `node.rs`. The lab layer around it (`crate::lab`) holds the lock, rolls back on failure and does everything
//! after a node's sshd answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::guest::agent_deploy;
use crate::image::{self, ImageArtifacts};
use crate::lab::{
    self, keys, Accel, InFlight, LabDir, LabState, NodeState, PreparedLab, Stage, Targets, UpContext, UpError,
};
use crate::plan::{ImageRef, Plan};
use crate::ui::Ui;

use super::accel::{self, AccelChoice};
use super::hostnet::{HostNet, HostNetError};
use super::{machines, vm};

/// Everything the per-node work shares.
pub(super) struct Ctx {
    pub(super) plan: Plan,
    pub(super) dir: LabDir,
    pub(super) net: Arc<dyn HostNet>,
    pub(super) images: Vec<(ImageRef, ImageArtifacts)>,
    pub(super) accel: AccelChoice,
    /// Byte size of the agent binary inside the agent disk (the rest is padding).
    pub(super) agent_size: u64,
    pub(super) client_pub: String,
    pub(super) deadline: Instant,
    /// Tracks the blocking work so a rollback can wait for it (see `InFlight`).
    pub(super) inflight: InFlight,
}

impl Ctx {
    pub(super) fn artifacts(&self, r: &ImageRef) -> Option<&ImageArtifacts> {
        self.images.iter().find(|(i, _)| i == r).map(|(_, a)| a)
    }

    pub(super) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

fn image_label(r: &ImageRef) -> String {
    match r {
        ImageRef::Named(n) => n.clone(),
        ImageRef::Url { url, .. } => url.clone(),
    }
}

/// The lab-wide part of `up` for the QEMU provider, step by step (see the module doc).
pub(super) async fn prepare(lab: &UpContext, net: Arc<dyn HostNet>) -> Result<PreparedLab, UpError> {
    let agent_size =
        agent_deploy::write_agent_disk(&lab.agent_binary, &lab.dir.agent_disk()).map_err(UpError::AgentBinary)?;
    let images = ensure_images(&lab.ui, &lab.plan, &lab.targets).await?;
    let (qemu_version, accel) = choose_accelerator(&images).await?;
    lab.ui.info(format!("accelerator: {} ({})", accel.accel, accel.reason));
    let state = initial_state(lab, &images, &accel, qemu_version)?;
    lab.dir.write_state(&state)?;
    let netem_in_guest = build_network(&lab.plan, &lab.targets, net.clone(), &lab.inflight).await?;
    if netem_in_guest {
        lab.ui
            .info("the host kernel has no netem: link impairments are applied inside the guests (egress of each NIC)");
    }
    let machines = Arc::new(Ctx {
        plan: lab.plan.clone(),
        dir: lab.dir.clone(),
        net,
        images,
        accel,
        agent_size,
        client_pub: lab.client_public_key.clone(),
        deadline: lab.deadline,
        inflight: lab.inflight.clone(),
    });
    Ok(PreparedLab { state, impairments_in_guest: netem_in_guest, machines })
}

/// Every image the target nodes use, built or fetched once each.
async fn ensure_images(ui: &Ui, plan: &Plan, targets: &Targets) -> Result<Vec<(ImageRef, ImageArtifacts)>, UpError> {
    let mut images: Vec<(ImageRef, ImageArtifacts)> = Vec::new();
    for node in plan.nodes.iter().filter(|n| targets.includes(&n.name)) {
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

/// The state `up` starts from: a node it does not bring up keeps what `previous` records; of the others, VMs
/// of `previous` that still run are kept (their nodes start at the boot stage), every other node starts at the
/// disk stage.
fn initial_state(
    lab: &UpContext,
    images: &[(ImageRef, ImageArtifacts)],
    accel: &AccelChoice,
    qemu_version: String,
) -> Result<LabState, UpError> {
    let (plan, dir, previous) = (&lab.plan, &lab.dir, lab.previous.as_ref());
    let mut nodes = std::collections::BTreeMap::new();
    for node in &plan.nodes {
        let untouched = previous.and_then(|s| s.nodes.get(&node.name)).filter(|_| !lab.targets.includes(&node.name));
        if let Some(state) = untouched {
            nodes.insert(node.name.clone(), state.clone());
            continue;
        }
        let live = previous.and_then(|s| s.nodes.get(&node.name)).filter(|p| machines::is_running(dir, &node.name, p));
        let image_id = images.iter().find(|(r, _)| *r == node.image).map(|(_, a)| a.id.clone()).unwrap_or_default();
        let state = NodeState {
            pid: live.and_then(|p| p.pid),
            pid_start_time: live.and_then(|p| p.pid_start_time),
            ssh_port: node.ssh_port,
            accelerator: live.map_or(accel.accel, |p| p.accelerator),
            host_key_public: keys::node_host_key(dir, &node.name)?,
            image_id,
            stage: if live.is_some() { Stage::Boot } else { Stage::Disk },
        };
        nodes.insert(node.name.clone(), state);
    }
    Ok(LabState {
        lab: plan.lab.clone(),
        provider: crate::lab::ProviderKind::Qemu,
        accelerator: accel.accel,
        accelerator_reason: accel.reason.clone(),
        qemu_version,
        created_at: previous.map_or_else(lab::now_rfc3339, |p| p.created_at.clone()),
        nodes,
    })
}

/// The lab's netns, bridges and the target nodes' taps (tracked, so a rollback waits for it); true when netem
/// must run in the guests.
async fn build_network(
    plan: &Plan,
    targets: &Targets,
    net: Arc<dyn HostNet>,
    inflight: &InFlight,
) -> Result<bool, UpError> {
    let (plan2, targets) = (plan.clone(), targets.clone());
    inflight
        .blocking(move || setup_network(&plan2, &targets, net.as_ref()))
        .await?
        .map_err(|source| UpError::Net { netns: plan.netns.clone(), source: Box::new(source) })
}

/// Bridges, the target nodes' taps (master, MTU, up) and netem in the lab netns. Returns true when the host
/// kernel cannot do netem and the impairments must be applied inside the guests instead.
pub fn setup_network(plan: &Plan, targets: &Targets, net: &dyn HostNet) -> Result<bool, HostNetError> {
    net.create_netns(&plan.netns)?;
    for nw in &plan.networks {
        net.ensure_bridge(&plan.netns, &nw.bridge, nw.mtu)?;
    }
    let mut netem_in_guest = false;
    for node in plan.nodes.iter().filter(|n| targets.includes(&n.name)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::fixtures::test_plan;
    use crate::provider::qemu::hostnet::fake::FakeHostNet;
    use crate::provider::qemu::QemuProvider;

    #[test]
    fn network_is_built_netns_then_bridges_then_taps_with_netem() {
        let net = FakeHostNet::default();
        let guest = setup_network(&test_plan(), &Targets::All, &net).unwrap();
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
        assert!(setup_network(&test_plan(), &Targets::All, net.as_ref()).is_err());
        dir.write_plan(&test_plan()).unwrap();
        let t = lab::teardown(&dir, &QemuProvider::new(net.clone())).unwrap();
        assert_eq!(t.netns_deleted.as_deref(), Some("tb-t"));
        assert!(!dir.exists());
        assert!(net.namespaces.lock().unwrap().is_empty());
        assert_eq!(net.ops.lock().unwrap().last().map(String::as_str), Some("netns del tb-t"));
    }
}
