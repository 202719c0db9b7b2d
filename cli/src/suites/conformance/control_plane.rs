//! The `control-plane` group: the lab's API server as clients see it (objects round-trip with their
//! resourceVersion, a stale write is refused, a watch resumed from an old revision misses nothing), and the
//! agents following it (every node registered and Ready with a renewed Lease; a pod created through the API
//! runs on its node, reports its status there, and leaves the node when deleted through the API).
//! Backend-independent: runs once. Each check uses objects of its own in the `testbed-conformance`
//! namespace, removed at the end.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Container, Namespace, Node, Pod, PodSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::Client;

use super::super::cluster::{nodes_of, Cluster, NodeInfo};
use super::super::runner::{CheckError, CheckOutcome, Level, Runner};

const GROUP: &str = "control-plane";
const NAMESPACE: &str = "testbed-conformance";
/// How long an agent may take to run a pod created through the API, or to remove one deleted there (the
/// unit tests' fake kubelet answers within milliseconds, so their failing cases need not wait 90 s).
const POD_DEADLINE: Duration = Duration::from_secs(if cfg!(test) { 3 } else { 90 });
/// How long an agent may take to write a Ready condition again after another writer changed it: it sees
/// the change by watch and writes at once (the kubelet's status manager reconciles within 10 s).
const RESTORE_DEADLINE: Duration = Duration::from_secs(if cfg!(test) { 3 } else { 20 });
/// A node Lease older than this is not being renewed (Kubernetes' default node-monitor grace period).
const LEASE_GRACE_SECS: i64 = 40;

/// Runs the group, or records every check as an error when the lab's API cannot be reached.
pub(super) async fn run<C: Cluster>(c: &C, r: &mut Runner) {
    let names = [
        "objects round-trip with their resourceVersion",
        "a stale update is refused with 409 Conflict",
        "a watch resumed from an old revision sees every change after it",
        "every node is registered and Ready, with a Lease renewed within 40 s",
    ];
    let client = match c.api().await {
        Ok(client) => client,
        Err(e) => {
            for name in names {
                r.record(GROUP, None, name, testbed_api::results::CheckStatus::Error, &e.to_string());
            }
            return;
        }
    };
    let e = Level::Error;
    if let Err(err) = namespace(&client, NAMESPACE).await {
        for name in names {
            r.record(GROUP, None, name, testbed_api::results::CheckStatus::Error, &format!("{err:?}"));
        }
        return;
    }
    r.run(GROUP, None, names[0], e, round_trip(&client)).await;
    r.run(GROUP, None, names[1], e, stale_update(&client)).await;
    r.run(GROUP, None, names[2], e, watch_resume(&client)).await;
    r.run(GROUP, None, names[3], e, nodes_registered(&client, &nodes_of(c.plan()))).await;
    if let Some(node) = nodes_of(c.plan()).last() {
        let name =
            format!("{}'s Ready condition, set Unknown by another writer, is set True again by its agent", node.name);
        r.run(GROUP, None, &name, e, node_ready_restored(&client, &node.name)).await;
        let name = format!(
            "a pod created through the API on {} runs there, is set Ready again after another writer marked it \
             not Ready, and leaves when deleted",
            node.name
        );
        r.run(GROUP, None, &name, e, api_pod(c, &client, node)).await;
    }
}

use super::super::api::api_err;

/// Creates the namespace `name` unless it exists.
pub(super) async fn namespace(client: &Client, name: &str) -> Result<(), CheckError> {
    labelled_namespace(client, name, &[]).await
}

/// Creates the namespace `name` with `labels` unless it exists.
pub(super) async fn labelled_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) -> Result<(), CheckError> {
    let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let labels = Some(labels).filter(|l: &std::collections::BTreeMap<String, String>| !l.is_empty());
    let ns = Namespace { metadata: ObjectMeta { labels, ..meta(name) }, ..Default::default() };
    match Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(api_err(&format!("create namespace {name}"))(e)),
    }
}

/// Whether the API says the pod is Ready (every container running and ready).
pub(super) fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the API says the node is Ready.
fn node_is_ready(n: &Node) -> bool {
    let conditions = n.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A pod the groups make through the API: bound to `node` from the start (no scheduler in the way), never
/// restarted, and stopped within a second when deleted.
pub(super) fn pinned(metadata: ObjectMeta, node: &str, containers: Vec<Container>) -> Pod {
    let spec = PodSpec {
        containers,
        node_name: Some(node.into()),
        restart_policy: Some("Never".into()),
        termination_grace_period_seconds: Some(1),
        ..Default::default()
    };
    Pod { metadata, spec: Some(spec), ..Default::default() }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_string()), ..Default::default() }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

