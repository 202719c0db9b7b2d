//! The scheduler's decisions without I/O: filters and their message, scores and ties, the cache's
//! assumptions, the queue's back-off, and the condition written for an unschedulable pod.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use testbed_api::objects::{
    Condition, Container, Node, NodeSpec, NodeStatus, ObjectMeta, OwnerReference, Pod, PodSpec, ResourceRequirements,
};

use super::cache::{Cache, PodKey};
use super::filter::{self, Demand, NodeFacts};
use super::queue::Queue;
use super::{report, score};

fn node(name: &str, cpu: &str, memory: &str, ready: &str) -> Node {
    Node {
        metadata: ObjectMeta { name: name.into(), ..Default::default() },
        spec: NodeSpec::default(),
        status: Some(NodeStatus {
            conditions: vec![Condition { type_: "Ready".into(), status: ready.into(), ..Default::default() }],
            allocatable: BTreeMap::from([("cpu".into(), cpu.into()), ("memory".into(), memory.into())]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod(name: &str, requests: &[(&str, &str)], limits: &[(&str, &str)], owner: Option<&str>) -> Pod {
    let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Pod {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: Some("default".into()),
            uid: Some(format!("uid-{name}")),
            owner_references: owner
                .map(|uid| OwnerReference { uid: uid.into(), controller: Some(true), ..Default::default() })
                .into_iter()
                .collect(),
            ..Default::default()
        },
        spec: PodSpec {
            containers: vec![Container {
                name: "c".into(),
                resources: Some(ResourceRequirements { requests: map(requests), limits: map(limits) }),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
        ..Default::default()
    }
}

#[test]
fn requests_default_to_limits_and_allocatable_is_read_as_the_kubelet_writes_it() {
    let d = Demand::of(&pod("a", &[("cpu", "250m")], &[("cpu", "1"), ("memory", "64Mi")], None));
    assert_eq!((d.requests.cpu_millis, d.requests.memory_bytes), (250, 64 << 20));
    let n = NodeFacts::of(&node("n1", "2", "2000000Ki", "True"));
    assert_eq!((n.allocatable.cpu_millis, n.allocatable.memory_bytes), (2000, 2_048_000_000));
}

#[test]
fn filters_reject_with_the_first_failing_plugins_reasons() {
    let usage = filter::Usage::default();
    let big = Demand::of(&pod("a", &[("cpu", "3"), ("memory", "3Gi")], &[], None));
    let n1 = NodeFacts::of(&node("n1", "2", "2000000Ki", "True"));
    assert_eq!(filter::filter(&big, &n1, &usage), Err(vec![filter::INSUFFICIENT_CPU, filter::INSUFFICIENT_MEMORY]));
    let mut selective = Demand::of(&pod("b", &[], &[], None));
    selective.node_selector.insert("disk".into(), "ssd".into());
    assert_eq!(filter::filter(&selective, &n1, &usage), Err(vec![filter::SELECTOR]));
    let unknown = NodeFacts::of(&node("n2", "2", "1Gi", "Unknown"));
    assert_eq!(filter::filter(&big, &unknown, &usage), Err(vec![filter::UNREACHABLE]));
    let mut cordoned = n1.clone();
    cordoned.unschedulable = true;
    assert_eq!(filter::filter(&big, &cordoned, &usage), Err(vec![filter::UNSCHEDULABLE]));
    // What is placed counts: 1.5 of 2 cores taken leaves no room for 1 more.
    let one = Demand::of(&pod("c", &[("cpu", "1")], &[], None));
    let mut used = filter::Usage::default();
    used.add(&Demand::of(&pod("d", &[("cpu", "1500m")], &[], None)));
    assert_eq!(filter::filter(&one, &n1, &used), Err(vec![filter::INSUFFICIENT_CPU]));
    assert_eq!(filter::filter(&one, &n1, &usage), Ok(()));
}

#[test]
fn the_message_counts_reasons_as_kubernetes_words_them() {
    let cpu = [filter::INSUFFICIENT_CPU];
    let sel = [filter::SELECTOR];
    let failures: Vec<&[&str]> = vec![&sel, &cpu, &sel];
    assert_eq!(
        filter::fit_error(3, failures),
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
    );
    assert_eq!(filter::fit_error(0, Vec::<&[&str]>::new()), "no nodes available to schedule pods");
}

#[test]
fn siblings_spread_then_least_allocated_then_a_stable_tie_break() {
    let nodes: Vec<NodeFacts> =
        ["n1", "n2", "n3"].iter().map(|n| NodeFacts::of(&node(n, "4", "8Gi", "True"))).collect();
    let mut usage = vec![filter::Usage::default(); 3];
    usage[0].add(&Demand::of(&pod("s1", &[], &[], Some("rs"))));
    usage[1].add(&Demand::of(&pod("big", &[("cpu", "3")], &[], None)));
    usage[2].add(&Demand::of(&pod("mid", &[("cpu", "1")], &[], None)));
    let feasible: Vec<_> = nodes.iter().zip(&usage).collect();
    let web = Demand::of(&pod("web", &[], &[], Some("rs")));
    // n1 is the least allocated but holds a sibling; of the others, n3 is less allocated than n2.
    assert_eq!(score::pick(&web, "default/web", &feasible).map(|n| n.name.as_str()), Some("n3"));
    // Three empty nodes: the hash of the name decides, the same way every time, not always the first.
    let empty = vec![filter::Usage::default(); 3];
    let feasible: Vec<_> = nodes.iter().zip(&empty).collect();
    let picks: Vec<&str> = (0..30)
        .map(|i| score::pick(&web, &format!("default/web-{i}"), &feasible).map(|n| n.name.as_str()).unwrap_or(""))
        .collect();
    assert!(["n1", "n2", "n3"].iter().all(|n| picks.contains(n)), "{picks:?}");
    assert_eq!(score::pick(&web, "default/web-7", &feasible), score::pick(&web, "default/web-7", &feasible));
    assert_eq!(score::pick(&web, "default/web", &[]), None);
}

#[test]
fn assumed_pods_count_until_the_watch_shows_them_bound_or_the_binding_fails() {
    let mut cache = Cache::default();
    cache.set_nodes(&[node("n1", "2", "4Gi", "True")]);
    let a = pod("a", &[("cpu", "1500m")], &[], Some("rs"));
    let key = PodKey::of(&a);
    cache.set_pods(vec![a.clone()]);
    cache.assume(&key, "uid-a", "n1");
    let used = |c: &Cache| c.nodes().next().map(|(_, u)| (u.requested.cpu_millis, u.pods)).unwrap_or_default();
    assert_eq!(used(&cache), (1500, 1));
    // A relist before the watch shows it bound keeps the assumption.
    cache.set_pods(vec![a.clone()]);
    assert_eq!(used(&cache), (1500, 1));
    let mut bound = a.clone();
    bound.spec.node_name = Some("n1".into());
    cache.upsert_pod(bound.clone());
    assert_eq!(used(&cache), (1500, 1), "counted once");
    cache.remove_pod(&bound);
    assert_eq!(used(&cache), (0, 0));
    cache.upsert_pod(a);
    cache.assume(&key, "uid-a", "n1");
    cache.forget(&key);
    assert_eq!(used(&cache), (0, 0));
}

#[test]
fn parked_pods_wait_for_their_back_off_and_a_change() {
    let mut q = Queue::default();
    let key = PodKey { namespace: "default".into(), name: "web".into() };
    q.add(&key);
    q.add(&key);
    assert_eq!(q.pop(), Some(key.clone()));
    assert_eq!(q.pop(), None, "queued once");
    let t0 = Instant::now();
    q.park(&key, t0);
    q.add(&key);
    assert_eq!(q.pop(), None, "a parked pod is not queued by its own status write");
    q.promote(t0 + Duration::from_secs(5));
    assert_eq!(q.pop(), None, "no change: stays parked");
    q.wake();
    q.promote(t0 + Duration::from_millis(500));
    assert_eq!(q.pop(), None, "back-off not over");
    assert_eq!(q.next_due(), Some(t0 + Duration::from_secs(1)));
    q.promote(t0 + Duration::from_secs(1));
    assert_eq!(q.pop(), Some(key.clone()));
    // The second failure doubles the back-off; a long wait without change retries anyway.
    q.park(&key, t0);
    q.wake();
    assert_eq!(q.next_due(), Some(t0 + Duration::from_secs(2)));
    q.forget(&key);
    q.park(&key, t0);
    q.promote(t0 + Duration::from_secs(60));
    assert_eq!(q.pop(), Some(key));
}

#[test]
fn the_unschedulable_condition_is_written_only_when_it_changes() {
    let mut p = pod("a", &[], &[], None);
    let first = report::conditions_with(&p, "0/1 nodes are available: 1 Insufficient cpu.", "t1").expect("new");
    assert_eq!((first.len(), first[0].last_transition_time.as_deref()), (1, Some("t1")));
    p.status = Some(testbed_api::objects::PodStatus { conditions: first, ..Default::default() });
    assert_eq!(report::conditions_with(&p, "0/1 nodes are available: 1 Insufficient cpu.", "t2"), None);
    let other = report::conditions_with(&p, "0/2 nodes are available: 2 Insufficient cpu.", "t3").expect("changed");
    assert_eq!(other[0].last_transition_time.as_deref(), Some("t1"), "still False since t1");
}
