//! `up` of a running lab whose new plan adds or removes nodes and changes nothing else (`plan::node_change`).
//! The CLI never contacts the nodes that stay: they learn of a new node, and forget a removed one, from their
//! watch of the API's Node objects, which are the subnet leases (docs/architecture.md).
//!
//! First each removed node leaves: its VM is stopped (before anything else, or its agent would register its
//! Node again), its pods and its Node are deleted from the API, its taps and its node directory removed, and
//! plan.json and state.json lose it. Then the added nodes come up as in a first `up` (`converge` with only them
//! as targets): machine, agent, NodeSpec, pods, join, Ready. Removals go first because an added node may take
//! the slot and the subnet a removed one frees (`plan::keep_allocation`). When adding fails, the added nodes
//! are removed again (`roll_back_added`); the removals stay done.

use std::sync::Arc;
use std::time::Instant;

use testbed_api::objects::Pod;
use testbed_control_plane::client::{paths, Client, ClientError};

use crate::plan::{NodeChange, NodePlan, Plan};
use crate::ui::Ui;

use super::control_plane;
use super::converge::{converge, Start};
use super::dir::LabDir;
use super::keys;
use super::provider::{Provider, Targets};
use super::state::LabState;
use super::up::{self, InFlight, UpError, UpOptions, UpOutcome};

/// A step of taking a node out of the lab, with its cause's text (no `source`: `{:#}` would print it twice).
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("node {node}: deleting it from the API: {error}")]
    Api { node: String, error: ClientError },
    #[error("node {node}: removing its machine: {error}")]
    Machine { node: String, error: super::provider::ProviderError },
    #[error("node {node}: removing {}: {error}", path.display())]
    Files { node: String, path: std::path::PathBuf, error: std::io::Error },
}

/// What a resize goes from and to.
pub(super) struct Resize {
    /// The new plan, with the running lab's allocation kept.
    pub(super) plan: Plan,
    /// The plan the lab runs (plan.json).
    pub(super) recorded: Plan,
    pub(super) change: NodeChange,
    /// The lab's state.json.
    pub(super) state: LabState,
}

/// The resize of a running lab (see the module doc).
pub(super) async fn resize(
    ui: &Ui,
    Resize { plan, recorded, change, state: mut previous }: Resize,
    dir: LabDir,
    opts: &UpOptions,
    provider: Arc<dyn Provider>,
    inflight: InFlight,
) -> Result<UpOutcome, UpError> {
    let started = Instant::now();
    let (kubeconfig, port) = up::reach_api(&dir, &recorded, started + opts.timeout).await?;
    let api = api_client(&dir, &recorded, port)?;
    let mut lab = recorded;
    for name in &change.removed {
        let Some(node) = lab.node(name).cloned() else { continue };
        let task = ui.task(name);
        task.stage("leaving the lab: VM stopped, pods and Node deleted from the API, taps removed");
        match remove_node(&dir, &lab, &node, Some(&api), provider.clone()).await {
            Ok(pid) => task.finish(match pid {
                Some(pid) => format!("removed (VM pid {pid} stopped)"),
                None => "removed (its VM was not running)".into(),
            }),
            Err(e) => {
                task.fail(e.to_string());
                return Err(e);
            }
        }
        lab = without_node(lab, name);
        previous.nodes.remove(name);
        dir.write_plan(&lab)?;
        dir.write_state(&previous)?;
        keys::write_known_hosts(&dir, previous.nodes.values())?;
    }
    if change.added.is_empty() {
        dir.write_plan(&plan)?;
        super::workloads::apply_all(ui, &plan, &kubeconfig).await?;
        let mut outcome = up::already_up(&dir, &plan, &previous, started);
        (outcome.already_up, outcome.kubeconfig, outcome.api_port) = (false, Some(kubeconfig), Some(port));
        return Ok(outcome);
    }
    let targets = Targets::Only(change.added.iter().cloned().collect());
    converge(ui, plan, dir, Start { previous: Some(previous), targets }, opts, provider.as_ref(), inflight).await
}

