//! The node half of the agent: the applied NodeSpec, network convergence (PUT /v1/node), node status and the
//! periodic reconcile that repairs network drift and brings lost pods back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use testbed_api::{ApplyResponse, NodeSpec, NodeStatus, ObservedNetwork};

use super::store::write_json_atomic;
use super::{lock, Agent, AgentError, Result, AGENT_VERSION};
use crate::net::NetError;

pub const RECONCILE_PERIOD: Duration = Duration::from_secs(3);

/// The node's desired state and how far the kernel is from it.
#[derive(Default)]
pub(super) struct NodeState {
    pub(super) spec: Option<NodeSpec>,
    pub(super) converged: bool,
    pub(super) last_error: Option<String>,
    pub(super) drift_repairs: u64,
    pub(super) node_puts: u64,
}

impl Agent {
    /// Counts one `PUT /v1/node` (NodeStatus.node_puts), whatever its outcome.
    pub fn count_node_put(&self) {
        lock(&self.node).node_puts += 1;
    }

    /// PUT /v1/node. A spec that fails validation is refused (400) before anything is touched. A valid spec
    /// becomes the node's desired state even when converging the kernel to it fails part-way (say the
    /// underlay interface is not there yet): it is stored (memory and node.json), the error is returned and
    /// kept in NodeStatus.last_error with converged = false, and the periodic reconcile keeps converging
    /// toward it. No rollback: the network worker already works from the new spec after a partial failure,
    /// and keeping one desired spec on both sides is what stops the two from flip-flopping.
    pub async fn apply_node(&self, spec: NodeSpec) -> Result<ApplyResponse> {
        testbed_api::validate::validate_node(&spec).map_err(AgentError::Invalid)?;
        let _guard = self.apply_lock.lock().await;
        let mut result = self.net.apply(&spec).await;
        if let Err(e @ NetError::InvalidInput(_)) = result {
            // Refused as a whole: the spec is not taken on.
            return Err(e.into());
        }
        // Existing pods follow a change of the pod MTU (a backend switch) now, not at the next reconcile:
        // the caller's next packets may already be full-size. A pod that cannot be repaired now (its infra
        // just died) is the reconcile loop's to retry; it does not fail the node's apply.
        if let Ok(changes) = &mut result {
            let attached = self.attached_pods();
            if !changes.is_empty() && !attached.is_empty() {
                match self.net.repair_pods(&attached).await {
                    Ok(repairs) => changes.extend(repairs),
                    Err(e) => tracing::warn!(error = %e, "pods not yet repaired after the apply"),
                }
            }
        }
        let stored = write_json_atomic(&self.node_file(), &spec);
        let mut node = lock(&self.node);
        node.spec = Some(spec);
        match result {
            Ok(changes) => {
                node.converged = true;
                node.last_error = None;
                stored?;
                Ok(ApplyResponse { changes })
            }
            Err(e) => {
                node.converged = false;
                node.last_error = Some(format!("apply: {e}"));
                Err(AgentError::Failed(format!(
                    "the NodeSpec is stored but the node did not converge to it ({e}); the agent keeps retrying \
                     every {} s (see last_error in GET /v1/node)",
                    RECONCILE_PERIOD.as_secs()
                )))
            }
        }
    }

    /// Pods with a network sandbox of their own that is alive: (name, infra PID).
    fn attached_pods(&self) -> Vec<(String, u32)> {
        lock(&self.pods)
            .values()
            .filter(|p| !p.spec.host_network && !p.deleting.load(Ordering::Relaxed))
            .filter_map(|p| {
                let rec = lock(&p.record);
                rec.infra_pid.filter(|_| !rec.sandbox_lost).map(|pid| (p.spec.name.clone(), pid))
            })
            .collect()
    }

    pub async fn node_status(&self) -> NodeStatus {
        let network = self.net.observe().await;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let kernel_cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default().trim().to_string();
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        let pods = self.list_pods();
        let node = lock(&self.node);
        let (network, last_error) = match network {
            Ok(n) => (n, node.last_error.clone()),
            Err(e) => (
                ObservedNetwork { links: vec![], routes: vec![], neighbours: vec![], fdb: vec![] },
                node.last_error.clone().or(Some(format!("observe: {e}"))),
            ),
        };
        NodeStatus {
            node_name: node.spec.as_ref().map_or(hostname, |s| s.node_name.clone()),
            agent_version: AGENT_VERSION.into(),
            kernel,
            kernel_cmdline,
            cgroup_version: self.cgroups.version().into(),
            spec: node.spec.clone(),
            converged: node.converged,
            last_error,
            drift_repairs: node.drift_repairs,
            node_puts: node.node_puts,
            network,
            pods,
        }
    }

    /// One periodic pass: converge the network to the last spec again and re-plug pods whose veth vanished.
    /// Each pass that had to change something counts as one drift repair.
    pub async fn reconcile_once(&self) {
        let spec = lock(&self.node).spec.clone();
        let Some(spec) = spec else { return };
        let _guard = self.apply_lock.lock().await;
        let mut repairs = Vec::new();
        let mut error = None;
        match self.net.apply(&spec).await {
            Ok(changes) => repairs.extend(changes),
            Err(e) => error = Some(format!("apply: {e}")),
        }
        let attached = self.attached_pods();
        if !attached.is_empty() {
            match self.net.repair_pods(&attached).await {
                Ok(changes) => repairs.extend(changes),
                Err(e) => error = Some(format!("repair pods: {e}")),
            }
        }
        let mut node = lock(&self.node);
        if !repairs.is_empty() {
            node.drift_repairs += 1;
            tracing::warn!(changes = ?repairs, "repaired drift");
        }
        node.converged = error.is_none();
        node.last_error = error;
    }

    pub async fn reconcile_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RECONCILE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.finish_teardowns().await;
            self.recreate_lost_sandboxes().await;
            self.retry_pending_sandboxes().await;
            self.reconcile_once().await;
        }
    }
}
