//! The node lifecycle controller, as Kubernetes' (`node_lifecycle_controller.go`) and its pod garbage
//! collector (`gc_controller.go`) do it for testbed's kubelets:
//!
//! - a node whose Lease (`kube-node-lease/<node>`) is not renewed within the grace period gets its
//!   conditions set to `Unknown` (reason `NodeStatusUnknown`, "Kubelet stopped posting node status.")
//!   through `nodes/status`, and its pods are marked not Ready;
//! - once a node's Ready has not been True for the eviction timeout, its pods are deleted (an event per
//!   pod), so that their controllers make new ones the scheduler places elsewhere;
//! - a pod bound to a node that does not exist is deleted.
//!
//! Renewals are timed by this controller's clock when it sees the Lease change, not by the time written in
//! the Lease: a node whose clock is off is judged by when its renewals arrive. A node that comes back renews
//! its Lease and sets its own Ready again; its kubelet then lists its pods and removes those that were
//! deleted meanwhile.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use testbed_api::objects::{Condition, Lease, Node, Pod};

use super::events::EventType;
use super::Context;
use crate::client::{list_watch, now_rfc3339, paths, Change, ClientError, WatchEvent};
use crate::resources::Kind;

const COMPONENT: &str = "node-controller";
const NODE_LEASES: &str = "kube-node-lease";

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct NodeLifecycleConfig {
    /// A Lease not renewed for this long makes the node `Unknown` (`--node-monitor-grace-period`, 40 s).
    pub grace_period: Duration,
    /// Pods of a node whose Ready was not True for this long are deleted (Kubernetes' default toleration
    /// of the not-ready and unreachable taints, 300 s).
    pub eviction_timeout: Duration,
    /// How often nodes are checked (`--node-monitor-period`, 5 s).
    pub period: Duration,
}

impl Default for NodeLifecycleConfig {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(40),
            eviction_timeout: Duration::from_secs(300),
            period: Duration::from_secs(5),
        }
    }
}

/// What the controller last saw of one node.
struct Health {
    /// The Lease's renewTime.
    renew: Option<String>,
    /// When the renewal (or the node) was last seen to change.
    probed: Instant,
    /// Since when its Ready has not been True, as seen here.
    not_ready_since: Option<Instant>,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Node>,
    leases: BTreeMap<String, Lease>,
    pods: BTreeMap<(String, String), Pod>,
    health: HashMap<String, Health>,
    /// Uids of the pods deleted already (their deletion is on its way through the watch).
    deleted: HashSet<String>,
    listed: [bool; 3],
}

