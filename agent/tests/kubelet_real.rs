//! The kubelet role with the real parts (`kubelet_lab`): API pods become real pods on the node through the
//! follow loop, their status reaches the API, deletion removes them; with the API server away pods stay and
//! the changes made meanwhile apply when it is back; an agent restart disturbs nothing; a static pod has a
//! mirror in the API while it runs; a pod deleted gracefully gets SIGTERM and leaves the API once stopped. Skipped unless root.
//! `kubelet_create_to_running_latency` (ignored: a benchmark) measures API create -> Running.

#![allow(clippy::unwrap_used)]

mod kubelet_lab;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use testbed_api::objects::{Container, Lease, Node, ObjectMeta, Pod, PodSpec};
use testbed_api::PodPhase;
use testbed_control_plane::client::{list_watch, paths, Change, Client, WatchEvent};
use testbed_test_support::agent_http::request as http;

use kubelet_lab::{wait_for, Cluster, API_PORT, NODE, SIDE_API_PORT};

fn api_pod(name: &str) -> Pod {
    Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: ObjectMeta { name: name.into(), namespace: Some("default".into()), ..Default::default() },
        spec: PodSpec {
            containers: vec![Container {
                name: "main".into(),
                command: vec!["sleep".into(), "3600".into()],
                ..Default::default()
            }],
            node_name: Some(NODE.into()),
            termination_grace_period_seconds: Some(0),
            ..Default::default()
        },
        status: None,
    }
}

fn get_pod(c: &Cluster, api: &Client, name: &str) -> Option<Pod> {
    c.rt.block_on(api.get::<Pod>(&paths::pod("default", name))).ok()
}

/// Waits until the API pod's status satisfies `done`; answers it.
fn wait_api_pod(c: &Cluster, api: &Client, name: &str, done: impl Fn(&Pod) -> bool) -> Pod {
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        last = get_pod(c, api, name);
        if last.as_ref().is_some_and(&done) {
            return last.unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("API pod {name}: not as expected within 30 s: {last:?}\nagent log:\n{}", c.agent_log());
}

/// Waits until API pod `namespace/name` runs; answers it.
fn wait_for_running(c: &Cluster, api: &Client, namespace: &str, name: &str) -> Pod {
    let path = paths::pod(namespace, name);
    let mut last = None;
    wait_for(&format!("{namespace}/{name} running"), 30, || {
        last = c.rt.block_on(api.get::<Pod>(&path)).ok();
        last.as_ref().is_some_and(running)
    });
    last.unwrap()
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().is_some_and(|s| s.phase == Some(PodPhase::Running) && s.pod_ip.is_some())
}

/// The node pod of API pod `namespace/name` (named `<namespace>-<name>-<hash>` on the node), or 404.
fn node_pod(namespace: &str, name: &str) -> (u16, Value) {
    let (code, pods) = http("GET", "/v1/pods", None);
    assert_eq!(code, 200, "{pods}");
    let prefix = format!("{namespace}-{name}-");
    let mine: Vec<&Value> = pods
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str().and_then(|n| n.strip_prefix(&prefix)).is_some_and(|h| h.len() == 8))
        .collect();
    match mine[..] {
        [] => (404, Value::Null),
        [one] => http("GET", &format!("/v1/pods/{}", one["name"].as_str().unwrap()), None),
        _ => panic!("more than one node pod for {namespace}/{name}: {pods}"),
    }
}

fn control_plane() -> Value {
    http("GET", "/v1/control-plane", None).1
}

