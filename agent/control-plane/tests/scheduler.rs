//! The scheduler against the real thing: a real etcd on loopback, the API server over it, the scheduler
//! as a client of it, and fake Nodes (objects only, no kubelet): spreading, unschedulable pods and their
//! condition and events, a pod placed once a node it fits appears, the binding subresource's rules, and
//! the scheduler's throughput (ignored; run explicitly).

#![allow(clippy::unwrap_used)]

mod apiserver_lab;
mod common;
mod fake_cluster;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use testbed_api::objects::{Event, Pod};
use testbed_control_plane::client::{list_watch, paths, Change, Client, WatchEvent};
use testbed_control_plane::controllers::scheduler::{self, SchedulerConfig};
use testbed_control_plane::controllers::Context;
use testbed_control_plane::resources::Kind;

use apiserver_lab::ApiLab;
use fake_cluster::{add_node, pod, wait_for};

fn start_scheduler(api: std::sync::Arc<Client>) -> tokio::task::JoinHandle<()> {
    start_scheduler_with(api, SchedulerConfig::default())
}

fn start_scheduler_with(api: std::sync::Arc<Client>, config: SchedulerConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let err = scheduler::run(Context::new(api, "test"), config).await;
        panic!("the scheduler stopped: {err:?}");
    })
}

async fn pods(api: &Client) -> Vec<Pod> {
    api.list::<Pod>(&paths::pods(Some("default")), &[]).await.unwrap().items
}

async fn events(api: &Client, pod: &str, reason: &str) -> Vec<Event> {
    let all = api.list::<Event>(&paths::collection(Kind::Event, Some("default")), &[]).await.unwrap().items;
    all.into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason))
        .collect()
}

