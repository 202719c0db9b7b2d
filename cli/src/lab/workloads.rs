//! The topology's API objects (its `namespaces:`, `services:`, `network_policies:` and `deployments:`), applied
//! once the control plane answers (Deployments once every node is Ready too): created on the first `up`, brought
//! to what the file says on a later one. Namespaces first (everything else may live in them), then Services, so a Deployment's pods
//! have their Service's endpoints from the start, and policies before the Deployments, so that their pods
//! start under them.

use std::path::Path;

use crate::plan::Plan;
use crate::ui::Ui;

use super::up::UpError;

/// Which of the topology's API objects to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Workloads {
    /// Namespaces, Services and NetworkPolicies: they need no Node, so they go in while the agents register.
    Configuration,
    /// Deployments: once every Node is Ready, so that the scheduler spreads their pods over all of them.
    Deployments,
}

/// Every object of the topology, in order: on a running lab, whose Nodes are already there.
pub(super) async fn apply_all(ui: &Ui, plan: &Plan, kubeconfig: &Path) -> Result<(), UpError> {
    apply(ui, plan, kubeconfig, Workloads::Configuration).await?;
    apply(ui, plan, kubeconfig, Workloads::Deployments).await
}

pub(super) async fn apply(ui: &Ui, plan: &Plan, kubeconfig: &Path, which: Workloads) -> Result<(), UpError> {
    let objects: Vec<serde_json::Value> = match which {
        Workloads::Configuration => {
            plan.namespaces.iter().chain(&plan.services).chain(&plan.network_policies).cloned().collect()
        }
        Workloads::Deployments => plan.deployments.clone(),
    };
    if objects.is_empty() {
        return Ok(());
    }
    let task = match which {
        Workloads::Configuration => {
            let task = ui.task("configuration");
            task.stage(format!(
                "applying {} namespace(s), {} service(s), {} network policy(ies)",
                plan.namespaces.len(),
                plan.services.len(),
                plan.network_policies.len()
            ));
            task
        }
        Workloads::Deployments => {
            let task = ui.task("deployments");
            task.stage(format!("applying {} deployment(s)", plan.deployments.len()));
            task
        }
    };
    let applied = async {
        let client = crate::cluster::client_of(kubeconfig).await?;
        crate::cluster::apply_topology_objects(&client, &objects).await
    };
    match applied.await {
        Ok(done) => {
            let lines: Vec<String> = done.iter().map(|(what, action)| format!("{what} {action}")).collect();
            task.finish(lines.join(", "));
            Ok(())
        }
        Err(e) => {
            task.fail(e.to_string());
            Err(UpError::Workloads(e))
        }
    }
}
