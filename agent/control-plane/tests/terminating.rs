//! A pod deleted gracefully, against real etcd, the API server, the controller manager and the fake kubelet
//! (which here leaves the pod terminating, as a container using its whole grace would): the pod stays in the
//! API with its deletion timestamp, its ReplicaSet replaces it at once without counting it, and its Service's
//! slice keeps it as a terminating endpoint that is not ready; once finished (grace 0) it is gone.

#![allow(clippy::unwrap_used)]

mod apiserver_lab;
mod common;
// Each test file compiles the module on its own; this one uses part of it.
#[allow(dead_code)]
mod controllers_lab;

use std::time::Duration;

use serde_json::json;
use testbed_api::objects::{EndpointConditions, EndpointSlice, Pod, ReplicaSet, Service, SERVICE_NAME_LABEL};
use testbed_control_plane::client::paths;
use testbed_control_plane::resources::Kind;

use controllers_lab::{deployment, ready, wait_for, Cluster, LINGER};

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_pod_is_replaced_at_once_and_is_a_terminating_endpoint() {
    let c = Cluster::start().await;
    let api = c.api.clone();
    let svc: Service = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}))
    .unwrap();
    api.create::<Service>(&paths::collection(Kind::Service, Some("default")), &svc).await.unwrap();
    let mut d = deployment("web", 2, 1, 0);
    d.spec.template.metadata.annotations.insert(LINGER.into(), "true".into());
    c.create(&d).await;
    c.wait_rolled_out("web", 2, Duration::from_secs(20)).await;

    let victim = c.pods().await.remove(0);
    let name = victim.metadata.name.clone();
    api.delete(&paths::pod("default", &name)).await.unwrap();

    // Still there, terminating; a replacement is Ready beside it, and the ReplicaSet counts 2.
    let (pods, rs) = wait_for("a replacement beside the terminating pod", WITHIN, || async {
        let pods = c.pods().await;
        let rs: ReplicaSet = c.replicasets().await.remove(0);
        let others_ready = pods.iter().filter(|p| p.metadata.name != name && ready(p)).count();
        let counted = rs.status.as_ref().map(|s| (s.replicas, s.ready_replicas));
        (pods.len() == 3 && others_ready == 2 && counted == Some((2, Some(2)))).then_some((pods, rs))
    })
    .await;
    let terminating: &Pod = pods.iter().find(|p| p.metadata.name == name).unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some(), "{:?}", terminating.metadata);
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    assert_eq!(rs.spec.replicas, Some(2), "the terminating pod is not counted: 2 of 2 with 3 pods");

    // Its endpoint: terminating, serving (it is still Ready), not ready.
    let ip = terminating.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let conditions = wait_for("the endpoint marked terminating", WITHIN, || async {
        let selector = format!("{SERVICE_NAME_LABEL}=web");
        let slices: Vec<EndpointSlice> = api
            .list(&paths::collection(Kind::EndpointSlice, Some("default")), &[("labelSelector", &selector)])
            .await
            .unwrap()
            .items;
        let endpoint = slices.into_iter().flat_map(|s| s.endpoints).find(|e| e.addresses[0] == ip)?;
        (endpoint.conditions.terminating == Some(true)).then_some(endpoint.conditions)
    })
    .await;
    let expected = EndpointConditions { ready: Some(false), serving: Some(true), terminating: Some(true) };
    assert_eq!(conditions, expected);

    // Finished by its kubelet (grace 0 on its uid): gone, and nothing else changes.
    let uid = terminating.metadata.uid.clone().unwrap();
    api.force_delete_pod("default", &name, &uid).await.unwrap();
    c.wait_rolled_out("web", 2, WITHIN).await;
    assert!(c.pods().await.iter().all(|p| p.metadata.name != name));
}