/// Watches nodes, their Leases and pods, and acts every `config.period`, until a watch fails.
pub async fn run(ctx: Context, config: NodeLifecycleConfig) -> Result<(), ClientError> {
    let mut nodes = list_watch::<Node>(ctx.client.clone(), &paths::nodes(), &[]);
    let mut leases = list_watch::<Lease>(ctx.client.clone(), &paths::leases(NODE_LEASES), &[]);
    let mut pods = list_watch::<Pod>(ctx.client.clone(), &paths::pods(None), &[]);
    let mut tick = tokio::time::interval(config.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut st = State::default();
    let ended = || ClientError::Unreachable("a watch ended".into());
    loop {
        tokio::select! {
            change = nodes.next() => {
                st.listed[0] = true;
                apply(&mut st.nodes, change.ok_or_else(ended)??, |n: &Node| n.metadata.name.clone());
            }
            change = leases.next() => {
                st.listed[1] = true;
                apply(&mut st.leases, change.ok_or_else(ended)??, |l: &Lease| l.metadata.name.clone());
            }
            change = pods.next() => {
                st.listed[2] = true;
                apply(&mut st.pods, change.ok_or_else(ended)??, |p: &Pod| {
                    (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone())
                });
            }
            _ = tick.tick(), if st.listed.iter().all(|l| *l) => monitor(&ctx, &config, &mut st).await,
        }
    }
}

/// Applies a list or an event to `map`, keyed by `key`.
fn apply<K: Ord, T>(map: &mut BTreeMap<K, T>, change: Change<T>, key: impl Fn(&T) -> K) {
    match change {
        Change::Listed(items) => *map = items.into_iter().map(|t| (key(&t), t)).collect(),
        Change::Event(WatchEvent::Added(t) | WatchEvent::Modified(t)) => {
            map.insert(key(&t), t);
        }
        Change::Event(WatchEvent::Deleted(t)) => {
            map.remove(&key(&t));
        }
    }
}

/// One pass over every node. API errors are logged and the pass goes on: the next one tries again.
async fn monitor(ctx: &Context, config: &NodeLifecycleConfig, st: &mut State) {
    let now = Instant::now();
    st.health.retain(|name, _| st.nodes.contains_key(name));
    st.deleted.retain(|uid| st.pods.values().any(|p| p.metadata.uid.as_deref() == Some(uid.as_str())));
    let nodes: Vec<Node> = st.nodes.values().cloned().collect();
    for node in nodes {
        let name = node.metadata.name.clone();
        let renew = st.leases.get(&name).and_then(|l| l.spec.renew_time.clone());
        let h = st.health.entry(name.clone()).or_insert(Health { renew: None, probed: now, not_ready_since: None });
        if h.renew != renew {
            h.renew = renew;
            h.probed = now;
        }
        let stale = now.duration_since(h.probed) > config.grace_period;
        let ready = ready_status(&node);
        if ready.as_deref() == Some("True") && !stale {
            h.not_ready_since = None;
        } else {
            h.not_ready_since.get_or_insert(now);
        }
        let since = h.not_ready_since;
        if stale && ready.as_deref() != Some("Unknown") {
            mark_unknown(ctx, st, node).await;
        }
        if since.is_some_and(|s| now.duration_since(s) >= config.eviction_timeout) {
            delete_pods(ctx, st, &name, "NodeControllerEviction").await;
        }
    }
    // Pods bound to a node the watch does not know: deleted once a read confirms the node is gone (the pod
    // watch may simply be ahead of the node watch).
    let orphaned: HashSet<String> =
        st.pods.values().filter_map(|p| p.spec.node_name.clone()).filter(|n| !st.nodes.contains_key(n)).collect();
    for node in orphaned {
        match ctx.client.get::<Node>(&paths::node(&node)).await {
            Err(e) if e.is_not_found() => delete_pods(ctx, st, &node, "").await,
            Err(e) => tracing::warn!(node, error = %e, "pod GC: reading the node"),
            Ok(_) => {}
        }
    }
}

fn ready_status(node: &Node) -> Option<String> {
    let status = node.status.as_ref()?;
    status.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.status.clone())
}

/// Sets the node's conditions to Unknown (adding Ready when it never posted one) and its pods not Ready.
async fn mark_unknown(ctx: &Context, st: &State, mut node: Node) {
    let name = node.metadata.name.clone();
    let status = node.status.get_or_insert_with(Default::default);
    status.conditions = unknown_conditions(&status.conditions, &now_rfc3339());
    match ctx.client.update_node_status(&node).await {
        Ok(_) => {
            tracing::info!(node = name, "node stopped renewing its lease: Ready Unknown");
            let message = format!("Node {name} status is now: NodeNotReady");
            ctx.events.record(Kind::Node, &node, COMPONENT, EventType::Normal, "NodeNotReady", &message).await;
        }
        // Changed meanwhile (the kubelet is back, perhaps): the next pass looks again.
        Err(e) => return tracing::warn!(node = name, error = %e, "marking the node Unknown"),
    }
    for pod in st.pods.values().filter(|p| p.spec.node_name.as_deref() == Some(name.as_str())) {
        let conditions = pod.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        let Some(conditions) = not_ready(&conditions, &now_rfc3339()) else { continue };
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let patch = serde_json::json!({ "conditions": conditions });
        if let Err(e) = ctx.client.patch_pod_status(namespace, &pod.metadata.name, &patch).await {
            tracing::warn!(pod = pod.metadata.name, error = %e, "marking the pod not Ready");
        }
    }
}