/// Removes again the nodes a failed resize was adding (stopped VMs, taps, node directories, their Nodes in
/// the API when it answers) and takes them out of plan.json and state.json; what is left is the lab as the
/// removals made it. Says how to finish when that fails.
pub(super) async fn roll_back_added(ui: &Ui, dir: &LabDir, plan: &Plan, added: &[String], provider: Arc<dyn Provider>) {
    ui.info(format!("`up` failed; removing the nodes it was adding to lab `{}`: {}", dir.name, added.join(", ")));
    // The API is asked only when it answers at once: a failed `up` must not hang on it.
    let api = match super::forwarder::read_record(dir) {
        Some(fwd) => api_client(dir, plan, fwd.port).ok(),
        None => None,
    };
    // Only what `converge` recorded exists: a resize that failed while removing nodes made nothing new, and an
    // added node may hold the slot (so the tap names) of a removed node whose removal failed.
    let recorded: Vec<String> =
        dir.read_state().ok().flatten().map(|s| s.nodes.into_keys().collect()).unwrap_or_default();
    let mut failed = Vec::new();
    for node in plan.nodes.iter().filter(|n| added.contains(&n.name) && recorded.contains(&n.name)) {
        if let Err(e) = remove_node(dir, plan, node, api.as_ref(), provider.clone()).await {
            failed.push(e.to_string());
        }
    }
    let records = (|| -> Result<(), UpError> {
        if let Ok(recorded) = dir.read_plan() {
            dir.write_plan(&added.iter().fold(recorded, |p, name| without_node(p, name)))?;
        }
        if let Some(mut state) = dir.read_state()? {
            state.nodes.retain(|name, _| !added.contains(name));
            dir.write_state(&state)?;
            keys::write_known_hosts(dir, state.nodes.values())?;
        }
        Ok(())
    })();
    if let Err(e) = records {
        failed.push(e.to_string());
    }
    if failed.is_empty() {
        ui.info(format!("removed {}; the rest of the lab is as it was", added.join(", ")));
    } else {
        ui.info(format!(
            "removing the added nodes is incomplete: {}; run `testbed down --lab {}`",
            failed.join("; "),
            dir.name
        ));
    }
}

/// Takes `node` out of the running lab `plan` (see the module doc); returns the PID of the VM it stopped.
/// With no `api`, the API is not asked to forget the node.
async fn remove_node(
    dir: &LabDir,
    plan: &Plan,
    node: &NodePlan,
    api: Option<&Client>,
    provider: Arc<dyn Provider>,
) -> Result<Option<u32>, UpError> {
    let name = node.name.clone();
    let (d, p, n) = (dir.clone(), plan.clone(), node.clone());
    let pid = up::blocking(move || provider.remove_machine(&d, &p, &n))
        .await?
        .map_err(|error| RemoveError::Machine { node: name.clone(), error })?;
    if let Some(api) = api {
        forget_in_api(api, &name).await.map_err(|error| RemoveError::Api { node: name.clone(), error })?;
    }
    let path = dir.node_dir(&name);
    match std::fs::remove_dir_all(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(RemoveError::Files { node: name, path, error }.into()),
    }
    Ok(pid)
}

/// Deletes the pods bound to `node` and its Node: the other nodes' agents drop its routes, neighbours and
/// FDB entries when their watch sees the Node go, and the controllers replace the pods elsewhere. The pods
/// go at once (grace 0): the node's VM is stopped, so no kubelet is left to finish a graceful deletion.
async fn forget_in_api(api: &Client, node: &str) -> Result<(), ClientError> {
    let selector = format!("spec.nodeName={node}");
    let pods = api.list::<Pod>(&paths::pods(None), &[("fieldSelector", &selector)]).await?;
    for pod in pods.items {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        ignore_not_found(api.force_delete_pod(namespace, &pod.metadata.name, uid).await)?;
    }
    ignore_not_found(api.delete(&paths::node(node)).await)
}

fn ignore_not_found(result: Result<(), ClientError>) -> Result<(), ClientError> {
    match result {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

/// A client of the lab's API through the host's forwarder on `port`.
fn api_client(dir: &LabDir, plan: &Plan, port: u16) -> Result<Client, UpError> {
    let creds = control_plane::credentials(dir, plan)?;
    Client::new(&[format!("https://127.0.0.1:{port}")], &creds.ca_pem, &creds.token)
        .map_err(|error| UpError::Remove(RemoveError::Api { node: "(all)".into(), error }))
}

/// `plan` without node `name` and the topology's pods on it.
fn without_node(mut plan: Plan, name: &str) -> Plan {
    plan.nodes.retain(|n| n.name != name);
    plan.pods.retain(|p| p.node != name);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::fixtures::test_plan;

    #[test]
    fn a_node_leaves_the_plan_with_its_pods() {
        let mut plan = test_plan();
        let spec = serde_json::from_value(serde_json::json!({"name": "p", "containers": []})).unwrap();
        plan.pods = vec![crate::plan::PodPlan { node: "node2".into(), spec, images: Default::default() }];
        let left = without_node(plan, "node2");
        assert_eq!(left.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["node1"]);
        assert!(left.pods.is_empty());
    }
}
