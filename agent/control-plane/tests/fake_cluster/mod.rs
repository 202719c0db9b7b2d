//! Fake nodes and pods for the controllers' tests: Node objects as a kubelet registers them (Ready, with
//! allocatable cpu as a count and memory in Ki) but no kubelet behind them, and pods as a ReplicaSet makes
//! them (a controller owner reference).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use testbed_api::objects::{
    Condition, Container, Node, NodeStatus, ObjectMeta, OwnerReference, Pod, PodSpec, ResourceRequirements,
};
use testbed_control_plane::client::{now_rfc3339, paths, Client};

/// A Ready node with `cpus` cores and 4 GiB (as `4194304Ki`), labelled `labels`.
pub async fn add_node(api: &Client, name: &str, cpus: u32, labels: &[(&str, &str)]) -> Node {
    let node = Node {
        api_version: "v1".into(),
        kind: "Node".into(),
        metadata: ObjectMeta {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        },
        status: Some(NodeStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("KubeletReady".into()),
                last_heartbeat_time: Some(now_rfc3339()),
                last_transition_time: Some(now_rfc3339()),
                ..Default::default()
            }],
            allocatable: BTreeMap::from([("cpu".into(), cpus.to_string()), ("memory".into(), "4194304Ki".into())]),
            ..Default::default()
        }),
        ..Default::default()
    };
    api.create(&paths::nodes(), &node).await.expect("create node")
}

/// A pod of `owner` (a ReplicaSet uid, when given) requesting `cpu`, bound to `node` when given.
pub fn pod(name: &str, owner: Option<&str>, cpu: Option<&str>, node: Option<&str>) -> Pod {
    Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: ObjectMeta {
            name: name.into(),
            namespace: Some("default".into()),
            owner_references: owner
                .map(|uid| OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: "web".into(),
                    uid: uid.into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                })
                .into_iter()
                .collect(),
            ..Default::default()
        },
        spec: PodSpec {
            containers: vec![Container {
                name: "c".into(),
                command: vec!["sleep".into(), "1000".into()],
                resources: cpu.map(|q| ResourceRequirements {
                    requests: BTreeMap::from([("cpu".into(), q.into())]),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            node_name: node.map(str::to_string),
            ..Default::default()
        },
        status: None,
    }
}

/// Polls `check` every 50 ms until it answers `Some`, for at most `secs`; panics naming `what`.
pub async fn wait_for<T, F: Future<Output = Option<T>>>(what: &str, secs: u64, mut check: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