#[test]
fn api_pod_runs_on_the_node_and_leaves_when_deleted() {
    testbed_test_support::require_root!();
    let c = Cluster::start("kbl-run");
    let api = c.client(API_PORT);
    let static_pod = json!({"name": "static", "containers": [{"name": "c", "command": ["sleep", "3600"]}]});
    let (code, body) = http("POST", "/v1/pods", Some(static_pod));
    assert_eq!(code, 201, "{body}");
    let static_infra = body["infra_pid"].clone();

    c.rt.block_on(api.create(&paths::pods(Some("default")), &api_pod("web"))).unwrap();
    let web = wait_api_pod(&c, &api, "web", running);
    let st = web.status.unwrap();
    let (code, on_node) = node_pod("default", "web");
    assert_eq!(code, 200, "{on_node}");
    assert_eq!(on_node["ip"].as_str(), st.pod_ip.as_deref(), "podIP is the node pod's address");
    assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True", "{:?}", st.conditions);
    assert!(st.container_statuses[0].state.running.is_some(), "{:?}", st.container_statuses);

    // The Node, its Lease and the loop's own state.
    let node: Node = c.rt.block_on(api.get(&paths::node(NODE))).unwrap();
    let ns = node.status.unwrap();
    assert_eq!(node.spec.pod_cidr.as_deref(), Some("10.244.1.0/24"));
    assert!(ns.addresses.iter().any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1"), "{:?}", ns.addresses);
    assert_eq!(ns.conditions[0].status, "True", "{:?}", ns.conditions);
    assert!(ns.capacity.contains_key("cpu") && ns.capacity.contains_key("memory"), "{:?}", ns.capacity);
    let lease: Lease = c.rt.block_on(api.get(&paths::lease("kube-node-lease", NODE))).unwrap();
    assert_eq!((lease.spec.holder_identity.as_deref(), lease.spec.lease_duration_seconds), (Some(NODE), Some(40)));
    assert!(lease.spec.renew_time.is_some());
    let cp = control_plane();
    assert_eq!(
        (cp["following"].as_bool(), cp["connected"].as_bool(), cp["pods"].as_u64()),
        (Some(true), Some(true), Some(1)),
        "{cp}"
    );

    // An API pod named like the node-local pod runs beside it (under its own node pod name), and so does a pod
    // of the same name as `web` in another namespace.
    c.rt.block_on(api.create(&paths::pods(Some("default")), &api_pod("static"))).unwrap();
    wait_api_pod(&c, &api, "static", running);
    let ns = testbed_api::objects::Namespace {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        metadata: ObjectMeta { name: "other".into(), ..Default::default() },
        ..Default::default()
    };
    c.rt.block_on(api.create("/api/v1/namespaces", &ns)).unwrap();
    let mut other_web = api_pod("web");
    other_web.metadata.namespace = Some("other".into());
    c.rt.block_on(api.create(&paths::pods(Some("other")), &other_web)).unwrap();
    let other = wait_for_running(&c, &api, "other", "web");
    let other_ip = other.status.unwrap().pod_ip;
    let (code, other_on_node) = node_pod("other", "web");
    assert_eq!(code, 200, "{other_on_node}");
    assert_eq!(other_on_node["ip"].as_str(), other_ip.as_deref());
    assert_ne!(other_ip, st.pod_ip, "two pods, two addresses");
    assert_eq!(node_pod("default", "web").1["infra_pid"], on_node["infra_pid"], "default/web untouched");
    c.rt.block_on(api.delete(&paths::pod("other", "web"))).unwrap();
    wait_for("other/web leaving the node", 30, || node_pod("other", "web").0 == 404);
    assert_eq!(node_pod("default", "web").1["infra_pid"], on_node["infra_pid"], "default/web stays");

    // A join that cannot be followed is refused and the loop goes on with the one it has.
    let bad = json!({"servers": ["https://127.0.0.1:1"], "ca_pem": "no PEM", "token": "t", "node_name": NODE});
    assert_eq!(http("PUT", "/v1/control-plane", Some(bad)).0, 400);
    assert_eq!(control_plane()["connected"], json!(true));

    c.rt.block_on(api.delete(&paths::pod("default", "web"))).unwrap();
    wait_for("web leaving the node", 30, || node_pod("default", "web").0 == 404);
    c.rt.block_on(api.delete(&paths::pod("default", "static"))).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    wait_for("default/static leaving the node", 30, || node_pod("default", "static").0 == 404);
    let (code, still) = http("GET", "/v1/pods/static", None);
    assert_eq!((code, &still["infra_pid"]), (200, &static_infra), "the node-local pod stays as it was");

    // Leaving: no loop, and an API pod created now stays off the node.
    assert_eq!(http("DELETE", "/v1/control-plane", None).0, 204);
    assert_eq!(control_plane()["following"], json!(false));
    c.rt.block_on(api.create(&paths::pods(Some("default")), &api_pod("late"))).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node_pod("default", "late").0, 404);
}

