//! The lab's QEMU processes: which of them still run (the one liveness check), and stopping them. A recorded
//! PID is only trusted while its start time matches and its command line names the node's directory, so `down`
//! never signals a stranger that inherited the PID.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::lab::{LabDir, NodeState, RecordedProcess};

use super::hostnet::HostNetError;
use super::{procs, vm};

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("deleting the lab's network namespace: {0}")]
    Net(#[from] HostNetError),
    #[error("QEMU of node {node} (pid {pid}) is still running after SIGKILL")]
    Survivor { node: String, pid: u32 },
    #[error("stopping QEMU of node {node} (pid {pid}) failed unexpectedly ({message}); the lab directory is kept: run `testbed down` again")]
    StopPanicked { node: String, pid: u32, message: String },
}

/// The lab's netns, `tb-<lab>` (the plan's rule). Derived from the lab's own name, never read from plan.json:
/// a corrupted or hand-edited plan must not make `down` delete another lab's namespace.
pub fn netns_of(dir: &LabDir) -> String {
    format!("tb-{}", dir.name)
}

/// True when `pid` is this node's QEMU: its argv holds `-pidfile <node dir>/qemu.pid`, which every VM we
/// launch has (whatever the QEMU binary is called, `TESTBED_QEMU`) and no other process does, not even one
/// that merely mentions the path (`less .../qemu.log`). After a host reboot start ticks restart, so a
/// recorded (pid, start time) alone could match a stranger.
fn runs_node(dir: &LabDir, node: &str, pid: u32) -> bool {
    let pidfile = dir.pidfile(node).display().to_string();
    procs::argv(pid).is_some_and(|argv| argv.windows(2).any(|w| w[0] == "-pidfile" && w[1] == pidfile))
}

/// The one liveness check: the VM `state` records for `node` is still running, with the same PID and start
/// time and a QEMU command line naming the node's directory.
pub fn is_running(dir: &LabDir, node: &str, state: &NodeState) -> bool {
    state.process().is_some_and(|p| is_node_vm(dir, node, p))
}

fn is_node_vm(dir: &LabDir, node: &str, p: RecordedProcess) -> bool {
    procs::is_same_process(p.pid, p.start_time) && runs_node(dir, node, p.pid)
}

/// A QEMU process of this lab's node, found by state or pidfile: (pid, start time).
pub fn node_processes(dir: &LabDir) -> Vec<(String, u32, u64)> {
    let mut found: Vec<(String, u32, u64)> = Vec::new();
    if let Ok(Some(state)) = dir.read_state() {
        for (node, ns) in &state.nodes {
            if let Some(p) = ns.process().filter(|p| is_node_vm(dir, node, *p)) {
                found.push((node.clone(), p.pid, p.start_time));
            }
        }
    }
    // A VM launched just before the CLI was killed may be only in its pidfile. It is ours only if its command
    // line names this node's directory (serial log, pidfile and disks live there).
    let nodes_dir = dir.root.join("nodes");
    if let Ok(entries) = std::fs::read_dir(&nodes_dir) {
        for entry in entries.flatten() {
            let node = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = procs::read_pidfile(&dir.pidfile(&node)) else { continue };
            if found.iter().any(|(_, p, _)| *p == pid) {
                continue;
            }
            if let (true, Some(start)) = (runs_node(dir, &node, pid), procs::start_time(pid)) {
                found.push((node, pid, start));
            }
        }
    }
    found
}

