//! The controller manager against the real thing: etcd, the API server, and a fake kubelet (binds pods
//! round-robin to three nodes and reports them Ready). Each test rolls Deployments and reads back what
//! Kubernetes would show: pods, ReplicaSets, status, conditions, revisions and Events.

#![allow(clippy::unwrap_used)]

mod apiserver_lab;
mod common;
mod controllers_lab;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use testbed_api::objects::{Event, Lease, Pod, ReplicaSet};
use testbed_control_plane::client::{list_watch, paths, Change, Client, WatchEvent};
use testbed_control_plane::resources::Kind;

use controllers_lab::{deployment, image, image_patch, ready, wait_for, Cluster, BROKEN};

const LONG: Duration = Duration::from_secs(20);

fn revision(rs: &ReplicaSet) -> &str {
    rs.metadata.annotations.get("deployment.kubernetes.io/revision").map_or("", String::as_str)
}

fn size(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1)
}

async fn events(api: &Client) -> Vec<Event> {
    api.list(&paths::collection(Kind::Event, Some("default")), &[]).await.unwrap().items
}

#[tokio::test]
async fn deployment_scales_and_replaces_pods() {
    let c = Cluster::start().await;
    c.create(&deployment("web", 5, 1, 1)).await;
    c.wait_rolled_out("web", 5, LONG).await;
    let rss = c.replicasets().await;
    assert_eq!(rss.len(), 1);
    let rs = &rss[0];
    let hash = &rs.metadata.labels["pod-template-hash"];
    assert_eq!(rs.metadata.name, format!("web-{hash}"));
    assert_eq!(rs.spec.selector.match_labels.get("pod-template-hash"), Some(hash));
    assert_eq!(revision(rs), "1");
    for pod in c.pods().await {
        let owner = &pod.metadata.owner_references[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller, owner.uid.as_str()),
            ("ReplicaSet", Some(true), rs.metadata.uid.as_deref().unwrap())
        );
        assert_eq!(pod.metadata.labels.get("pod-template-hash"), Some(hash));
        let suffix = pod.metadata.name.strip_prefix(&format!("{}-", rs.metadata.name)).unwrap();
        assert_eq!(suffix.len(), 5, "{}", pod.metadata.name);
    }

    // A deleted pod is replaced.
    let victim = c.pods().await[0].metadata.name.clone();
    c.api.delete(&paths::pod("default", &victim)).await.unwrap();
    wait_for("the deleted pod replaced", LONG, || async {
        let pods = c.pods().await;
        (pods.len() == 5 && pods.iter().all(|p| p.metadata.name != victim && ready(p))).then_some(())
    })
    .await;

    c.patch("web", json!({"spec": {"replicas": 8}})).await;
    c.wait_rolled_out("web", 8, LONG).await;
    c.patch("web", json!({"spec": {"replicas": 2}})).await;
    let d = c.wait_rolled_out("web", 2, LONG).await;
    let available = d.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Available").unwrap();
    assert_eq!((available.status.as_str(), available.reason.as_deref()), ("True", Some("MinimumReplicasAvailable")));
    assert_eq!(c.replicasets().await.len(), 1, "scaling makes no new ReplicaSet");

    let messages: Vec<String> = events(&c.api).await.into_iter().filter_map(|e| e.message).collect();
    let name = &rs.metadata.name;
    for expected in [
        format!("Scaled up replica set {name} from 0 to 5"),
        format!("Scaled up replica set {name} from 5 to 8"),
        format!("Scaled down replica set {name} from 8 to 2"),
    ] {
        assert!(messages.contains(&expected), "no event {expected:?} in {messages:?}");
    }
    assert!(messages.iter().any(|m| m.starts_with(&format!("Created pod: {name}-"))), "{messages:?}");
    assert!(messages.iter().any(|m| m.starts_with(&format!("Deleted pod: {name}-"))), "{messages:?}");
}

/// Pods and Ready pods of `default` as a pod watch shows them, sampled at every event.
#[derive(Default)]
struct Sampler {
    pods: HashMap<String, bool>,
    max_pods: usize,
    min_ready: usize,
}

fn sample(api: Arc<Client>) -> Arc<Mutex<Sampler>> {
    let s = Arc::new(Mutex::new(Sampler { min_ready: usize::MAX, ..Default::default() }));
    let out = s.clone();
    tokio::spawn(async move {
        let mut changes = list_watch::<Pod>(api, &paths::pods(Some("default")), &[]);
        while let Some(Ok(change)) = changes.next().await {
            let mut s = s.lock().unwrap();
            match change {
                Change::Listed(pods) => s.pods = pods.iter().map(|p| (p.metadata.name.clone(), ready(p))).collect(),
                Change::Event(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                    s.pods.insert(p.metadata.name.clone(), ready(&p));
                }
                Change::Event(WatchEvent::Deleted(p)) => {
                    s.pods.remove(&p.metadata.name);
                }
            }
            let ready = s.pods.values().filter(|r| **r).count();
            s.max_pods = s.max_pods.max(s.pods.len());
            s.min_ready = s.min_ready.min(ready);
        }
    });
    out
}

