//! Teardown from the lab directory alone: VMs by recorded PID (only while their start time matches), the lab
//! netns (its taps and bridges go with it), then the directory. Used by `down` and by `up`'s rollback.

use std::path::Path;
use std::time::{Duration, Instant};

use super::hostnet::{HostNet, HostNetError};
use super::labdir::{LabDir, LabDirError};
use super::{procs, qemu};

#[derive(Debug, thiserror::Error)]
pub enum DownError {
    #[error(transparent)]
    LabDir(#[from] LabDirError),
    #[error("deleting the lab's network namespace: {0}")]
    Net(#[from] HostNetError),
    #[error("QEMU of node {node} (pid {pid}) is still running after SIGKILL")]
    Survivor { node: String, pid: u32 },
    #[error("stopping QEMU of node {node} (pid {pid}) failed unexpectedly ({message}); the lab directory is kept: run `testbed down` again")]
    StopPanicked { node: String, pid: u32, message: String },
}

/// What a teardown did, for the user and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Teardown {
    /// (node, pid) of the VMs that were stopped.
    pub stopped: Vec<(String, u32)>,
    pub netns_deleted: Option<String>,
    pub dir_removed: bool,
}

impl Teardown {
    pub fn is_noop(&self) -> bool {
        self.stopped.is_empty() && self.netns_deleted.is_none() && !self.dir_removed
    }
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

/// The recorded VM of `node` is still running: same PID, same start time, and a QEMU command line naming
/// the node's directory.
pub fn is_node_vm(dir: &LabDir, node: &str, pid: u32, start: u64) -> bool {
    procs::is_same_process(pid, start) && runs_node(dir, node, pid)
}

/// A QEMU process of this lab's node, found by state or pidfile: (pid, start time).
fn node_processes(dir: &LabDir) -> Vec<(String, u32, u64)> {
    let mut found: Vec<(String, u32, u64)> = Vec::new();
    if let Ok(Some(state)) = dir.read_state() {
        for (node, ns) in &state.nodes {
            if let (Some(pid), Some(start)) = (ns.pid, ns.pid_start_time) {
                if is_node_vm(dir, node, pid, start) {
                    found.push((node.clone(), pid, start));
                }
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
fn stop_vm(qmp: &Path, pid: u32, start: u64) -> bool {
    if qemu::qmp_quit(qmp).is_ok() {
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
fn stop_all(
    vms: &[(String, u32, u64)],
    stop: impl Fn(&str, u32, u64) -> bool + Sync,
) -> Result<Vec<(String, u32)>, DownError> {
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
            Ok(false) => return Err(DownError::Survivor { node: node.clone(), pid: *pid }),
            Err(message) => return Err(DownError::StopPanicked { node: node.clone(), pid: *pid, message }),
        }
    }
    Ok(stopped)
}

/// Removes everything of the lab; idempotent (a second call finds nothing and does nothing).
pub fn teardown(dir: &LabDir, net: &dyn HostNet) -> Result<Teardown, DownError> {
    let mut report = Teardown::default();
    let vms = node_processes(dir);
    report.stopped = stop_all(&vms, |node, pid, start| stop_vm(&dir.qmp_socket(node), pid, start))?;
    let netns = netns_of(dir);
    if net.netns_exists(&netns)? {
        net.delete_netns(&netns)?;
        report.netns_deleted = Some(netns);
    }
    if dir.exists() {
        dir.remove()?;
        report.dir_removed = true;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::super::hostnet::fake::FakeHostNet;
    use super::super::labdir::{LabState, NodeState};
    use super::*;

    #[test]
    fn teardown_is_idempotent_and_only_touches_the_labs_netns() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "demo");
        dir.create().unwrap();
        let net = FakeHostNet::default();
        net.create_netns("tb-demo").unwrap();
        net.create_netns("tb-other").unwrap();
        let first = teardown(&dir, &net).unwrap();
        assert_eq!(first.netns_deleted.as_deref(), Some("tb-demo"));
        assert!(first.dir_removed && !dir.exists());
        assert!(net.netns_exists("tb-other").unwrap());
        let second = teardown(&dir, &net).unwrap();
        assert!(second.is_noop());
    }

    #[test]
    fn netns_comes_from_the_lab_name_not_the_plan() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "mine");
        dir.create().unwrap();
        let mut plan = super::super::up::tests::test_plan();
        plan.netns = "tb-other".into();
        dir.write_plan(&plan).unwrap();
        let net = FakeHostNet::default();
        net.create_netns("tb-other").unwrap();
        let t = teardown(&dir, &net).unwrap();
        assert_eq!(t.netns_deleted, None);
        assert!(net.netns_exists("tb-other").unwrap());
    }

    #[test]
    fn a_panicked_stop_keeps_the_netns_and_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "p");
        dir.create().unwrap();
        let vms = vec![("n1".to_string(), 11, 1), ("n2".to_string(), 22, 2)];
        let err = stop_all(&vms, |node, _, _| if node == "n2" { panic!("qmp exploded") } else { true }).unwrap_err();
        assert!(
            matches!(&err, DownError::StopPanicked { node, pid: 22, message } if node == "n2" && message.contains("qmp exploded")),
            "{err}"
        );
        let err = stop_all(&vms, |node, _, _| node != "n1").unwrap_err();
        assert!(matches!(err, DownError::Survivor { pid: 11, .. }));
        assert_eq!(stop_all(&vms, |_, _, _| true).unwrap(), vec![("n1".to_string(), 11), ("n2".to_string(), 22)]);
    }

    #[test]
    fn recorded_pid_with_matching_start_time_but_foreign_command_line_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "demo3");
        dir.create().unwrap();
        let me = std::process::id();
        let node = NodeState {
            pid: Some(me),
            pid_start_time: procs::start_time(me),
            ssh_port: 1,
            accelerator: super::super::accel::Accel::Tcg,
            host_key_public: String::new(),
            image_id: String::new(),
            stage: "ready".into(),
        };
        let state = LabState {
            lab: "demo3".into(),
            accelerator: super::super::accel::Accel::Tcg,
            accelerator_reason: String::new(),
            qemu_version: String::new(),
            created_at: String::new(),
            nodes: [("n1".to_string(), node)].into_iter().collect(),
        };
        dir.write_state(&state).unwrap();
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
}
