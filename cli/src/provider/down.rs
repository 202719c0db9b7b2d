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

/// The lab's netns: from plan.json, else derived from the lab name. Only `tb-` names are ever touched.
pub fn netns_of(dir: &LabDir) -> String {
    dir.read_plan().map(|p| p.netns).ok().filter(|n| n.starts_with("tb-")).unwrap_or_else(|| format!("tb-{}", dir.name))
}

/// A QEMU process of this lab's node, found by state or pidfile: (pid, start time).
fn node_processes(dir: &LabDir) -> Vec<(String, u32, u64)> {
    let mut found: Vec<(String, u32, u64)> = Vec::new();
    if let Ok(Some(state)) = dir.read_state() {
        for (node, ns) in &state.nodes {
            if let (Some(pid), Some(start)) = (ns.pid, ns.pid_start_time) {
                if procs::is_same_process(pid, start) {
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
            let marker = dir.node_dir(&node).display().to_string();
            let ours = procs::cmdline(pid).is_some_and(|c| c.contains(&marker) && c.contains("qemu"));
            if let (true, Some(start)) = (ours, procs::start_time(pid)) {
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

/// Removes everything of the lab; idempotent (a second call finds nothing and does nothing).
pub fn teardown(dir: &LabDir, net: &dyn HostNet) -> Result<Teardown, DownError> {
    let mut report = Teardown::default();
    let vms = node_processes(dir);
    let results: Vec<(String, u32, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = vms
            .iter()
            .map(|(node, pid, start)| {
                let qmp = dir.qmp_socket(node);
                s.spawn(move || (node.clone(), *pid, stop_vm(&qmp, *pid, *start)))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    for (node, pid, gone) in results {
        if !gone {
            return Err(DownError::Survivor { node, pid });
        }
        report.stopped.push((node, pid));
    }
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
    fn pidfile_of_a_foreign_process_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "demo2");
        std::fs::create_dir_all(dir.node_dir("n1")).unwrap();
        // Our own test process: alive, but its command line does not name the node directory.
        std::fs::write(dir.pidfile("n1"), std::process::id().to_string()).unwrap();
        assert!(node_processes(&dir).is_empty());
    }
}
