//! The ReplicaSet controller on its own (no Deployment) against etcd and the API server: it adopts a
//! matching orphan, lets go of a pod relabelled out of its selector and replaces it, and reports status.

#![allow(clippy::unwrap_used)]

mod apiserver_lab;
mod common;
// Each test file compiles this module on its own, and this one uses only part of it.
#[allow(dead_code)]
mod controllers_lab;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use testbed_api::objects::{LabelSelector, ObjectMeta, Pod, ReplicaSet, ReplicaSetSpec};
use testbed_control_plane::client::paths;
use testbed_control_plane::resources::Kind;

use controllers_lab::{deployment, ready, wait_for, Cluster};

#[tokio::test]
async fn adopts_orphans_and_releases_pods_that_stop_matching() {
    let c = Cluster::start().await;
    let labels = BTreeMap::from([("app".to_string(), "solo".to_string())]);
    let template = deployment("solo", 1, 1, 0).spec.template;
    let orphan = Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: ObjectMeta {
            name: "orphan".into(),
            namespace: Some("default".into()),
            labels: labels.clone(),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    };
    c.api.create(&paths::pods(Some("default")), &orphan).await.unwrap();
    let rs = ReplicaSet {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        metadata: ObjectMeta { name: "solo".into(), namespace: Some("default".into()), ..Default::default() },
        spec: ReplicaSetSpec {
            replicas: Some(2),
            min_ready_seconds: None,
            selector: LabelSelector { match_labels: labels, ..Default::default() },
            template,
        },
        status: None,
    };
    let rs = c.api.create(&paths::collection(Kind::ReplicaSet, Some("default")), &rs).await.unwrap();
    let uid = rs.metadata.uid.clone().unwrap();
    let owned = |p: &Pod| p.metadata.owner_references.iter().any(|r| r.uid == uid && r.controller == Some(true));
    let within = Duration::from_secs(20);
    wait_for("the orphan adopted and one pod added", within, || async {
        let pods = c.pods().await;
        (pods.len() == 2 && pods.iter().all(|p| owned(p) && ready(p))).then_some(())
    })
    .await;
    assert!(c.pods().await.iter().any(|p| p.metadata.name == "orphan"), "the orphan was adopted, not replaced");

    // Relabelled out of the selector: released (no owner left) and replaced.
    c.api
        .merge_patch::<Pod>(&paths::pod("default", "orphan"), &json!({"metadata": {"labels": {"app": "other"}}}))
        .await
        .unwrap();
    wait_for("the pod released and replaced", within, || async {
        let pods = c.pods().await;
        let released = pods.iter().find(|p| p.metadata.name == "orphan")?;
        let mine = pods.iter().filter(|p| owned(p)).count();
        (released.metadata.owner_references.is_empty() && mine == 2).then_some(())
    })
    .await;
    wait_for("status: 2 replicas, 2 ready, observed", within, || async {
        let rs: ReplicaSet = c.api.get(&paths::object(Kind::ReplicaSet, "default", "solo")).await.ok()?;
        let s = rs.status?;
        (s.replicas == 2
            && s.ready_replicas == Some(2)
            && s.available_replicas == Some(2)
            && s.observed_generation == Some(1))
        .then_some(())
    })
    .await;
}
