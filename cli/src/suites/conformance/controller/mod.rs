//! The `controller` group: the control loops on the lab's control plane keep what they were told, checked
//! through the API as a user sees them, on the lab's real kubelets. A Deployment reaches its replicas spread
//! over the nodes; scaling and deleted pods are followed; rolling updates keep within their limits, a
//! broken version stops without taking the old pods down, undo, history and pause work (the Kubernetes e2e
//! tests of the same names in test/e2e/apps/deployment.go are the model). Backend-independent: runs once,
//! in its own namespace, removed at the end.

mod rollout;
mod wait;

#[cfg(test)]
pub(in crate::suites) use rollout::NEVER_STARTS;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{Container, EnvVar, Namespace, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Client;
use testbed_api::results::CheckStatus;

pub(super) use super::super::api::api_err;
use super::super::cluster::{nodes_of, Cluster};
use super::super::runner::{CheckError, CheckOutcome, Level, Runner};

const GROUP: &str = "controller";
const NAMESPACE: &str = "testbed-conformance-controller";

/// Runs the group, or records every check as an error when the lab's API cannot be reached.
pub(super) async fn run<C: Cluster>(c: &C, r: &mut Runner) {
    let names = [
        "a Deployment reaches its replicas, available and spread over the nodes",
        "Deployment should have a working scale subresource: scaling up and down follows",
        "a deleted pod is replaced",
        "RollingUpdateDeployment stays within maxSurge and maxUnavailable and ends on the new template",
        "a rollout whose pods never become Ready stops at its progress deadline with the old pods serving",
        "rollout undo restores the previous template",
        "revisionHistoryLimit keeps that many old ReplicaSets",
        "a paused Deployment rolls out the changes made meanwhile as one rollout on resume",
    ];
    let client = match c.api().await {
        Ok(client) => client,
        Err(e) => {
            names.iter().for_each(|n| r.record(GROUP, None, n, CheckStatus::Error, &e.to_string()));
            return;
        }
    };
    if let Err(err) = super::control_plane::namespace(&client, NAMESPACE).await {
        names.iter().for_each(|n| r.record(GROUP, None, n, CheckStatus::Error, &format!("{err:?}")));
        return;
    }
    let nodes = nodes_of(c.plan()).len().max(1) as i32;
    let e = Level::Error;
    r.run(GROUP, None, names[0], e, spread(&client, 2 * nodes, nodes as usize)).await;
    r.run(GROUP, None, names[1], e, scale(&client, nodes)).await;
    r.run(GROUP, None, names[2], e, replaced(&client)).await;
    r.run(GROUP, None, names[3], e, rollout::rolling_bounds(&client)).await;
    r.run(GROUP, None, names[4], e, rollout::stuck(c, &client)).await;
    r.run(GROUP, None, names[5], e, rollout::undo(&client)).await;
    r.run(GROUP, None, names[6], e, rollout::history_limit(&client)).await;
    r.run(GROUP, None, names[7], e, rollout::pause_resume(&client)).await;
    let _ = Api::<Namespace>::all(client).delete(NAMESPACE, &DeleteParams::default()).await;
}

/// A Deployment `name` of `replicas` pods running `sleep`, labelled `app=<name>`, with a `VERSION` env var
/// that the rollout checks change; 1 s grace so deletions are quick.
pub(super) fn deployment(name: &str, replicas: i32, version: &str) -> Deployment {
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    let container = Container {
        name: "srv".into(),
        command: Some(vec!["sleep".into(), "3600".into()]),
        env: Some(vec![EnvVar { name: "VERSION".into(), value: Some(version.into()), ..Default::default() }]),
        ..Default::default()
    };
    let spec = PodSpec { containers: vec![container], termination_grace_period_seconds: Some(1), ..Default::default() };
    Deployment {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(spec),
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(1)),
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates `d` (after removing a leftover of an earlier run) and returns the Deployments API.
pub(super) async fn create(client: &Client, d: &Deployment) -> Result<Api<Deployment>, CheckError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let name = d.metadata.name.clone().unwrap_or_default();
    let _ = api.delete(&name, &DeleteParams::default()).await;
    wait::until("the leftover Deployment is gone", wait::SHORT, || async {
        Ok(api.get_opt(&name).await.map_err(api_err("get deployment"))?.is_none().then_some(()))
    })
    .await?;
    api.create(&PostParams::default(), d).await.map_err(api_err("create deployment"))?;
    Ok(api)
}

/// The live pods of Deployment `name` (by its label).
pub(super) async fn pods(client: &Client, name: &str) -> Result<Vec<Pod>, CheckError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let list = api.list(&ListParams::default().labels(&format!("app={name}"))).await.map_err(api_err("list pods"))?;
    Ok(list.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect())
}

async fn spread(client: &Client, replicas: i32, nodes: usize) -> CheckOutcome {
    let api = create(client, &deployment("spread", replicas, "1")).await?;
    let took = wait::rolled_out(&api, "spread", replicas).await?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in pods(client, "spread").await? {
        *per_node.entry(p.spec.and_then(|s| s.node_name).unwrap_or_default()).or_default() += 1;
    }
    let (min, max) = (per_node.values().min().copied().unwrap_or(0), per_node.values().max().copied().unwrap_or(0));
    let _ = api.delete("spread", &DeleteParams::default()).await;
    // Every node gets some (as many as there are pods, at most) and no node two more than another.
    if per_node.len() < nodes.min(replicas as usize) || max - min > 1 {
        return Err(CheckError::Fail(format!("{replicas} replicas are not spread over the nodes: {per_node:?}")));
    }
    Ok(format!("{replicas} available after {took:.1} s, per node {per_node:?}"))
}

async fn scale(client: &Client, nodes: i32) -> CheckOutcome {
    let api = create(client, &deployment("scale", nodes, "1")).await?;
    wait::rolled_out(&api, "scale", nodes).await?;
    let mut seen = Vec::new();
    for replicas in [nodes + 2, 1] {
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        api.patch_scale("scale", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err("patch scale"))?;
        let took = wait::rolled_out(&api, "scale", replicas).await?;
        let count = wait::until("the pod count matches", wait::SHORT, || async {
            let n = pods(client, "scale").await?.len() as i32;
            Ok((n == replicas).then_some(n))
        })
        .await?;
        seen.push(format!("{count} in {took:.1} s"));
    }
    let _ = api.delete("scale", &DeleteParams::default()).await;
    Ok(format!("scaled to {}", seen.join(", then ")))
}

async fn replaced(client: &Client) -> CheckOutcome {
    let api = create(client, &deployment("replace", 2, "1")).await?;
    wait::rolled_out(&api, "replace", 2).await?;
    let before = pods(client, "replace").await?;
    let victim = before.first().and_then(|p| p.metadata.name.clone()).unwrap_or_default();
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    pod_api.delete(&victim, &DeleteParams::default()).await.map_err(api_err("delete pod"))?;
    let started = std::time::Instant::now();
    let fresh = wait::until("a new pod replaces the deleted one", wait::LONG, || async {
        let now = pods(client, "replace").await?;
        let ready = now.iter().filter(|p| wait::is_ready(p)).count();
        let new = now.iter().find(|p| !before.iter().any(|b| b.metadata.name == p.metadata.name));
        Ok((ready == 2 && now.len() == 2).then(|| new.and_then(|p| p.metadata.name.clone())).flatten())
    })
    .await?;
    let _ = api.delete("replace", &DeleteParams::default()).await;
    Ok(format!("{victim} deleted; {fresh} Ready in its place after {:.1} s", started.elapsed().as_secs_f64()))
}
