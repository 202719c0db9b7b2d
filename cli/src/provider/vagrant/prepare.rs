//! The Vagrant provider's lab-wide part of `up`: what the host lacks (stop before anything is made), what the
//! topology asks that the Vagrant lab cannot give, testbed's box added to Vagrant, then the state, libvirt's
//! pool, the lab's Vagrant project and each node's seed (hostname, underlay NICs, the host key testbed pins and
//! the lab's client key), which QEMU (user `libvirt-qemu`) reads from /var/lib/testbed/vagrant/<lab>/.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::guest::agent_deploy;
use crate::image::{self, vagrant_box, ImageArtifacts};
use crate::lab::{self, keys, Accel, LabState, NodeState, PreparedLab, ProviderKind, Stage, UpContext, UpError};
use crate::plan::{ImageRef, NodePlan, Plan};
use crate::provider::qemu::vm;

use super::node::VagrantMachines;
use super::project::{self, Project};
use super::{doctor, hub, libvirt, VagrantError};

/// Where the seeds of lab `lab` live (the Vagrantfile's `seed_dir`).
fn seed_dir(lab: &str) -> PathBuf {
    Path::new("/var/lib/testbed/vagrant").join(lab)
}

/// The agent disk the machines boot with (the Vagrantfile's `agent.img`; see `agent_deploy::write_agent_disk`).
fn agent_disk_path(lab: &str) -> PathBuf {
    seed_dir(lab).join("agent.img")
}

pub fn seed_path(lab: &str, node: &str) -> PathBuf {
    seed_dir(lab).join(format!("{node}-seed.img"))
}

pub fn remove_seed(lab: &str, node: &str) -> Result<(), VagrantError> {
    let seed = seed_path(lab, node);
    match std::fs::remove_file(&seed) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(VagrantError::Io { what: format!("remove {}", seed.display()), source: e })
        }
        _ => Ok(()),
    }
}

pub fn remove_seeds(lab: &str) -> Result<(), VagrantError> {
    let dir = seed_dir(lab);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(VagrantError::Io { what: format!("remove {}", dir.display()), source: e })
        }
        _ => Ok(()),
    }
}

/// What of `plan` the Vagrant lab cannot build, in the user's terms; None when it can build all of it.
pub fn unsupported(plan: &Plan) -> Option<String> {
    if let Some(n) = plan.nodes.iter().find(|n| !matches!(n.image, ImageRef::Named(_))) {
        return Some(format!("node {}: only testbed's named images become Vagrant boxes, not an image URL", n.name));
    }
    // The box fixes the kernel command line (`testbed image box`); refused rather than silently dropped.
    let n = plan.nodes.iter().find(|n| !n.kernel_args.is_empty())?;
    Some(format!(
        "node {}: kernel_args are not passed to Vagrant's VMs (the box fixes the kernel command line)",
        n.name
    ))
}

/// The accelerator the Vagrantfile's libvirt driver gives (`TESTBED_VAGRANT_DRIVER`, default qemu = TCG).
fn accelerator() -> (Accel, String) {
    match std::env::var("TESTBED_VAGRANT_DRIVER").as_deref() {
        Ok("kvm") => (Accel::Kvm, "vagrant-libvirt driver kvm (TESTBED_VAGRANT_DRIVER=kvm)".into()),
        _ => (Accel::Tcg, "vagrant-libvirt driver qemu (TCG; TESTBED_VAGRANT_DRIVER=kvm for KVM)".into()),
    }
}