/// Stops one VM: QMP `quit` (clean), then SIGTERM, then SIGKILL.
pub fn stop_vm(qmp: &Path, pid: u32, start: u64) -> bool {
    if vm::qmp_quit(qmp).is_ok() {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && procs::is_same_process(pid, start) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    procs::terminate(pid, start, Duration::from_secs(3));
    !procs::is_same_process(pid, start)
}

/// Stops every VM in parallel with `stop`. Any VM not known to be gone (survivor or a stop thread that
/// panicked) is an error: the caller must then keep the netns and directory so `down` can be retried.
pub fn stop_all(
    vms: &[(String, u32, u64)],
    stop: impl Fn(&str, u32, u64) -> bool + Sync,
) -> Result<Vec<(String, u32)>, StopError> {
    let stop = &stop;
    let results: Vec<Result<bool, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = vms.iter().map(|(node, pid, start)| s.spawn(move || stop(node, *pid, *start))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().map_err(|p| {
                    p.downcast_ref::<&str>()
                        .map(|m| m.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into())
                })
            })
            .collect()
    });
    let mut stopped = Vec::new();
    for ((node, pid, _), result) in vms.iter().zip(results) {
        match result {
            Ok(true) => stopped.push((node.clone(), *pid)),
            Ok(false) => return Err(StopError::Survivor { node: node.clone(), pid: *pid }),
            Err(message) => return Err(StopError::StopPanicked { node: node.clone(), pid: *pid, message }),
        }
    }
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{Accel, LabState, Stage};
    use crate::provider::qemu::hostnet::fake::FakeHostNet;
    use crate::provider::qemu::QemuProvider;

    /// A Ready TCG node whose QEMU was recorded as `pid`, started at `start` (clock ticks after boot).
    fn node_state(pid: u32, start: Option<u64>) -> NodeState {
        NodeState {
            pid: Some(pid),
            pid_start_time: start,
            ssh_port: 1,
            accelerator: Accel::Tcg,
            host_key_public: String::new(),
            image_id: String::new(),
            stage: Stage::Ready,
        }
    }

    /// Lab `lab`'s state.json with these nodes.
    fn lab_state(lab: &str, nodes: Vec<(&str, NodeState)>) -> LabState {
        LabState {
            lab: lab.into(),
            provider: crate::lab::ProviderKind::Qemu,
            accelerator: Accel::Tcg,
            accelerator_reason: String::new(),
            qemu_version: String::new(),
            created_at: String::new(),
            nodes: nodes.into_iter().map(|(n, s)| (n.to_string(), s)).collect(),
        }
    }

    #[test]
    fn a_panicked_stop_keeps_the_netns_and_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "p");
        dir.create().unwrap();
        let vms = vec![("n1".to_string(), 11, 1), ("n2".to_string(), 22, 2)];
        let err = stop_all(&vms, |node, _, _| if node == "n2" { panic!("qmp exploded") } else { true }).unwrap_err();
        assert!(
            matches!(&err, StopError::StopPanicked { node, pid: 22, message } if node == "n2" && message.contains("qmp exploded")),
            "{err}"
        );
        let err = stop_all(&vms, |node, _, _| node != "n1").unwrap_err();
        assert!(matches!(err, StopError::Survivor { pid: 11, .. }));
        assert_eq!(stop_all(&vms, |_, _, _| true).unwrap(), vec![("n1".to_string(), 11), ("n2".to_string(), 22)]);
    }

    #[test]
    fn recorded_pid_with_matching_start_time_but_foreign_command_line_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "demo3");
        dir.create().unwrap();
        let me = std::process::id();
        dir.write_state(&lab_state("demo3", vec![("n1", node_state(me, procs::start_time(me)))])).unwrap();
        assert!(node_processes(&dir).is_empty());
    }

    #[test]
    fn a_vm_is_recognised_by_its_pidfile_argument_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "demo4");
        std::fs::create_dir_all(dir.node_dir("n1")).unwrap();
        let pidfile = dir.pidfile("n1").display().to_string();
        let log = dir.node_dir("n1").join("qemu.log").display().to_string();
        // Stand-ins named anything but qemu: one launched as a VM is (`-pidfile <path>`), one that only
        // mentions the node's files is not.
        let spawn = |args: &[&str]| {
            // `; exit`: the shell stays (with this argv) instead of exec'ing sleep.
            std::process::Command::new("sh").arg("-c").arg("sleep 30; exit 0").arg("vm").args(args).spawn().unwrap()
        };
        let mut vm = spawn(&["-name", "n1", "-pidfile", &pidfile]);
        let mut viewer = spawn(&["less", &log, &pidfile]);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while procs::argv(vm.id()).is_none_or(|a| !a.contains(&pidfile)) {
            assert!(std::time::Instant::now() < deadline, "stand-in did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let (vm_ok, viewer_ok) = (runs_node(&dir, "n1", vm.id()), runs_node(&dir, "n1", viewer.id()));
        let (other_node, other_lab) =
            (runs_node(&dir, "n10", vm.id()), runs_node(&LabDir::new(tmp.path(), "demo5"), "n1", vm.id()));
        for c in [&mut vm, &mut viewer] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(vm_ok && !viewer_ok && !other_node && !other_lab);
    }

    #[test]
    fn pidfile_of_a_foreign_process_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "demo2");
        std::fs::create_dir_all(dir.node_dir("n1")).unwrap();
        // Our own test process: alive, but its command line does not name the node directory.
        std::fs::write(dir.pidfile("n1"), std::process::id().to_string()).unwrap();
        assert!(node_processes(&dir).is_empty());
    }

    #[test]
    fn stopping_the_machines_stops_recorded_vms_and_spares_strangers() {
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
        assert!(start.is_some(), "the stand-in QEMU did not start");
        let state = lab_state(
            "x",
            vec![
                ("node1", node_state(pid, start)),
                // Our own PID with a wrong start time: a recycled PID that must not be signalled.
                ("node2", node_state(std::process::id(), Some(1))),
                ("node3", node_state(stranger.id(), Some(stranger_start))),
            ],
        );
        dir.create().unwrap();
        dir.write_state(&state).unwrap();
        let provider = QemuProvider::new(std::sync::Arc::new(FakeHostNet::default()));
        let stopped = crate::lab::Provider::stop_machines(&provider, &dir).unwrap();
        assert_eq!(stopped, vec![("node1".to_string(), pid)]);
        assert!(!child.wait().unwrap().success());
        assert!(stranger.try_wait().unwrap().is_none(), "a stranger was signalled");
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    }
}
