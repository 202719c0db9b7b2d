//! One node's machine under Vagrant: `vagrant up NODE`, its QEMU's PID recorded as soon as it runs; and
//! `destroy`, which `down`, rollbacks and node removal share. The nodes' `vagrant up`s overlap, except for the
//! part before a node's domain is created: the first one may upload the box into libvirt's pool, which two
//! processes must not do at once (vagrant-libvirt only serialises that inside one process).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;

use crate::lab::{
    Accel, InFlight, LabDir, LabState, Machines, NodeProgress, ReachableNode, SshEndpoint, Stage, StateRecorder,
    UpContext, UpError,
};
use crate::plan::NodePlan;
use crate::provider::qemu::procs;

use super::project::Project;
use super::{libvirt, VagrantError};

pub struct VagrantMachines {
    dir: LabDir,
    project: Project,
    accel: Accel,
    /// The agent's size on the agent disk the machines boot with (`/dev/vdc`).
    agent_size: u64,
    deadline: Instant,
    inflight: InFlight,
    /// Held by a `vagrant up` until Vagrant says it creates the domain (the box volume is in the pool then).
    box_upload: tokio::sync::Mutex<()>,
}

impl VagrantMachines {
    pub fn new(lab: &UpContext, project: Project, accel: Accel, agent_size: u64) -> Self {
        VagrantMachines {
            dir: lab.dir.clone(),
            project,
            accel,
            agent_size,
            deadline: lab.deadline,
            inflight: lab.inflight.clone(),
            box_upload: tokio::sync::Mutex::new(()),
        }
    }
}

impl Machines for VagrantMachines {
    fn reach<'a>(
        self: Arc<Self>,
        node: &'a NodePlan,
        state: &'a Arc<StateRecorder>,
        progress: &'a mut NodeProgress,
    ) -> BoxFuture<'a, Result<ReachableNode, UpError>> {
        Box::pin(reach(self, node, state, progress))
    }
}

async fn reach(
    m: Arc<VagrantMachines>,
    node: &NodePlan,
    state: &Arc<StateRecorder>,
    progress: &mut NodeProgress,
) -> Result<ReachableNode, UpError> {
    let name = node.name.clone();
    let ns =
        state.node(&name).ok_or_else(|| UpError::node(&m.dir, &name, Stage::Disk, "node missing from the state"))?;
    let endpoint = SshEndpoint { port: node.ssh_port, host_key: ns.host_key_public.clone() };
    if ns.pid.is_some() {
        return Ok(ReachableNode { pid: ns.pid, reused: true, ssh: endpoint, agent_disk_size: None });
    }
    progress.enter(Stage::Boot);
    progress.task().stage("boot: waiting for another node's vagrant up to create its domain");
    let mut box_upload = Some(m.box_upload.lock().await);
    TcpListener::bind(("127.0.0.1", node.ssh_port)).map_err(|e| {
        UpError::node(
            &m.dir,
            &name,
            Stage::Boot,
            format!("SSH port 127.0.0.1:{} is not free ({e}); stop what uses it", node.ssh_port),
        )
    })?;
    state.record_stage(&name, Stage::Boot)?;
    // Vagrant's lines reach the progress bar through a channel: the run blocks a thread.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (m2, n2, s2) = (m.clone(), name.clone(), state.clone());
    let run = m.inflight.blocking(move || up_and_record(&m2, &n2, &s2, tx));
    tokio::pin!(run);
    let pid = loop {
        tokio::select! {
            done = &mut run => break done??,
            Some(line) = rx.recv() => {
                if line.starts_with(CREATING_DOMAIN) {
                    drop(box_upload.take());
                }
                progress.task().stage(format!("boot: {}", line.trim()));
            }
        }
    };
    // `vagrant up` returns once Vagrant's own SSH login worked: sshd answers.
    progress.enter(Stage::Ssh);
    Ok(ReachableNode { pid: Some(pid), reused: false, ssh: endpoint, agent_disk_size: Some(m.agent_size) })
}

