//! The node lifecycle controller against a real etcd and API server, with fake Nodes whose Leases the test
//! renews: a node that stops renewing turns Ready Unknown and loses its pods after the eviction timeout,
//! the others keep theirs, and a pod bound to a node that does not exist is deleted.

#![allow(clippy::unwrap_used)]

mod apiserver_lab;
mod common;
mod fake_cluster;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testbed_api::objects::{Event, Lease, LeaseSpec, Node, ObjectMeta, Pod};
use testbed_control_plane::client::{now_rfc3339_micro, paths, Client};
use testbed_control_plane::controllers::node_lifecycle::{self, NodeLifecycleConfig};
use testbed_control_plane::controllers::Context;
use testbed_control_plane::resources::Kind;

use apiserver_lab::ApiLab;
use fake_cluster::{add_node, pod, wait_for};

/// Renews `node`'s Lease every 300 ms while `alive` holds, as its kubelet would every 10 s.
async fn renew_lease(api: Arc<Client>, node: &str, alive: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let lease = Lease {
        api_version: "coordination.k8s.io/v1".into(),
        kind: "Lease".into(),
        metadata: ObjectMeta { name: node.into(), namespace: Some("kube-node-lease".into()), ..Default::default() },
        spec: LeaseSpec {
            holder_identity: Some(node.into()),
            lease_duration_seconds: Some(40),
            renew_time: Some(now_rfc3339_micro()),
            ..Default::default()
        },
    };
    api.create(&paths::leases("kube-node-lease"), &lease).await.unwrap();
    let path = paths::lease("kube-node-lease", node);
    tokio::spawn(async move {
        while alive.load(Ordering::Relaxed) {
            let patch = serde_json::json!({"spec": {"renewTime": now_rfc3339_micro()}});
            api.merge_patch::<Lease>(&path, &patch).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

fn ready(node: &Node) -> Option<(String, Option<String>, Option<String>)> {
    let c = node.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn pod_names(api: &Client) -> Vec<String> {
    let pods = api.list::<Pod>(&paths::pods(Some("default")), &[]).await.unwrap().items;
    pods.into_iter().map(|p| p.metadata.name).collect()
}

#[tokio::test]
async fn a_silent_node_turns_unknown_then_loses_its_pods_and_orphans_are_collected() {
    let lab = ApiLab::start().await;
    let api = lab.client();
    let mut alive = Vec::new();
    for n in ["n1", "n2", "n3"] {
        add_node(&api, n, 4, &[]).await;
        let flag = Arc::new(AtomicBool::new(true));
        renew_lease(api.clone(), n, flag.clone()).await;
        alive.push(flag);
        for i in 0..2 {
            api.create(&paths::pods(Some("default")), &pod(&format!("{n}-{i}"), None, None, Some(n))).await.unwrap();
        }
    }
    api.create(&paths::pods(Some("default")), &pod("orphan", None, None, Some("ghost"))).await.unwrap();
    let running = serde_json::json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
    api.patch_pod_status("default", "n2-0", &running).await.unwrap();
    let config = NodeLifecycleConfig {
        grace_period: Duration::from_secs(2),
        eviction_timeout: Duration::from_secs(3),
        period: Duration::from_millis(200),
    };
    let ctx = Context::new(api.clone(), "test");
    let _controller = tokio::spawn(async move {
        let err = node_lifecycle::run(ctx, config).await;
        panic!("the node lifecycle controller stopped: {err:?}");
    });

    wait_for("the orphan collected", 10, || async {
        (!pod_names(&api).await.contains(&"orphan".into())).then_some(())
    })
    .await;
    let stopped = Instant::now();
    alive[1].store(false, Ordering::Relaxed);
    let condition = wait_for("n2 Unknown", 10, || async {
        let n: Node = api.get(&paths::node("n2")).await.unwrap();
        ready(&n).filter(|c| c.0 == "Unknown")
    })
    .await;
    // The grace runs from the last renewal, which may precede the stop by one renew pause (300 ms, and the
    // write's own time): 1.96 s was seen on a slow host.
    assert!(stopped.elapsed() >= Duration::from_millis(1_600), "not before the grace period: {:?}", stopped.elapsed());
    assert_eq!(
        condition,
        ("Unknown".into(), Some("NodeStatusUnknown".into()), Some("Kubelet stopped posting node status.".into()))
    );
    let pod_ready = wait_for("n2-0 marked not Ready", 5, || async {
        let p: Pod = api.get(&paths::pod("default", "n2-0")).await.ok()?;
        p.status?.conditions.into_iter().find(|c| c.type_ == "Ready").filter(|c| c.status != "True")
    })
    .await;
    assert_eq!(pod_ready.status, "False");
    let left = wait_for("n2's pods deleted", 15, || async {
        let names = pod_names(&api).await;
        (!names.iter().any(|n| n.starts_with("n2-"))).then_some(names)
    })
    .await;
    assert!(stopped.elapsed() >= Duration::from_secs(5), "not before grace + eviction: {:?}", stopped.elapsed());
    assert_eq!(left, ["n1-0", "n1-1", "n3-0", "n3-1"]);
    for n in ["n1", "n3"] {
        let node: Node = api.get(&paths::node(n)).await.unwrap();
        assert_eq!(ready(&node).map(|c| c.0), Some("True".into()), "{n}");
    }
    let events = api.list::<Event>(&paths::collection(Kind::Event, Some("default")), &[]).await.unwrap().items;
    let evictions: Vec<&str> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("NodeControllerEviction"))
        .filter_map(|e| e.message.as_deref())
        .collect();
    assert_eq!(evictions.len(), 2, "{evictions:?}");
    assert!(evictions.contains(&"Marking for deletion Pod default/n2-0 from Node n2"), "{evictions:?}");
}