pub(super) async fn prepare(lab: &UpContext) -> Result<PreparedLab, UpError> {
    let missing = lab::blocking(doctor::missing_for_up).await?;
    if !missing.is_empty() {
        return Err(VagrantError::Missing { missing: missing.join(", "), fix: doctor::fix_for_up() }.into());
    }
    if let Some(slow) = lab::blocking(doctor::kvm_check).await?.filter(|c| c.fix.is_some()) {
        lab.ui.info(format!("warning: {}; fix: {}", slow.detail, doctor::KVM_FIX));
    }
    if let Some(reason) = unsupported(&lab.plan) {
        return Err(UpError::Unsupported { provider: ProviderKind::Vagrant, reason });
    }
    // In the lab directory, not a host resource: `vagrant box add` below runs there.
    let project = Project::of(&lab.dir);
    project.write()?;
    let images = ensure_boxes(lab).await?;
    let state = initial_state(lab, &images)?;
    lab.dir.write_state(&state)?;
    let (plan, dir, targets, client) =
        (lab.plan.clone(), lab.dir.clone(), lab.targets.clone(), lab.client_public_key.clone());
    let live: Vec<String> = state.nodes.iter().filter(|(_, s)| s.pid.is_some()).map(|(n, _)| n.clone()).collect();
    let agent = lab.agent_binary.clone();
    let agent_size = lab
        .inflight
        .blocking(move || -> Result<u64, UpError> {
            libvirt::ensure_pool()?;
            hub::restart(&dir, &plan)?;
            for node in plan.nodes.iter().filter(|n| targets.includes(&n.name) && !live.contains(&n.name)) {
                write_seed(&dir, &plan.lab, node, &client)?;
            }
            let disk = agent_disk_path(&plan.lab);
            std::fs::create_dir_all(seed_dir(&plan.lab))
                .map_err(VagrantError::io(format!("create {}", seed_dir(&plan.lab).display())))?;
            let size = agent_deploy::write_agent_disk(&agent, &disk).map_err(UpError::AgentBinary)?;
            // QEMU reads it as `libvirt-qemu`.
            std::fs::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .map_err(VagrantError::io(format!("chmod {}", disk.display())))?;
            Ok(size)
        })
        .await??;
    let machines = Arc::new(VagrantMachines::new(lab, project, state.accelerator, agent_size));
    // The underlay NICs are UDP sockets on loopback: there is no host interface to shape.
    Ok(PreparedLab { state, impairments_in_guest: true, machines })
}

/// Every image the target nodes use, built once each, packaged as a box and added to Vagrant when Vagrant does not
/// hold this box yet.
async fn ensure_boxes(lab: &UpContext) -> Result<Vec<(ImageRef, ImageArtifacts)>, UpError> {
    let mut images: Vec<(ImageRef, ImageArtifacts)> = Vec::new();
    for node in lab.plan.nodes.iter().filter(|n| lab.targets.includes(&n.name)) {
        let ImageRef::Named(name) = &node.image else { continue };
        if images.iter().any(|(r, _)| *r == node.image) {
            continue;
        }
        let fail = |source| UpError::Image { image: name.clone(), source };
        let art = image::ensure(&lab.ui, &node.image).await.map_err(fail)?;
        let out_dir = vagrant_box::boxes_dir().map_err(fail)?;
        let (a, n) = (art.clone(), name.clone());
        let made =
            lab::blocking(move || vagrant_box::write_box(&a, &n, &out_dir, Path::new(vagrant_box::BOOT_FILES_ROOT)))
                .await?
                .map_err(fail)?;
        if box_is_older(&made.name, &made.file) {
            let task = lab.ui.task(&format!("box {}", made.name));
            task.stage("vagrant box add");
            let (file, box_name) = (made.file.display().to_string(), made.name.clone());
            let dir = lab.dir.clone();
            lab::blocking(move || {
                Project::of(&dir).run(&["box", "add", "--force", "--name", &box_name, &file], || false, |_| {})
            })
            .await??;
            task.finish(format!("added {}", made.file.display()));
        }
        images.push((node.image.clone(), art));
    }
    Ok(images)
}

/// True unless Vagrant holds box `name` added from `file` or later: a new `box add` makes vagrant-libvirt upload the
/// disk into libvirt once more, under a new volume name.
fn box_is_older(name: &str, file: &Path) -> bool {
    let Some(home) = project::vagrant_home() else { return true };
    let installed = home.join("boxes").join(name.replace('/', "-VAGRANTSLASH-")).join("0/libvirt/box.img");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (mtime(&installed), mtime(file)) {
        (Some(have), Some(made)) => have < made,
        _ => true,
    }
}