/// `vagrant up NODE`, then the machine's QEMU recorded in the state; returns its PID.
fn up_and_record(
    m: &VagrantMachines,
    node: &str,
    state: &StateRecorder,
    lines: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<u32, UpError> {
    // A domain of this name that the state does not record as running is a leftover (a `vagrant up` killed
    // while libvirtd still defined it, a machine that stopped): Vagrant would refuse the name. It goes.
    let domain = libvirt::domain(&m.dir.name, node);
    libvirt::remove_machine(&domain).map_err(|e| UpError::node(&m.dir, node, Stage::Boot, e))?;
    let inflight = m.inflight.clone();
    let deadline = m.deadline;
    let cancelled = move || inflight.is_cancelled() || Instant::now() > deadline;
    m.project
        .run(&["up", node, "--no-provision"], cancelled, |l| {
            if let Some(step) = vagrant_step(l) {
                let _ = lines.send(step.to_string());
            }
        })
        .map_err(|e| {
            let why = if Instant::now() > deadline { "stopped at `up --timeout`: " } else { "" };
            UpError::node(&m.dir, node, Stage::Boot, format!("{why}{e}"))
        })?;
    let p = libvirt::machine_process(&domain).ok_or_else(|| {
        UpError::node(
            &m.dir,
            node,
            Stage::Boot,
            format!("`vagrant up` succeeded but libvirt runs no QEMU for {domain}"),
        )
    })?;
    state.save(|s| {
        if let Some(x) = s.nodes.get_mut(node) {
            x.pid = Some(p.pid);
            x.pid_start_time = Some(p.start_time);
            x.accelerator = m.accel;
            x.stage = Stage::Ssh;
        }
    })?;
    Ok(p.pid)
}

/// How long `destroy` waits before looking for domains a killed `vagrant up` had asked libvirtd to define.
const LATE_DEFINE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// vagrant-libvirt's step once the box volume is in the pool (`creating_domain` in its locales/en.yml).
const CREATING_DOMAIN: &str = "Creating domain with the following settings";

/// The step a line of Vagrant's output announces (`==> node1: Starting domain.`), None for everything else: the
/// domain's parameters it lists one per line, progress counters, SSH details (all in the project's log).
fn vagrant_step(line: &str) -> Option<&str> {
    let (_, text) = line.strip_prefix("==> ")?.split_once(": ")?;
    (!text.is_empty() && !text.starts_with([' ', '-']) && !text.contains("Progress:")).then_some(text)
}

/// The lab's nodes as its directory knows them: the state's and the plan's.
fn known_nodes(dir: &LabDir, state: Option<&LabState>) -> Vec<String> {
    let mut names: Vec<String> = state.map(|s| s.nodes.keys().cloned().collect()).unwrap_or_default();
    if let Ok(plan) = dir.read_plan() {
        names.extend(plan.nodes.into_iter().map(|n| n.name));
    }
    names.sort();
    names.dedup();
    names
}

/// Destroys the lab's machines (`only`: that node's), found from the lab directory alone: `vagrant destroy -f`
/// on the lab's project, then whatever libvirt still holds under the machines' names. Returns (node, pid) of the
/// machines that ran. Without a state the provider made nothing (it records the state first): nothing to do.
pub fn destroy(dir: &LabDir, only: Option<&str>) -> Result<Vec<(String, u32)>, VagrantError> {
    let Ok(Some(state)) = dir.read_state() else { return Ok(Vec::new()) };
    let nodes: Vec<String> =
        known_nodes(dir, Some(&state)).into_iter().filter(|n| only.is_none_or(|o| o == n)).collect();
    let ran: Vec<(String, u32)> = nodes
        .iter()
        .filter_map(|n| {
            let p = state.nodes.get(n)?.process()?;
            libvirt::runs_machine(p, &libvirt::domain(&dir.name, n)).then(|| (n.clone(), p.pid))
        })
        .collect();
    let project = Project::of(dir);
    if project.is_usable() {
        let mut args = vec!["destroy", "-f"];
        args.extend(only);
        // Its failure is not final: libvirt is asked below for whatever it left.
        let _ = project.run(&args, || false, |_| {});
    }
    for n in &nodes {
        libvirt::remove_machine(&libvirt::domain(&dir.name, n))?;
    }
    // A `vagrant up` killed mid-way (a rollback) leaves libvirtd finishing its define: look once more.
    std::thread::sleep(LATE_DEFINE_WAIT);
    for n in &nodes {
        libvirt::remove_machine(&libvirt::domain(&dir.name, n))?;
    }
    if let Some((node, pid)) = ran.iter().find(|(n, pid)| {
        state.nodes.get(n).and_then(|s| s.pid_start_time).is_some_and(|start| procs::is_same_process(*pid, start))
    }) {
        return Err(VagrantError::Survivor { domain: libvirt::domain(&dir.name, node), pid: *pid });
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_shows_vagrants_steps_only() {
        assert_eq!(vagrant_step("==> node1: Starting domain."), Some("Starting domain."));
        assert_eq!(vagrant_step("==> node1:  -- Command line : console=ttyS0"), None);
        assert_eq!(vagrant_step("==> node1:     -> value=-netdev,"), None);
        assert_eq!(vagrant_step("    node1: SSH address: 127.0.0.1:19984"), None);
        assert_eq!(vagrant_step("Progress: 40%"), None);
    }
}