#[test]
fn a_deleted_api_pod_is_terminating_gets_sigterm_and_is_gone_within_its_grace() {
    testbed_test_support::require_root!();
    let c = Cluster::start("kbl-grace");
    let api = c.client(API_PORT);
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("term");
    let trapping = dir.path().join("trapping");
    let mut pod = api_pod("graceful");
    pod.spec.termination_grace_period_seconds = Some(20);
    // PID 1 of its PID namespace: it ends on SIGTERM only because it handles it, and takes 1 s to. The kernel
    // drops a SIGTERM sent to it before the trap is set, so the test waits for the trap (Running comes first).
    let script = format!(
        "trap 'echo term > {}; sleep 1; exit 0' TERM; touch {}; while :; do sleep 0.1; done",
        mark.display(),
        trapping.display()
    );
    pod.spec.containers[0].command = vec!["sh".into(), "-c".into(), script];
    c.rt.block_on(api.create(&paths::pods(Some("default")), &pod)).unwrap();
    wait_api_pod(&c, &api, "graceful", running);
    wait_for("the container's SIGTERM trap", 10, || trapping.exists());

    let t = Instant::now();
    c.rt.block_on(api.delete(&paths::pod("default", "graceful"))).unwrap();
    let terminating = get_pod(&c, &api, "graceful").expect("still in the API while it stops");
    assert!(terminating.metadata.deletion_timestamp.is_some(), "{:?}", terminating.metadata);
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(20));
    wait_for("the API pod gone within its 20 s grace", 20, || get_pod(&c, &api, "graceful").is_none());
    let took = t.elapsed();
    assert_eq!(
        std::fs::read_to_string(&mark).unwrap_or_default(),
        "term\n",
        "the container got no SIGTERM (gone after {took:?})\nagent log:\n{}",
        c.agent_log()
    );
    assert!(took < Duration::from_secs(15), "SIGTERM ends it in ~1 s; took {took:?}: waited for the SIGKILL?");
    assert_eq!(node_pod("default", "graceful").0, 404, "the node pod is gone too");
    eprintln!("deleted -> gone from the API in {took:?}");
}

#[test]
fn api_down_pods_stay_and_changes_apply_when_it_returns() {
    testbed_test_support::require_root!();
    let mut c = Cluster::start("kbl-down");
    let api = c.client(API_PORT);
    let side = c.client(SIDE_API_PORT);
    c.rt.block_on(api.create(&paths::pods(Some("default")), &api_pod("a"))).unwrap();
    wait_api_pod(&c, &api, "a", running);
    let a_infra = node_pod("default", "a").1["infra_pid"].clone();

    c.apiserver.kill();
    wait_for("the loop noticing", 30, || control_plane()["connected"] == json!(false));
    assert!(control_plane()["last_error"].is_string());
    // Meanwhile, through an API server the node does not follow: b created, a deleted.
    c.rt.block_on(side.create(&paths::pods(Some("default")), &api_pod("b"))).unwrap();
    c.rt.block_on(side.delete(&paths::pod("default", "a"))).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(node_pod("default", "a").1["infra_pid"], a_infra, "a keeps running while the API is away");
    assert_eq!(node_pod("default", "b").0, 404);

    c.apiserver = c.start_apiserver(API_PORT);
    wait_api_pod(&c, &side, "b", running);
    wait_for("a leaving the node", 30, || node_pod("default", "a").0 == 404);

    // An agent restart: the stored join is followed again and b is left as it runs.
    let before = node_pod("default", "b").1;
    let rv = get_pod(&c, &side, "b").unwrap().metadata.resource_version;
    c.agent.kill();
    c.start_agent();
    wait_for("the restarted agent following", 30, || control_plane()["connected"] == json!(true));
    std::thread::sleep(Duration::from_secs(2));
    let after = node_pod("default", "b").1;
    assert_eq!(
        (&after["infra_pid"], &after["containers"]),
        (&before["infra_pid"], &before["containers"]),
        "b changed across the agent's restart; agent log:\n{}",
        c.agent_log()
    );
    assert_eq!(get_pod(&c, &side, "b").unwrap().metadata.resource_version, rv, "no status rewrite either");
}