fn lease(name: &str, holder: &str) -> Lease {
    Lease { metadata: meta(name), spec: Some(LeaseSpec { holder_identity: Some(holder.into()), ..Default::default() }) }
}

fn holder(l: &Lease) -> Option<&str> {
    l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
}

fn version(what: &str, meta: &ObjectMeta) -> Result<u64, CheckError> {
    let rv = meta.resource_version.as_deref().unwrap_or_default();
    rv.parse().map_err(|_| CheckError::Fail(format!("{what}: resourceVersion `{rv}` is not an etcd revision")))
}

async fn round_trip(client: &Client) -> CheckOutcome {
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let name = unique("round-trip");
    let created = api.create(&PostParams::default(), &lease(&name, "a")).await.map_err(api_err("create"))?;
    let got = api.get(&name).await.map_err(api_err("get"))?;
    let list = api.list(&ListParams::default()).await.map_err(api_err("list"))?;
    let _ = api.delete(&name, &DeleteParams::default()).await;
    let (at_create, at_get) = (version("create", &created.metadata)?, version("get", &got.metadata)?);
    if at_create != at_get || holder(&got) != Some("a") {
        return Err(CheckError::Fail(format!(
            "created at resourceVersion {at_create} with holder a; read back {at_get} with {:?}",
            holder(&got)
        )));
    }
    let listed = list.items.iter().find(|l| l.metadata.name.as_deref() == Some(&name));
    let list_version: u64 = list.metadata.resource_version.as_deref().unwrap_or_default().parse().unwrap_or(0);
    match listed {
        Some(l) if version("list item", &l.metadata)? == at_create && list_version >= at_create => {
            Ok(format!("lease {name}: resourceVersion {at_create} on create, get and list (list at {list_version})"))
        }
        _ => Err(CheckError::Fail(format!("the list at {list_version} does not hold lease {name} at {at_create}"))),
    }
}

async fn stale_update(client: &Client) -> CheckOutcome {
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let name = unique("stale");
    let first = api.create(&PostParams::default(), &lease(&name, "a")).await.map_err(api_err("create"))?;
    let mut fresh = first.clone();
    fresh.spec = lease(&name, "b").spec;
    let updated = api.replace(&name, &PostParams::default(), &fresh).await.map_err(api_err("update"));
    let mut stale = first.clone();
    stale.spec = lease(&name, "c").spec;
    let refused = api.replace(&name, &PostParams::default(), &stale).await;
    let stored = api.get(&name).await.map_err(api_err("get"));
    let _ = api.delete(&name, &DeleteParams::default()).await;
    updated?;
    let stored = stored?;
    match refused {
        Err(kube::Error::Api(s)) if s.code == 409 && holder(&stored) == Some("b") => {
            Ok(format!("an update at the old resourceVersion got 409 {}; the stored holder stays b", s.reason))
        }
        Err(kube::Error::Api(s)) => {
            Err(CheckError::Fail(format!("the stale update got {} {}, not 409", s.code, s.reason)))
        }
        Err(e) => Err(CheckError::Infra(format!("stale update: {e}"))),
        Ok(_) => Err(CheckError::Fail(format!(
            "an update at an old resourceVersion was accepted; the stored holder is now {:?}",
            holder(&stored)
        ))),
    }
}

