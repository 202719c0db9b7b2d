//! The QEMU provider: one daemonized QEMU per node in the host netns, its underlay NICs tap fds opened in the
//! lab's own netns, SSH through QEMU's user-mode `hostfwd` on 127.0.0.1.
//!
//! Layout: `converge` (up's work: images, accelerator, keys, state, host network) and `node` (one node's
//! pipeline), `vm` (command line, launch, overlays, QMP), `accel` (KVM probe), `hostnet` (netns, bridges, taps,
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

use crate::lab::{InFlight, LabDir, LabState, NodeState, UpError, UpOptions, UpOutcome};
use crate::plan::Plan;
use crate::ui::Ui;

use super::{Provider, ProviderError};
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
    fn converge<'a>(
        &'a self,
        ui: &'a Ui,
        plan: Plan,
        dir: LabDir,
        previous: Option<LabState>,
        opts: &'a UpOptions,
        inflight: InFlight,
    ) -> BoxFuture<'a, Result<UpOutcome, UpError>> {
        Box::pin(converge::converge(ui, plan, dir, previous, opts, self.net.clone(), inflight))
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
}