/// The state `up` starts from: as the QEMU provider's (`provider/qemu/converge.rs`), with a machine counted as
/// live when libvirt still runs it.
fn initial_state(lab: &UpContext, images: &[(ImageRef, ImageArtifacts)]) -> Result<LabState, UpError> {
    let (plan, dir, previous) = (&lab.plan, &lab.dir, lab.previous.as_ref());
    let (accel, reason) = accelerator();
    let mut nodes = BTreeMap::new();
    for node in &plan.nodes {
        let recorded = previous.and_then(|s| s.nodes.get(&node.name));
        if let Some(state) = recorded.filter(|_| !lab.targets.includes(&node.name)) {
            nodes.insert(node.name.clone(), state.clone());
            continue;
        }
        let live = recorded
            .filter(|s| s.process().is_some_and(|p| libvirt::runs_machine(p, &libvirt::domain(&plan.lab, &node.name))));
        let image_id = images.iter().find(|(r, _)| *r == node.image).map(|(_, a)| a.id.clone()).unwrap_or_default();
        nodes.insert(
            node.name.clone(),
            NodeState {
                pid: live.and_then(|p| p.pid),
                pid_start_time: live.and_then(|p| p.pid_start_time),
                ssh_port: node.ssh_port,
                accelerator: live.map_or(accel, |p| p.accelerator),
                host_key_public: keys::node_host_key(dir, &node.name)?,
                image_id,
                stage: if live.is_some() { Stage::Boot } else { Stage::Disk },
            },
        );
    }
    Ok(LabState {
        lab: plan.lab.clone(),
        provider: ProviderKind::Vagrant,
        accelerator: accel,
        accelerator_reason: reason,
        qemu_version: vm::version().unwrap_or_default(),
        created_at: previous.map_or_else(lab::now_rfc3339, |p| p.created_at.clone()),
        nodes,
    })
}

/// The node's seed, world-readable (QEMU reads it as `libvirt-qemu`; it holds the guest's host key, as the QEMU
/// provider's seed does, on a host where the lab's users are root).
fn write_seed(dir: &lab::LabDir, lab_name: &str, node: &NodePlan, client_pub: &str) -> Result<(), UpError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: String| UpError::node(dir, &node.name, Stage::Disk, e);
    let seeds = seed_dir(lab_name);
    std::fs::create_dir_all(&seeds).map_err(|e| fail(format!("create {}: {e}", seeds.display())))?;
    for d in [seeds.as_path(), seeds.parent().unwrap_or(&seeds)] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| fail(format!("chmod {}: {e}", d.display())))?;
    }
    let private = std::fs::read_to_string(dir.host_key(&node.name)).map_err(|e| fail(format!("host key: {e}")))?;
    let public = keys::node_host_key(dir, &node.name)?;
    let seed = image::seed::SeedConfig::of_node(node, private, public, vec![client_pub.to_string()]);
    vagrant_box::write_readable_seed(&seed, &seed_path(lab_name, &node.name)).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::fixtures::test_plan;

    #[test]
    fn an_image_url_is_refused_by_node() {
        let mut plan = test_plan();
        assert_eq!(unsupported(&plan), None);
        plan.nodes[0].image = ImageRef::Url { url: "http://x/y.qcow2".into(), sha256: "00".into() };
        assert!(unsupported(&plan).unwrap().starts_with("node "));
    }

    #[test]
    fn kernel_args_are_refused_by_node() {
        let mut plan = test_plan();
        plan.nodes[1].kernel_args = vec!["quiet".into()];
        let why = unsupported(&plan).unwrap();
        assert!(why.starts_with(&format!("node {}: kernel_args", plan.nodes[1].name)), "{why}");
    }
}