async fn watch_resume(client: &Client) -> CheckOutcome {
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let name = unique("watched");
    let start = api.list(&ListParams::default()).await.map_err(api_err("list"))?.metadata.resource_version;
    let start = start.unwrap_or_default();
    let created = api.create(&PostParams::default(), &lease(&name, "a")).await.map_err(api_err("create"))?;
    let mut changed = created.clone();
    changed.spec = lease(&name, "b").spec;
    api.replace(&name, &PostParams::default(), &changed).await.map_err(api_err("update"))?;
    api.delete(&name, &DeleteParams::default()).await.map_err(api_err("delete"))?;
    // Only now, after all three changes, the watch starts from the revision before them.
    let params = WatchParams::default().fields(&format!("metadata.name={name}")).timeout(10);
    let stream = api.watch(&params, &start).await.map_err(api_err("watch"))?;
    let mut seen = Vec::new();
    let mut stream = stream.boxed();
    while seen.len() < 3 {
        match stream.try_next().await.map_err(api_err("watch"))? {
            Some(WatchEvent::Added(l)) => seen.push(("ADDED", holder(&l).unwrap_or_default().to_string())),
            Some(WatchEvent::Modified(l)) => seen.push(("MODIFIED", holder(&l).unwrap_or_default().to_string())),
            Some(WatchEvent::Deleted(l)) => seen.push(("DELETED", holder(&l).unwrap_or_default().to_string())),
            Some(WatchEvent::Bookmark(_)) => {}
            Some(WatchEvent::Error(s)) => {
                return Err(CheckError::Fail(format!("the watch ended: {} {}", s.code, s.message)))
            }
            None => break,
        }
    }
    let want = [("ADDED", "a"), ("MODIFIED", "b"), ("DELETED", "b")];
    let got: Vec<(&str, &str)> = seen.iter().map(|(t, h)| (*t, h.as_str())).collect();
    if got == want {
        Ok(format!("from resourceVersion {start}: ADDED, MODIFIED, DELETED of lease {name}, in order"))
    } else {
        Err(CheckError::Fail(format!("a watch from resourceVersion {start} saw {got:?}; want {want:?}")))
    }
}

async fn nodes_registered(client: &Client, nodes: &[NodeInfo]) -> CheckOutcome {
    let node_api: Api<Node> = Api::all(client.clone());
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = Timestamp::now().as_second();
    let mut problems = Vec::new();
    for n in nodes {
        let Some(node) = node_api.get_opt(&n.name).await.map_err(api_err("get node"))? else {
            problems.push(format!("{}: no Node object", n.name));
            continue;
        };
        let ready = node_is_ready(&node);
        let status = node.status.unwrap_or_default();
        let ip = status.addresses.iter().flatten().find(|a| a.type_ == "InternalIP").map(|a| a.address.clone());
        let cidr = node.spec.and_then(|s| s.pod_cidr);
        if !ready {
            problems.push(format!("{}: not Ready", n.name));
        }
        if ip.as_deref() != Some(&n.underlay_ip.to_string()) {
            problems.push(format!("{}: InternalIP {ip:?}, the underlay address is {}", n.name, n.underlay_ip));
        }
        if cidr.as_deref() != Some(&n.pod_subnet.to_string()) {
            problems.push(format!("{}: podCIDR {cidr:?}, the plan gives {}", n.name, n.pod_subnet));
        }
        let lease = lease_api.get_opt(&n.name).await.map_err(api_err("get lease"))?;
        let renewed = lease.and_then(|l| l.spec).and_then(|s| s.renew_time).map(|t| now - t.0.as_second());
        match renewed {
            Some(age) if age <= LEASE_GRACE_SECS => {}
            Some(age) => problems.push(format!("{}: its Lease was last renewed {age} s ago", n.name)),
            None => problems.push(format!("{}: no Lease with a renewTime in kube-node-lease", n.name)),
        }
    }
    if problems.is_empty() {
        Ok(format!("{} nodes Ready with their underlay address, podCIDR and a fresh Lease", nodes.len()))
    } else {
        Err(CheckError::Fail(problems.join("; ")))
    }
}

async fn api_pod<C: Cluster>(c: &C, client: &Client, node: &NodeInfo) -> CheckOutcome {
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let name = unique("api-pod");
    let container =
        Container { name: "main".into(), command: Some(vec!["sleep".into(), "3600".into()]), ..Default::default() };
    // `sleep` as PID 1 of its PID namespace ignores SIGTERM, so the agent waits out the grace period before
    // SIGKILL: 2 s, not the default 30, keeps the check short without skipping the graceful path.
    let spec = PodSpec {
        node_name: Some(node.name.clone()),
        containers: vec![container],
        termination_grace_period_seconds: Some(2),
        ..Default::default()
    };
    let pod = Pod { metadata: meta(&name), spec: Some(spec), ..Default::default() };
    api.create(&PostParams::default(), &pod).await.map_err(api_err("create pod"))?;
    let outcome = running_then_gone(c, &api, node, &name).await;
    let _ = api.delete(&name, &DeleteParams::default()).await;
    outcome
}