/// Rolls `replicas` pods from v1 to v2 with the given limits; answers (seconds, max pods, min Ready).
async fn rolling_update(replicas: i32, surge: i32, unavailable: i32) -> (f64, usize, usize) {
    let c = Cluster::start().await;
    let d = c.create(&deployment("web", replicas, surge, unavailable)).await;
    c.wait_rolled_out("web", replicas, LONG * 2).await;
    let old = c.replicasets().await.remove(0);
    let sampler = sample(c.api.clone());
    wait_for("the sampler's first list", LONG, || async {
        (sampler.lock().unwrap().pods.len() == replicas as usize).then_some(())
    })
    .await;
    let started = Instant::now();
    c.patch("web", image_patch(&d, "v2")).await;
    c.wait_rolled_out("web", replicas, LONG * 3).await;
    let took = started.elapsed().as_secs_f64();
    let pods = c.pods().await;
    assert!(pods.iter().all(|p| image(p) == "v2" && ready(p)), "all pods on the new template");
    let rss = c.replicasets().await;
    let old_now = rss.iter().find(|rs| rs.metadata.name == old.metadata.name).unwrap();
    assert_eq!(size(old_now), 0, "the old ReplicaSet is scaled to 0");
    let new = rss.iter().find(|rs| rs.metadata.name != old.metadata.name).unwrap();
    assert_eq!((size(new), revision(new)), (replicas, "2"));
    let s = sampler.lock().unwrap();
    (took, s.max_pods, s.min_ready)
}

#[tokio::test]
async fn rolling_update_stays_within_surge_and_unavailability() {
    let (_, max_pods, min_ready) = rolling_update(10, 2, 1).await;
    assert!(max_pods <= 12, "{max_pods} pods at once: maxSurge 2 allows 12");
    assert!(min_ready >= 9, "{min_ready} Ready at once: maxUnavailable 1 allows 9");
}

/// The benchmark: `cargo test -p testbed-control-plane --test controllers -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn bench_rolling_update_20() {
    let (took, max_pods, min_ready) = rolling_update(20, 5, 5).await;
    println!("rolling update of 20 replicas (maxSurge 5, maxUnavailable 5): {took:.2} s, max pods {max_pods} (bound 25), min Ready {min_ready} (bound 15)");
    assert!(max_pods <= 25 && min_ready >= 15);
}

#[tokio::test]
async fn a_version_that_never_becomes_ready_stops_at_the_deadline() {
    let c = Cluster::start().await;
    let mut d = deployment("web", 3, 1, 0);
    d.spec.progress_deadline_seconds = Some(3);
    let d = c.create(&d).await;
    c.wait_rolled_out("web", 3, LONG).await;
    c.patch("web", image_patch(&d, BROKEN)).await;
    let d = wait_for("Progressing=False", LONG, || async {
        let d = c.deployment("web").await;
        let cond = d.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Progressing")?.clone();
        (cond.status == "False").then_some((d, cond))
    })
    .await;
    assert_eq!(d.1.reason.as_deref(), Some("ProgressDeadlineExceeded"));
    let pods = c.pods().await;
    let serving = pods.iter().filter(|p| image(p) == "v1" && ready(p)).count();
    assert_eq!(serving, 3, "the old pods still serve");
    assert_eq!(pods.iter().filter(|p| image(p) == BROKEN).count(), 1, "maxSurge 1, maxUnavailable 0");
}

#[tokio::test]
async fn undo_makes_the_old_replica_set_current_with_a_new_revision() {
    let c = Cluster::start().await;
    let d = c.create(&deployment("web", 2, 1, 0)).await;
    c.wait_rolled_out("web", 2, LONG).await;
    let first = c.replicasets().await.remove(0);
    c.patch("web", image_patch(&d, "v2")).await;
    c.wait_rolled_out("web", 2, LONG).await;
    // kubectl rollout undo: the old ReplicaSet's template (without its hash label) becomes the spec's.
    let mut template = first.spec.template.clone();
    template.metadata.labels.remove("pod-template-hash");
    c.patch("web", json!({"spec": {"template": template}})).await;
    let d = c.wait_rolled_out("web", 2, LONG).await;
    assert!(c.pods().await.iter().all(|p| image(p) == "v1"));
    let rss = c.replicasets().await;
    assert_eq!(rss.len(), 2, "no third ReplicaSet");
    let restored = rss.iter().find(|rs| rs.metadata.name == first.metadata.name).unwrap();
    assert_eq!((size(restored), revision(restored)), (2, "3"));
    assert_eq!(d.metadata.annotations["deployment.kubernetes.io/revision"], "3");
}