#[test]
fn a_static_pod_is_mirrored_in_the_api_while_it_runs() {
    testbed_test_support::require_root!();
    let c = Cluster::start("kbl-mirror");
    let api = c.client(API_PORT);
    let mirror_name = format!("tagged-{NODE}");
    let static_pod = json!({"name": "tagged", "labels": {"app": "tagged"},
                            "containers": [{"name": "c", "command": ["sleep", "3600"]}]});
    let (code, body) = http("POST", "/v1/pods", Some(static_pod));
    assert_eq!(code, 201, "{body}");

    // The mirror: bound here, the static pod's labels and address, the kubelet's annotations, owned by the Node.
    let mirror = wait_api_pod(&c, &api, &mirror_name, running);
    let node_ip = http("GET", "/v1/pods/tagged", None).1["ip"].clone();
    assert_eq!(mirror.status.as_ref().and_then(|s| s.pod_ip.clone()).as_deref(), node_ip.as_str());
    assert_eq!(mirror.spec.node_name.as_deref(), Some(NODE));
    assert_eq!(mirror.metadata.labels.get("app").map(String::as_str), Some("tagged"));
    assert!(mirror.metadata.annotations.contains_key("kubernetes.io/config.mirror"), "{:?}", mirror.metadata);
    let node: Node = c.rt.block_on(api.get(&paths::node(NODE))).unwrap();
    assert_eq!(mirror.metadata.owner_references[0].uid, node.metadata.uid.unwrap());
    assert_eq!(control_plane()["pods"], json!(0), "a mirror is no API pod the loop runs");

    // Deleted in the API: made again (a new uid), and the static pod never noticed.
    let infra = http("GET", "/v1/pods/tagged", None).1["infra_pid"].clone();
    c.rt.block_on(api.delete(&paths::pod("default", &mirror_name))).unwrap();
    let again = wait_api_pod(&c, &api, &mirror_name, |p| p.metadata.uid != mirror.metadata.uid && running(p));
    assert_ne!(again.metadata.uid, mirror.metadata.uid);
    assert_eq!(http("GET", "/v1/pods/tagged", None).1["infra_pid"], infra, "the static pod was left alone");

    // The static pod removed from the node: its mirror leaves the API.
    assert_eq!(http("DELETE", "/v1/pods/tagged", None).0, 204);
    wait_for("the mirror leaving the API", 30, || get_pod(&c, &api, &mirror_name).is_none());
}

/// `cargo test --release -p testbed-agent --test kubelet_real -- --ignored --nocapture latency`, as root;
/// `TESTBED_KUBELET_PODS` pods (100 by default) created through the API in one burst (or one at a time, each
/// after the previous one runs, with `TESTBED_KUBELET_ONE_BY_ONE=1`), each timed from its create request to
/// the watch event that shows it Running with a podIP.
#[test]
#[ignore = "benchmark"]
fn kubelet_create_to_running_latency() {
    testbed_test_support::require_root!();
    let n: usize = std::env::var("TESTBED_KUBELET_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let one_by_one = std::env::var("TESTBED_KUBELET_ONE_BY_ONE").is_ok_and(|v| v == "1");
    let c = Cluster::start("kbl-bench");
    let api = c.client(API_PORT);
    let latencies = c.rt.block_on(async {
        let mut changes = list_watch::<Pod>(api.clone(), &paths::pods(None), &[]);
        assert!(matches!(changes.next().await, Some(Ok(Change::Listed(_)))));
        let sent = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
        let (creator, sent_by_creator) = (api.clone(), sent.clone());
        let start = Instant::now();
        let (ran, mut next_please) = tokio::sync::mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            for i in 0..n {
                if one_by_one && i > 0 {
                    next_please.recv().await;
                }
                let name = format!("p{i}");
                sent_by_creator.lock().unwrap().insert(name.clone(), Instant::now());
                creator.create(&paths::pods(Some("default")), &api_pod(&name)).await.unwrap();
            }
        });
        let mut seen = HashMap::new();
        while seen.len() < n {
            let change = tokio::time::timeout(Duration::from_secs(120), changes.next()).await.expect("progress");
            if let Some(Ok(Change::Event(WatchEvent::Modified(p)))) = change {
                if running(&p) && !seen.contains_key(&p.metadata.name) {
                    let t0 = sent.lock().unwrap()[&p.metadata.name];
                    seen.insert(p.metadata.name.clone(), t0.elapsed());
                    let _ = ran.send(());
                }
            }
        }
        eprintln!("{n} pods Running {:.2} s after the first create", start.elapsed().as_secs_f64());
        let mut l: Vec<Duration> = seen.into_values().collect();
        l.sort();
        l
    });
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1];
    eprintln!(
        "API create -> Running, {n} pods {}: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        if one_by_one { "one by one" } else { "in a burst" },
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3
    );
}
