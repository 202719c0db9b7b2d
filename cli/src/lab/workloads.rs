//! The topology's API objects (its `deployments:`), applied once the control plane and every node are
//! Ready: created on the first `up`, brought to what the file says on a later one.

use std::path::Path;

use crate::plan::Plan;
use crate::ui::Ui;

use super::up::UpError;

pub(super) async fn apply(ui: &Ui, plan: &Plan, kubeconfig: &Path) -> Result<(), UpError> {
    if plan.deployments.is_empty() {
        return Ok(());
    }
    let task = ui.task("workloads");
    task.stage(format!("applying {} deployment(s)", plan.deployments.len()));
    let applied = async {
        let client = crate::cluster::client_of(kubeconfig).await?;
        crate::cluster::apply_topology_objects(&client, &plan.deployments).await
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
