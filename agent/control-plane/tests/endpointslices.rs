//! The EndpointSlice controller against the real thing: etcd, the API server, the controller manager and the
//! fake kubelet of `controllers_lab` (pods Running and Ready, each with an IP). A Service's slice follows its
//! pods: created, made unready, deleted, relabelled; a slice edited by hand is put back; the Service's
//! deletion takes its slices. The first step is the fault: with no controller manager no slice appears.

#![allow(clippy::unwrap_used)]

mod apiserver_lab;
mod common;
// Each test file compiles the module on its own; this one uses part of it.
#[allow(dead_code)]
mod controllers_lab;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use testbed_api::objects::{EndpointSlice, Pod, Service, SERVICE_NAME_LABEL};
use testbed_control_plane::client::{paths, Client};
use testbed_control_plane::resources::Kind;

use controllers_lab::{deployment, wait_for, Cluster};

/// How soon a pod's change must show in its Service's slice (the bound for reaching every node
/// is 2 s; the slice is the first half of that way).
const FOLLOW: Duration = Duration::from_secs(2);

async fn slices(api: &Client) -> Vec<EndpointSlice> {
    let selector = format!("{SERVICE_NAME_LABEL}=web");
    api.list(&paths::collection(Kind::EndpointSlice, Some("default")), &[("labelSelector", &selector)])
        .await
        .unwrap()
        .items
}

/// The ready and not-ready addresses of the Service's slices.
async fn endpoints(api: &Client) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut ready, mut unready) = (BTreeSet::new(), BTreeSet::new());
    for e in slices(api).await.iter().flat_map(|s| s.endpoints.clone()) {
        let set = if e.conditions.ready == Some(true) { &mut ready } else { &mut unready };
        set.insert(e.addresses[0].clone());
    }
    (ready, unready)
}

async fn pods(api: &Client) -> Vec<Pod> {
    api.list(&paths::pods(Some("default")), &[]).await.unwrap().items
}

fn ips(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter().filter_map(|p| p.status.as_ref()?.pod_ip.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_slices_follow_its_pods() {
    let mut c = Cluster::without_manager().await;
    let api = c.api.clone();
    let svc: Service = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
    .unwrap();
    let svc: Service = api.create(&paths::collection(Kind::Service, Some("default")), &svc).await.unwrap();

    // The fault: nothing computes endpoints without the controller manager.
    tokio::time::sleep(FOLLOW).await;
    assert!(slices(&api).await.is_empty(), "a slice appeared with no controller running");

    c.start_manager("cp1");
    let placeholder = wait_for("an empty slice for a Service without pods", Duration::from_secs(20), || async {
        slices(&api).await.into_iter().find(|s| s.endpoints.is_empty())
    })
    .await;
    assert_eq!(placeholder.metadata.owner_references[0].uid, svc.metadata.uid.clone().unwrap());

    // Three pods, and only the Ready ones become ready endpoints, with the target port.
    c.create(&deployment("web", 3, 1, 0)).await;
    c.wait_rolled_out("web", 3, Duration::from_secs(20)).await;
    let running = pods(&api).await;
    wait_for("three ready endpoints", FOLLOW, || async { (endpoints(&api).await.0 == ips(&running)).then_some(()) })
        .await;
    let slice = &slices(&api).await[0];
    assert_eq!(slice.ports[0].port, Some(8080));
    assert!(slice.endpoints.iter().all(|e| e.node_name.is_some() && e.target_ref.is_some()));

    // A pod that turns unready stays an endpoint, not ready.
    let first = &running[0];
    let ip = first.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let unready =
        json!({"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-11-29T12:00:00Z"}]});
    api.patch_pod_status("default", &first.metadata.name, &unready).await.unwrap();
    let started = Instant::now();
    wait_for("the unready endpoint", FOLLOW, || async { endpoints(&api).await.1.contains(&ip).then_some(()) }).await;
    println!("unready -> endpoint not ready: {} ms", started.elapsed().as_millis());

    // A deleted pod leaves; its replacement comes in.
    let second = &running[1];
    let gone = second.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let started = Instant::now();
    api.delete(&paths::object(Kind::Pod, "default", &second.metadata.name)).await.unwrap();
    wait_for("the deleted pod's endpoint gone", FOLLOW, || async {
        let (ready, unready) = endpoints(&api).await;
        (!ready.contains(&gone) && !unready.contains(&gone)).then_some(())
    })
    .await;
    println!("pod deleted -> endpoint gone: {} ms", started.elapsed().as_millis());
    wait_for("the replacement's endpoint", Duration::from_secs(20), || async {
        (endpoints(&api).await.0.len() == 2 && ips(&pods(&api).await).len() == 3).then_some(())
    })
    .await;

    // A slice edited by hand is put back.
    let mut edited = slices(&api).await.remove(0);
    edited.endpoints.clear();
    api.update(&paths::object(Kind::EndpointSlice, "default", &edited.metadata.name), &edited).await.unwrap();
    wait_for("the edited slice restored", Duration::from_secs(5), || async {
        (endpoints(&api).await.0.len() == 2).then_some(())
    })
    .await;

    // The Service's deletion takes its slices.
    api.delete(&paths::object(Kind::Service, "default", "web")).await.unwrap();
    wait_for("no slices after the Service", Duration::from_secs(5), || async {
        slices(&api).await.is_empty().then_some(())
    })
    .await;
}
