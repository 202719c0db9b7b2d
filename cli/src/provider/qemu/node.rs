//! One node's machine, made reachable: disks, QEMU launch, waiting for sshd (the lab layer does the rest).
//! Every node runs this concurrently; what they share is in [`Ctx`].

use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

// SSHD_STARTED: what testbed's guest init prints on the serial console once sshd runs.
use crate::image::{self, ImageArtifacts, SSHD_STARTED};
use crate::lab::dir::log_tail;
use crate::lab::{Machines, NodeProgress, ReachableNode, SshEndpoint, Stage, StateRecorder, UpError};
use crate::plan::NodePlan;

use super::converge::Ctx;
use super::{procs, vm};

/// How long to wait for that line before trying SSH anyway (an image whose init says something else).
const SSHD_MARKER_WAIT: Duration = Duration::from_secs(90);

/// Waits until the guest says sshd runs, and fails at once if QEMU dies meanwhile. Connecting earlier costs
/// seconds: slirp accepts the host side immediately and then retries its SYN to the not-yet-networked guest
/// with exponential backoff.
async fn wait_for_sshd(ctx: &Ctx, node: &NodePlan, state: &StateRecorder) -> Result<(), UpError> {
    let serial = ctx.dir.serial_log(&node.name);
    let until = Instant::now() + SSHD_MARKER_WAIT.min(ctx.remaining());
    let recorded = state.node(&node.name).and_then(|s| s.process());
    while Instant::now() < until {
        if std::fs::read(&serial).is_ok_and(|b| b.windows(SSHD_STARTED.len()).any(|w| w == SSHD_STARTED.as_bytes())) {
            return Ok(());
        }
        if let Some(p) = recorded {
            if !procs::is_same_process(p.pid, p.start_time) {
                let qemu_log = log_tail(&ctx.dir.qemu_log(&node.name), 1000);
                return Err(UpError::node(
                    &ctx.dir,
                    &node.name,
                    Stage::Boot,
                    format!("QEMU (pid {}) exited while the guest booted {qemu_log}", p.pid),
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

impl Machines for Ctx {
    fn reach<'a>(
        self: Arc<Self>,
        node: &'a NodePlan,
        state: &'a Arc<StateRecorder>,
        progress: &'a mut NodeProgress,
    ) -> BoxFuture<'a, Result<ReachableNode, UpError>> {
        Box::pin(reach(self, node, state, progress))
    }
}

/// Brings one node from its recorded state to a booted VM (reused when it still runs) whose sshd is up.
async fn reach(
    ctx: Arc<Ctx>,
    node: &NodePlan,
    state: &Arc<StateRecorder>,
    progress: &mut NodeProgress,
) -> Result<ReachableNode, UpError> {
    let name = &node.name;
    let ns =
        state.node(name).ok_or_else(|| UpError::node(&ctx.dir, name, Stage::Disk, "node missing from the state"))?;
    let reused = ns.pid.is_some();
    let pid = if reused { ns.pid } else { Some(start_vm(&ctx, node, state, progress).await?) };

    progress.enter(Stage::Ssh);
    if !reused && ctx.artifacts(&node.image).is_some_and(|a| a.kernel.is_some()) {
        wait_for_sshd(&ctx, node, state).await?;
    }
    Ok(ReachableNode {
        pid,
        reused,
        ssh: SshEndpoint { port: node.ssh_port, host_key: ns.host_key_public },
        // A reused VM booted with the agent disk of an earlier `up`, which may hold another build.
        agent_disk_size: (!reused).then_some(ctx.agent_size),
    })
}

/// Disks, then the QEMU launch; returns the VM's PID.
async fn start_vm(
    ctx: &Arc<Ctx>,
    node: &NodePlan,
    state: &Arc<StateRecorder>,
    progress: &mut NodeProgress,
) -> Result<u32, UpError> {
    let name = &node.name;
    progress.enter(Stage::Disk);
    let art =
        ctx.artifacts(&node.image).cloned().ok_or_else(|| UpError::node(&ctx.dir, name, Stage::Disk, "no image"))?;
    let (c, s, n, a) = (ctx.clone(), state.clone(), node.clone(), art.clone());
    ctx.inflight.blocking(move || prepare_disks(&c, &s, &n, &a)).await??;
    state.record_stage(name, Stage::Boot)?;

    progress.enter(Stage::Boot);
    let (c, s, n) = (ctx.clone(), state.clone(), node.clone());
    // launch_node records the PID itself: this future may be dropped while the launch runs.
    ctx.inflight.blocking(move || launch_node(&c, &s, &n, &art)).await?
}

/// Seed (keys, hostname, NICs) and a fresh overlay on the image's base disk.
fn prepare_disks(ctx: &Ctx, state: &StateRecorder, node: &NodePlan, art: &ImageArtifacts) -> Result<(), UpError> {
    let name = &node.name;
    // Queued before a sibling failed: the rollback is about to remove the lab directory.
    if ctx.inflight.is_cancelled() {
        return Err(UpError::Cancelled);
    }
    let node_dir = ctx.dir.node_dir(name);
    std::fs::create_dir_all(&node_dir)
        .map_err(|e| UpError::node(&ctx.dir, name, Stage::Disk, format!("{}: {e}", node_dir.display())))?;
    let private = std::fs::read_to_string(ctx.dir.host_key(name))
        .map_err(|e| UpError::node(&ctx.dir, name, Stage::Disk, format!("host key: {e}")))?;
    let public = state.node(name).map(|s| s.host_key_public).unwrap_or_default();
    let seed = image::seed::SeedConfig::of_node(node, private, public, vec![ctx.client_pub.clone()]);
    image::seed::write_seed(&ctx.dir.seed(name), &seed).map_err(|e| UpError::node(&ctx.dir, name, Stage::Disk, e))?;
    vm::create_overlay(&art.disk, &ctx.dir.overlay(name)).map_err(|e| UpError::node(&ctx.dir, name, Stage::Disk, e))?;
    Ok(())
}

/// Opens the node's taps, starts its QEMU and records its PID and start time in state.json (here, on the
/// blocking thread, so that a rollback finds the VM even when the caller has stopped waiting); returns the PID.
fn launch_node(ctx: &Ctx, state: &StateRecorder, node: &NodePlan, art: &ImageArtifacts) -> Result<u32, UpError> {
    let name = &node.name;
    if ctx.inflight.is_cancelled() {
        return Err(UpError::Cancelled);
    }
    // QEMU would fail later with a vaguer message; name the node and the port now.
    TcpListener::bind(("127.0.0.1", node.ssh_port)).map_err(|e| {
        UpError::node(
            &ctx.dir,
            name,
            Stage::Boot,
            format!("SSH port 127.0.0.1:{} is not free ({e}); stop what uses it", node.ssh_port),
        )
    })?;
    let taps: Vec<OwnedFd> = node
        .nics
        .iter()
        .map(|nic| {
            ctx.net.open_tap(&ctx.plan.netns, &nic.tap).map_err(|e| UpError::node(&ctx.dir, name, Stage::Boot, e))
        })
        .collect::<Result<_, _>>()?;
    let cmdline = super::accel::guest_cmdline(&art.cmdline, ctx.accel.accel, &node.kernel_args);
    let cfg = vm::VmConfig {
        node: name.clone(),
        vm_name: format!("tb-{}-{}", ctx.plan.lab, name),
        accel: ctx.accel.accel,
        memory_mib: node.memory_mib,
        cpus: node.cpus,
        boot: vm::Boot { kernel: art.kernel.clone(), initrd: art.initrd.clone(), cmdline },
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
            .map(|(nic, fd)| vm::VmNic { mac: nic.mac.clone(), fd: fd.as_raw_fd() })
            .collect(),
        agent_disk: Some(ctx.dir.agent_disk()),
    };
    let pid = vm::launch(&cfg, &ctx.dir.qemu_log(name)).map_err(|e| UpError::node(&ctx.dir, name, Stage::Boot, e))?;
    // Our copies of the tap fds close here; QEMU holds its own.
    drop(taps);
    let start = procs::start_time(pid).ok_or_else(|| {
        UpError::node(&ctx.dir, name, Stage::Boot, format!("QEMU (pid {pid}) exited right after starting"))
    })?;
    state.save(|s| {
        if let Some(x) = s.nodes.get_mut(name) {
            x.pid = Some(pid);
            x.pid_start_time = Some(start);
            x.accelerator = ctx.accel.accel;
            x.stage = Stage::Ssh;
        }
    })?;
    Ok(pid)
}