/// The PodScheduled condition: (status, reason, message).
fn scheduled(p: &Pod) -> Option<(String, Option<String>, Option<String>)> {
    let c = p.status.as_ref()?.conditions.iter().find(|c| c.type_ == "PodScheduled")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn thirty_pods_of_one_replica_set_spread_ten_per_node() {
    let lab = ApiLab::start().await;
    let api = lab.client();
    for n in ["n1", "n2", "n3"] {
        add_node(&api, n, 4, &[]).await;
    }
    let _scheduler = start_scheduler(api.clone());
    for i in 0..30 {
        api.create(&paths::pods(Some("default")), &pod(&format!("web-{i}"), Some("rs-uid"), None, None)).await.unwrap();
    }
    let bound = wait_for("30 pods bound", 20, || async {
        let all = pods(&api).await;
        all.iter().all(|p| p.spec.node_name.is_some()).then_some(all)
    })
    .await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &bound {
        *per_node.entry(p.spec.node_name.clone().unwrap()).or_default() += 1;
        assert_eq!(scheduled(p).map(|c| c.0), Some("True".into()), "{}", p.metadata.name);
    }
    assert_eq!(per_node, BTreeMap::from([("n1".into(), 10), ("n2".into(), 10), ("n3".into(), 10)]));
    let node = bound.iter().find(|p| p.metadata.name == "web-7").and_then(|p| p.spec.node_name.clone()).unwrap();
    let ev =
        wait_for("the Scheduled event", 10, || async { events(&api, "web-7", "Scheduled").await.into_iter().next() })
            .await;
    assert_eq!(ev.message.as_deref(), Some(format!("Successfully assigned default/web-7 to {node}").as_str()));
}

#[tokio::test]
async fn a_burst_does_not_overcommit_a_node() {
    let lab = ApiLab::start().await;
    let api = lab.client();
    for n in ["n1", "n2", "n3"] {
        add_node(&api, n, 2, &[]).await;
    }
    for i in 0..7 {
        api.create(&paths::pods(Some("default")), &pod(&format!("one-cpu-{i}"), Some("rs"), Some("1"), None))
            .await
            .unwrap();
    }
    // All seven are pending when the scheduler starts: its bindings run concurrently.
    let _scheduler = start_scheduler(api.clone());
    let all = wait_for("six bound and one unschedulable", 15, || async {
        let all = pods(&api).await;
        let unschedulable = all.iter().filter(|p| scheduled(p).is_some_and(|c| c.0 == "False")).count();
        let bound = all.iter().filter(|p| p.spec.node_name.is_some()).count();
        (bound + unschedulable == 7).then_some(all)
    })
    .await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in all.iter().filter_map(|p| p.spec.node_name.clone()) {
        *per_node.entry(p).or_default() += 1;
    }
    assert_eq!(per_node, BTreeMap::from([("n1".into(), 2), ("n2".into(), 2), ("n3".into(), 2)]));
    let left = all.iter().find(|p| p.spec.node_name.is_none()).unwrap();
    assert_eq!(scheduled(left).and_then(|c| c.2).as_deref(), Some("0/3 nodes are available: 3 Insufficient cpu."));
}

#[tokio::test]
async fn an_unschedulable_pod_says_why_and_is_placed_once_a_node_fits() {
    let lab = ApiLab::start().await;
    let api = lab.client();
    add_node(&api, "n1", 2, &[("disk", "ssd")]).await;
    add_node(&api, "n2", 8, &[]).await;
    add_node(&api, "n3", 8, &[]).await;
    let _scheduler = start_scheduler(api.clone());
    let mut picky = pod("picky", None, Some("3"), None);
    picky.spec.node_selector = BTreeMap::from([("disk".into(), "ssd".into())]);
    api.create(&paths::pods(Some("default")), &picky).await.unwrap();
    api.create(&paths::pods(Some("default")), &pod("hungry", None, Some("9"), None)).await.unwrap();
    let mut other = pod("other", None, None, None);
    other.spec.scheduler_name = Some("my-scheduler".into());
    api.create(&paths::pods(Some("default")), &other).await.unwrap();

    let expected = "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector.";
    let condition = wait_for("picky marked unschedulable", 10, || async {
        let p: Pod = api.get(&paths::pod("default", "picky")).await.unwrap();
        scheduled(&p).filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(condition, ("False".into(), Some("Unschedulable".into()), Some(expected.into())));
    let ev = wait_for("FailedScheduling", 10, || async {
        events(&api, "picky", "FailedScheduling").await.into_iter().next()
    })
    .await;
    assert_eq!((ev.type_.as_deref(), ev.message.as_deref()), (Some("Warning"), Some(expected)));
    let hungry = wait_for("hungry marked unschedulable", 10, || async {
        let p: Pod = api.get(&paths::pod("default", "hungry")).await.unwrap();
        scheduled(&p).and_then(|c| c.2)
    })
    .await;
    assert_eq!(hungry, "0/3 nodes are available: 3 Insufficient cpu.");

    // A node that fits appears: picky goes there.
    add_node(&api, "n4", 4, &[("disk", "ssd")]).await;
    let p = wait_for("picky bound", 15, || async {
        let p: Pod = api.get(&paths::pod("default", "picky")).await.unwrap();
        p.spec.node_name.is_some().then_some(p)
    })
    .await;
    assert_eq!(p.spec.node_name.as_deref(), Some("n4"));
    assert_eq!(scheduled(&p).map(|c| c.0), Some("True".into()));
    // Another scheduler's pod is left alone.
    let other: Pod = api.get(&paths::pod("default", "other")).await.unwrap();
    assert_eq!((other.spec.node_name.as_deref(), scheduled(&other)), (None, None));
}

#[tokio::test]
async fn a_binding_sets_the_node_once_and_updates_cannot_move_a_pod() {
    let lab = ApiLab::start().await;
    let api = lab.client();
    api.create(&paths::pods(Some("default")), &pod("web", None, None, None)).await.unwrap();
    api.bind("default", "web", "n1").await.unwrap();
    let p: Pod = api.get(&paths::pod("default", "web")).await.unwrap();
    assert_eq!((p.spec.node_name.as_deref(), scheduled(&p).map(|c| c.0)), (Some("n1"), Some("True".into())));

    let again = api.bind("default", "web", "n2").await.unwrap_err();
    assert!(again.is_conflict(), "{again}");
    assert!(again.to_string().contains("pod web is already assigned to node \"n1\""), "{again}");
    let moved = api.merge_patch::<Pod>(&paths::pod("default", "web"), &json!({"spec": {"nodeName": "n2"}})).await;
    let err = moved.unwrap_err();
    assert_eq!(err.code(), Some(422), "{err}");
    assert!(err.to_string().contains("spec: Forbidden: pod updates may not change fields"), "{err}");
    let mut unbound = pod("late", None, None, None);
    api.create(&paths::pods(Some("default")), &unbound).await.unwrap();
    unbound.spec.node_name = Some("n1".into());
    let err = api.update(&paths::pod("default", "late"), &unbound).await.unwrap_err();
    assert_eq!(err.code(), Some(422), "an update does not bind either: {err}");
    // Metadata still changes; the node stays.
    let labelled =
        api.merge_patch::<Pod>(&paths::pod("default", "web"), &json!({"metadata": {"labels": {"a": "b"}}})).await;
    assert_eq!(labelled.unwrap().spec.node_name.as_deref(), Some("n1"));
    assert!(api.bind("default", "missing", "n1").await.unwrap_err().is_not_found());
}

/// `cargo test --release -p testbed-control-plane --test scheduler -- --ignored --nocapture throughput`:
/// 1,000 pending pods (created before the scheduler starts) on 3 fake nodes, timed from the scheduler's
/// start to the watch showing the last one bound. `TESTBED_SCHED_PARALLEL` sets the bindings in flight (64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly"]
async fn throughput() {
    const PODS: usize = 1000;
    let lab = ApiLab::start().await;
    let api = lab.client();
    for n in ["n1", "n2", "n3"] {
        add_node(&api, n, 64, &[]).await;
    }
    let created = Instant::now();
    let creates =
        futures::stream::iter(0..PODS)
            .map(|i| {
                let api = api.clone();
                async move {
                    api.create(&paths::pods(Some("default")), &pod(&format!("p-{i}"), Some("rs"), None, None)).await
                }
            })
            .buffer_unordered(16);
    creates.for_each(|r| async move { r.map(drop).unwrap() }).await;
    println!("{PODS} pods created in {:?}", created.elapsed());
    let mut watch = list_watch::<Pod>(api.clone(), &paths::pods(None), &[]);
    assert!(matches!(watch.next().await, Some(Ok(Change::Listed(_)))));
    let mut config = SchedulerConfig::default();
    if let Some(n) = std::env::var("TESTBED_SCHED_PARALLEL").ok().and_then(|v| v.parse().ok()) {
        config.parallel_binds = n;
    }
    let parallel = config.parallel_binds;
    let start = Instant::now();
    let scheduler = start_scheduler_with(api.clone(), config);
    let mut bound = HashSet::new();
    while bound.len() < PODS {
        let change = tokio::time::timeout(Duration::from_secs(60), watch.next()).await.unwrap().unwrap().unwrap();
        if let Change::Event(WatchEvent::Modified(p)) = change {
            if p.spec.node_name.is_some() {
                bound.insert(p.metadata.name);
            }
        }
    }
    let took = start.elapsed();
    println!(
        "{PODS} pods bound in {took:?} ({parallel} bindings in flight): {:.0} pods/s",
        PODS as f64 / took.as_secs_f64()
    );
    // Before etcd goes away with the lab.
    scheduler.abort();
}
