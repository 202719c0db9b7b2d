//! The topology's API objects (its `namespaces:`, `services:`, `network_policies:` and `deployments:`), applied
//! once the control plane and every node are Ready: created on the first `up`, brought to what the file says
//! on a later one. Namespaces first (everything else may live in them), then Services, so a Deployment's pods
//! have their Service's endpoints from the start, and policies before the Deployments, so that their pods
//! start under them.

use std::path::Path;

use crate::plan::Plan;
use crate::ui::Ui;

use super::up::UpError;

pub(super) async fn apply(ui: &Ui, plan: &Plan, kubeconfig: &Path) -> Result<(), UpError> {
    if plan.namespaces.is_empty()
        && plan.deployments.is_empty()
        && plan.services.is_empty()
        && plan.network_policies.is_empty()
    {
        return Ok(());
    }
    let task = ui.task("workloads");
    task.stage(format!(
        "applying {} namespace(s), {} service(s), {} network policy(ies), {} deployment(s)",
        plan.namespaces.len(),
        plan.services.len(),
        plan.network_policies.len(),
        plan.deployments.len()
    ));
    let objects: Vec<serde_json::Value> = plan
        .namespaces
        .iter()
        .chain(&plan.services)
        .chain(&plan.network_policies)
        .chain(&plan.deployments)
        .cloned()
        .collect();
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