async fn running_then_gone<C: Cluster>(c: &C, api: &Api<Pod>, node: &NodeInfo, name: &str) -> CheckOutcome {
    let started = tokio::time::Instant::now();
    let ip = loop {
        let status = api.get(name).await.map_err(api_err("get pod"))?.status.unwrap_or_default();
        if let (Some("Running"), Some(ip)) = (status.phase.as_deref(), status.pod_ip.clone()) {
            break ip;
        }
        if started.elapsed() > POD_DEADLINE {
            return Err(CheckError::Fail(format!(
                "pod {name} is not Running with an IP in the API after {} s (phase {:?})",
                POD_DEADLINE.as_secs(),
                status.phase
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let ran = started.elapsed();
    let restored = pod_ready_restored(api, name).await?;
    let node_pod = testbed_api::objects::node_pod_name(NAMESPACE, name);
    let on_node =
        c.get_pod(&node.name, &node_pod).await.map_err(|e| CheckError::Fail(format!("the API says Running: {e}")))?;
    let node_ip = on_node.ip.map(|i| i.to_string());
    if node_ip.as_deref() != Some(ip.as_str())
        || !ip.parse::<std::net::Ipv4Addr>().is_ok_and(|a| node.pod_subnet.contains(&a))
    {
        return Err(CheckError::Fail(format!(
            "the API reports podIP {ip}, the agent on {} {node_ip:?}, the node's pod subnet is {}",
            node.name, node.pod_subnet
        )));
    }
    api.delete(name, &DeleteParams::default()).await.map_err(api_err("delete pod"))?;
    let deleted = tokio::time::Instant::now();
    while c.get_pod(&node.name, &node_pod).await.is_ok() {
        if deleted.elapsed() > POD_DEADLINE {
            return Err(CheckError::Fail(format!("pod {name} is still on {} after its deletion", node.name)));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(format!(
        "Running on {} with {ip} after {:.1} s; Ready again {:.1} s after it was marked not Ready; gone from the \
         node {:.1} s after the API deletion",
        node.name,
        ran.as_secs_f64(),
        restored.as_secs_f64(),
        deleted.elapsed().as_secs_f64()
    ))
}

/// Marks a Ready pod not Ready as the node lifecycle controller does when it loses touch with a node, and
/// answers how long its agent took to set it Ready again.
async fn pod_ready_restored(api: &Api<Pod>, name: &str) -> Result<Duration, CheckError> {
    let started = tokio::time::Instant::now();
    while !is_ready(&api.get(name).await.map_err(api_err("get pod"))?) {
        if started.elapsed() > POD_DEADLINE {
            return Err(CheckError::Fail(format!(
                "pod {name} is Running but not Ready after {} s",
                POD_DEADLINE.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let not_ready = serde_json::json!({"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "NodeNotReady", "lastTransitionTime": Timestamp::now().to_string()},
    ]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(not_ready))
        .await
        .map_err(api_err("mark not Ready"))?;
    let marked = tokio::time::Instant::now();
    while !is_ready(&api.get(name).await.map_err(api_err("get pod"))?) {
        if marked.elapsed() > RESTORE_DEADLINE {
            return Err(CheckError::Fail(format!(
                "pod {name} marked not Ready by another writer is still not Ready {} s later: its agent does not \
                 write its status again",
                RESTORE_DEADLINE.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(marked.elapsed())
}

/// Sets the node's Ready condition Unknown as the node lifecycle controller does when the node's Lease goes
/// unrenewed, and waits for its agent to set it True again.
async fn node_ready_restored(client: &Client, node: &str) -> CheckOutcome {
    let api: Api<Node> = Api::all(client.clone());
    if !node_is_ready(&api.get(node).await.map_err(api_err("get node"))?) {
        return Err(CheckError::Fail(format!("{node} is not Ready to begin with")));
    }
    let unknown = serde_json::json!({"status": {"conditions": [{
        "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
        "message": "Kubelet stopped posting node status.", "lastTransitionTime": Timestamp::now().to_string(),
    }]}});
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(unknown)).await.map_err(api_err("mark Unknown"))?;
    let marked = tokio::time::Instant::now();
    while !node_is_ready(&api.get(node).await.map_err(api_err("get node"))?) {
        if marked.elapsed() > RESTORE_DEADLINE {
            return Err(CheckError::Fail(format!(
                "{node}'s Ready condition set Unknown by another writer is not True {} s later: its agent does not \
                 write the node's status again (the node would be NotReady until its next periodic write, and its \
                 pods evicted meanwhile)",
                RESTORE_DEADLINE.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(format!("{node} Ready again {:.1} s after another writer set it Unknown", marked.elapsed().as_secs_f64()))
}