#[tokio::test]
async fn revision_history_limit_keeps_two_old_replica_sets() {
    let c = Cluster::start().await;
    let mut d = deployment("web", 1, 1, 0);
    d.spec.revision_history_limit = Some(2);
    let d = c.create(&d).await;
    c.wait_rolled_out("web", 1, LONG).await;
    for v in ["v2", "v3", "v4", "v5"] {
        c.patch("web", image_patch(&d, v)).await;
        c.wait_rolled_out("web", 1, LONG).await;
    }
    let rss = wait_for("history trimmed to 2", LONG, || async {
        let rss = c.replicasets().await;
        (rss.len() == 3).then_some(rss)
    })
    .await;
    let mut revisions: Vec<&str> = rss.iter().map(revision).collect();
    revisions.sort();
    assert_eq!(revisions, ["3", "4", "5"], "the oldest go first");
}

#[tokio::test]
async fn paused_changes_become_one_rollout_on_resume() {
    let c = Cluster::start().await;
    let d = c.create(&deployment("web", 2, 1, 0)).await;
    c.wait_rolled_out("web", 2, LONG).await;
    c.patch("web", json!({"spec": {"paused": true}})).await;
    c.patch("web", image_patch(&d, "v2")).await;
    c.patch("web", image_patch(&d, "v3")).await;
    // Scaling still applies while paused; no rollout does.
    c.patch("web", json!({"spec": {"replicas": 3}})).await;
    wait_for("scaled while paused", LONG, || async { (c.pods().await.len() == 3).then_some(()) }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(c.replicasets().await.len(), 1, "no rollout while paused");
    assert!(c.pods().await.iter().all(|p| image(p) == "v1"));
    let cond =
        c.deployment("web").await.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Progressing").unwrap();
    assert_eq!(cond.reason.as_deref(), Some("DeploymentPaused"));
    c.patch("web", json!({"spec": {"paused": false}})).await;
    c.wait_rolled_out("web", 3, LONG).await;
    assert!(c.pods().await.iter().all(|p| image(p) == "v3"));
    assert_eq!(c.replicasets().await.len(), 2, "one new ReplicaSet for both changes");
}

#[tokio::test]
async fn garbage_collector_deletes_dependents_of_deleted_owners() {
    let c = Cluster::start().await;
    c.create(&deployment("web", 2, 1, 0)).await;
    c.wait_rolled_out("web", 2, LONG).await;
    // A pod whose owner never existed (or is long gone).
    let mut orphan = c.pods().await.remove(0);
    orphan.metadata = testbed_api::objects::ObjectMeta {
        name: "orphan".into(),
        namespace: Some("default".into()),
        owner_references: vec![testbed_api::objects::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "gone".into(),
            uid: "5bd1c2a0-0000-4000-8000-000000000000".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }],
        ..Default::default()
    };
    orphan.status = None;
    c.api.create(&paths::pods(Some("default")), &orphan).await.unwrap();
    // Deleting the Deployment takes its ReplicaSet, then the pods.
    c.api.delete(&paths::object(Kind::Deployment, "default", "web")).await.unwrap();
    wait_for("dependents collected", LONG, || async {
        (c.pods().await.is_empty() && c.replicasets().await.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn only_the_leader_acts_and_a_standby_takes_over() {
    let mut c = Cluster::without_manager().await;
    c.start_manager("cp1");
    let lease_path = paths::lease("kube-system", "testbed-controller-manager");
    wait_for("cp1 leads", LONG, || async {
        let lease: Lease = c.api.get(&lease_path).await.ok()?;
        (lease.spec.holder_identity.as_deref() == Some("cp1")).then_some(())
    })
    .await;
    c.start_manager("cp2");
    c.create(&deployment("web", 3, 1, 0)).await;
    c.wait_rolled_out("web", 3, LONG).await;
    let instances = |events: Vec<Event>| events.into_iter().filter_map(|e| e.reporting_instance).collect::<Vec<_>>();
    let acted = instances(events(&c.api).await);
    assert!(!acted.is_empty() && acted.iter().all(|i| i == "cp1"), "only the leader acts: {acted:?}");

    let stopped = Instant::now();
    c.stop_manager("cp1").await;
    c.patch("web", json!({"spec": {"replicas": 4}})).await;
    c.wait_rolled_out("web", 4, Duration::from_secs(15)).await;
    let took = stopped.elapsed();
    let lease: Lease = c.api.get(&lease_path).await.unwrap();
    assert_eq!(lease.spec.holder_identity.as_deref(), Some("cp2"));
    assert_eq!(lease.spec.lease_transitions, Some(1));
    assert!(instances(events(&c.api).await).contains(&"cp2".to_string()), "the standby acts once leading");
    assert!(took < Duration::from_secs(15), "handed over in {took:?}");
}
