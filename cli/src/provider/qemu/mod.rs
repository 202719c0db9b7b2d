//! The QEMU provider: one daemonized QEMU per node in the host netns, its underlay NICs tap fds opened in the
//! lab's own netns, SSH through QEMU's user-mode `hostfwd` on 127.0.0.1.
//!
//! Layout: `converge` (up's lab-wide work: agent disk, images, accelerator, host keys, state, host network) and
//! `node` (one node's machine, up to a reachable sshd), `vm` (command line, launch, overlays, QMP), `accel` (KVM probe), `hostnet` (netns, bridges, taps,
//! netem behind a trait), `machines` (which VMs still run, stopping them), `procs` (PIDs safely), `doctor`.

pub mod accel;
mod converge;
pub mod doctor;
mod doctor_packages;
pub mod hostnet;
mod machines;
mod node;
pub mod procs;
pub mod vm;

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::lab::{LabDir, NodeState, PreparedLab, Provider, ProviderError, UpContext, UpError};
use crate::plan::{NodePlan, Plan};

use hostnet::HostNet;

/// QEMU VMs on this host, with the lab's network built through `net`.
pub struct QemuProvider {
    net: Arc<dyn HostNet>,
}

impl QemuProvider {
    pub fn new(net: Arc<dyn HostNet>) -> Self {
        QemuProvider { net }
    }
}

impl Provider for QemuProvider {
    fn prepare<'a>(&'a self, lab: &'a UpContext) -> BoxFuture<'a, Result<PreparedLab, UpError>> {
        Box::pin(converge::prepare(lab, self.net.clone()))
    }

    fn is_running(&self, dir: &LabDir, node: &str, state: &NodeState) -> bool {
        machines::is_running(dir, node, state)
    }

    fn host_resources_exist(&self, plan: &Plan) -> bool {
        self.net.netns_exists(&plan.netns).unwrap_or(false)
    }

    fn stop_machines(&self, dir: &LabDir) -> Result<Vec<(String, u32)>, ProviderError> {
        let vms = machines::node_processes(dir);
        machines::stop_all(&vms, |node, pid, start| machines::stop_vm(&dir.qmp_socket(node), pid, start))
            .map_err(ProviderError::new)
    }

    fn remove_host_resources(&self, dir: &LabDir) -> Result<Option<String>, ProviderError> {
        let netns = machines::netns_of(dir);
        let gone = |e| ProviderError::new(machines::StopError::Net(e));
        if !self.net.netns_exists(&netns).map_err(gone)? {
            return Ok(None);
        }
        self.net.delete_netns(&netns).map_err(gone)?;
        Ok(Some(netns))
    }

    fn remove_machine(&self, dir: &LabDir, plan: &Plan, node: &NodePlan) -> Result<Option<u32>, ProviderError> {
        let vms: Vec<_> = machines::node_processes(dir).into_iter().filter(|(n, _, _)| *n == node.name).collect();
        let stopped = machines::stop_all(&vms, |node, pid, start| machines::stop_vm(&dir.qmp_socket(node), pid, start))
            .map_err(ProviderError::new)?;
        // Its taps go only once its QEMU is gone: the tap fds are QEMU's.
        let gone = |e| ProviderError::new(machines::StopError::Net(e));
        if self.net.netns_exists(&plan.netns).map_err(gone)? {
            for nic in &node.nics {
                self.net.delete_tap(&plan.netns, &nic.tap).map_err(gone)?;
            }
        }
        Ok(stopped.first().map(|(_, pid)| *pid))
    }
}

/// The lab layer's `up` rollback and teardown with this provider: what they must leave of the lab's netns.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lab::fixtures::test_plan;
    use crate::lab::{teardown, InFlight};
    use hostnet::fake::FakeHostNet;

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
                n2.create_netns(&test_plan().netns)
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
        let t = teardown(&dir, &QemuProvider::new(net.clone())).unwrap();
        assert_eq!(t.netns_deleted.as_deref(), Some("tb-t"));
        assert!(net.namespaces.lock().unwrap().is_empty() && !dir.exists());
    }

    #[test]
    fn teardown_is_idempotent_and_only_touches_the_labs_netns() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "demo");
        dir.create().unwrap();
        let net = Arc::new(FakeHostNet::default());
        net.create_netns("tb-demo").unwrap();
        net.create_netns("tb-other").unwrap();
        let first = teardown(&dir, &QemuProvider::new(net.clone())).unwrap();
        assert_eq!(first.netns_deleted.as_deref(), Some("tb-demo"));
        assert!(first.dir_removed && !dir.exists());
        assert!(net.netns_exists("tb-other").unwrap());
        let second = teardown(&dir, &QemuProvider::new(net.clone())).unwrap();
        assert!(second.is_noop());
    }

    #[test]
    fn netns_comes_from_the_lab_name_not_the_plan() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "mine");
        dir.create().unwrap();
        let mut plan = test_plan();
        plan.netns = "tb-other".into();
        dir.write_plan(&plan).unwrap();
        let net = Arc::new(FakeHostNet::default());
        net.create_netns("tb-other").unwrap();
        let t = teardown(&dir, &QemuProvider::new(net.clone())).unwrap();
        assert_eq!(t.netns_deleted, None);
        assert!(net.netns_exists("tb-other").unwrap());
    }
}