/// Deletes the pods bound to `node`, each once; with an event of `reason` on each unless it is empty.
async fn delete_pods(ctx: &Context, st: &mut State, node: &str, reason: &str) {
    let doomed: Vec<Pod> = st
        .pods
        .values()
        .filter(|p| p.spec.node_name.as_deref() == Some(node))
        .filter(|p| !p.metadata.uid.as_ref().is_some_and(|u| st.deleted.contains(u)))
        .cloned()
        .collect();
    for pod in doomed {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = &pod.metadata.name;
        // At once (grace 0): no kubelet is there to stop the pod and finish a graceful deletion, and its
        // replacement must not wait on it. (Kubernetes leaves such pods Terminating until the node is back,
        // deleted, or tainted out-of-service, when PodGC force-deletes them; node_death_e2e expects them gone.)
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        match ctx.client.force_delete_pod(namespace, name, uid).await {
            Ok(()) => {
                tracing::info!(pod = %name, node, "deleted: its node is gone or not ready");
                if !reason.is_empty() {
                    let message = format!("Marking for deletion Pod {namespace}/{name} from Node {node}");
                    ctx.events.record(Kind::Pod, &pod, COMPONENT, EventType::Normal, reason, &message).await;
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::warn!(pod = %name, error = %e, "deleting the pod");
                continue;
            }
        }
        st.deleted.extend(pod.metadata.uid.clone());
    }
}

/// Every condition Unknown with Kubernetes' reason and message; a Ready condition added when missing.
pub fn unknown_conditions(conditions: &[Condition], now: &str) -> Vec<Condition> {
    let unknown = |type_: &str, old: Option<&Condition>| {
        let never = old.is_none();
        Condition {
            type_: type_.into(),
            status: "Unknown".into(),
            last_heartbeat_time: old.and_then(|c| c.last_heartbeat_time.clone()),
            last_transition_time: Some(now.into()),
            reason: Some(if never { "NodeStatusNeverUpdated" } else { "NodeStatusUnknown" }.into()),
            message: Some(
                if never { "Kubelet never posted node status." } else { "Kubelet stopped posting node status." }.into(),
            ),
            last_update_time: None,
        }
    };
    let mut out: Vec<Condition> = conditions.iter().map(|c| unknown(&c.type_, Some(c))).collect();
    if !conditions.iter().any(|c| c.type_ == "Ready") {
        out.push(unknown("Ready", None));
    }
    out
}

/// A pod's conditions with Ready False (Kubernetes' `MarkPodsNotReady`); `None` when it is not True now.
pub fn not_ready(conditions: &[Condition], now: &str) -> Option<Vec<Condition>> {
    let at = conditions.iter().position(|c| c.type_ == "Ready" && c.status == "True")?;
    let mut out = conditions.to_vec();
    out[at] = Condition { status: "False".into(), last_transition_time: Some(now.into()), ..out[at].clone() };
    Some(out)
}

#[cfg(test)]
mod tests {
    use testbed_api::objects::Condition;

    fn condition(type_: &str, status: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            last_heartbeat_time: Some("t0".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_silent_node_turns_unknown_keeping_its_last_heartbeat() {
        let out = super::unknown_conditions(&[condition("Ready", "True"), condition("MemoryPressure", "False")], "t1");
        assert!(out.iter().all(|c| c.status == "Unknown" && c.last_heartbeat_time.as_deref() == Some("t0")));
        assert_eq!(out[0].message.as_deref(), Some("Kubelet stopped posting node status."));
        assert_eq!(out[0].reason.as_deref(), Some("NodeStatusUnknown"));
        let never = super::unknown_conditions(&[], "t1");
        assert_eq!((never[0].type_.as_str(), never[0].reason.as_deref()), ("Ready", Some("NodeStatusNeverUpdated")));
    }

    #[test]
    fn pods_of_an_unknown_node_are_marked_not_ready_once() {
        let marked = super::not_ready(&[condition("PodScheduled", "True"), condition("Ready", "True")], "t1");
        let marked = marked.expect("was Ready");
        assert_eq!((marked[1].status.as_str(), marked[0].status.as_str()), ("False", "True"));
        assert_eq!(super::not_ready(&marked, "t2"), None);
    }
}
