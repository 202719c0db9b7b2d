//! The fake cluster's control plane, for unit tests only: the real API server of `testbed-control-plane`
//! over its in-memory store (etcd's semantics, no etcd), served on loopback TLS, plus a scripted kubelet
//! that registers every node with a Lease and runs the pods bound to a node (status Running and Ready with
//! an IP of the node's subnet; a container whose program does not exist never gets Ready) until they are
//! deleted, and the real controller manager (controllers, scheduler, node lifecycle). Faults switch parts
//! of the kubelet or the controllers off.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::Client;
use testbed_control_plane::store::memory::Memory;
use testbed_control_plane::tls::Credentials;

use super::cluster::NodeInfo;

/// API pods the fake kubelet runs: node pod name -> (node, IP).
pub type ApiPods = Arc<Mutex<BTreeMap<String, (String, Ipv4Addr)>>>;

/// What the fake kubelet leaves out.
#[derive(Debug, Clone, Copy, Default)]
pub struct KubeletFaults {
    /// Pods bound to a node are never started (an agent that does not follow the API).
    pub ignores_pods: bool,
    /// Node Leases were last renewed two minutes ago (agents whose heartbeat stopped).
    pub stale_leases: bool,
    /// No controller manager runs (a control plane whose control loops are down).
    pub no_controllers: bool,
    /// A Ready condition another writer changed is left so (an agent that writes status only when its own
    /// view changes).
    pub keeps_overwritten_status: bool,
}

/// Starts the API server and the kubelet; returns a client of the server.
pub async fn start(nodes: Vec<NodeInfo>, faults: KubeletFaults, pods: ApiPods) -> Result<Client, String> {
    let creds = Credentials::generate(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]).map_err(|e| e.to_string())?;
    let acceptor = testbed_control_plane::tls::acceptor(creds.cert_pem.as_bytes(), creds.key_pem.as_bytes())
        .map_err(|e| e.to_string())?;
    let server = testbed_control_plane::apiserver::Server::new(
        Memory::default(),
        creds.token.clone(),
        testbed_control_plane::apiserver::DEFAULT_SERVICE_CIDR.parse().expect("cidr"),
    );
    server.bootstrap().await.map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.map_err(|e| e.to_string())?;
    let port = tcp.local_addr().map_err(|e| e.to_string())?.port();
    let listener = testbed_control_plane::tls::TlsListener::new(tcp, acceptor).map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, testbed_control_plane::apiserver::router(server)).await;
    });
    let kubeconfig =
        testbed_control_plane::kubeconfig("fake", &format!("https://127.0.0.1:{port}"), &creds.ca_pem, &creds.token);
    let kubeconfig: kube::config::Kubeconfig = serde_yaml::from_str(&kubeconfig).map_err(|e| e.to_string())?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.map_err(|e| e.to_string())?;
    let client = Client::try_from(config).map_err(|e| e.to_string())?;
    register(&client, &nodes, faults).await?;
    if !faults.no_controllers {
        let url = format!("https://127.0.0.1:{port}");
        let api = testbed_control_plane::client::Client::new(&[url], &creds.ca_pem, &creds.token)
            .map_err(|e| e.to_string())?;
        let ctx = testbed_control_plane::controllers::Context::new(Arc::new(api), "fake-control-plane");
        // Nobody else competes for the Lease: short times only make the first acquisition quick.
        let timing = testbed_control_plane::controllers::leader::Timing {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(1),
            retry_period: Duration::from_millis(200),
        };
        tokio::spawn(testbed_control_plane::controllers::manager::run(ctx, timing, std::future::pending()));
    }
    if !faults.ignores_pods {
        tokio::spawn(run_pods(client.clone(), nodes, pods, faults.keeps_overwritten_status));
    }
    Ok(client)
}

async fn register(client: &Client, nodes: &[NodeInfo], faults: KubeletFaults) -> Result<(), String> {
    let renewed =
        if faults.stale_leases { Timestamp::now() - SignedDuration::from_secs(120) } else { Timestamp::now() };
    for n in nodes {
        let node = Node {
            metadata: ObjectMeta { name: Some(n.name.clone()), ..Default::default() },
            spec: Some(NodeSpec { pod_cidr: Some(n.pod_subnet.to_string()), ..Default::default() }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: n.underlay_ip.to_string() }]),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                allocatable: Some(BTreeMap::from([
                    ("cpu".to_string(), Quantity("2".into())),
                    ("memory".to_string(), Quantity("2000000Ki".into())),
                ])),
                ..Default::default()
            }),
        };
        Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.map_err(|e| e.to_string())?;
        let status = serde_json::json!({"status": node.status});
        Api::<Node>::all(client.clone())
            .patch_status(&n.name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .map_err(|e| e.to_string())?;
        let lease = Lease {
            metadata: ObjectMeta { name: Some(n.name.clone()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(n.name.clone()),
                renew_time: Some(MicroTime(renewed)),
                ..Default::default()
            }),
        };
        Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
            .create(&PostParams::default(), &lease)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Polls the pods: a new one bound to a node is "started" (status Running, an IP of the node's subnet); one
/// deleted from the API leaves the node.
async fn run_pods(client: Client, nodes: Vec<NodeInfo>, running: ApiPods, keeps_overwritten: bool) {
    let api: Api<Pod> = Api::all(client.clone());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !keeps_overwritten {
            restore_nodes(&client).await;
        }
        let Ok(list) = api.list(&ListParams::default()).await else { continue };
        let mut seen = Vec::new();
        for pod in list.items {
            let (Some(name), Some(ns)) = (pod.metadata.name.clone(), pod.metadata.namespace.clone()) else { continue };
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
            if pod.metadata.deletion_timestamp.is_some() {
                // Deleted gracefully: "stopped" at once, then removed with grace 0, as the kubelet finishes it.
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
                    ..Default::default()
                };
                let _ = Api::<Pod>::namespaced(client.clone(), &ns).delete(&name, &params).await;
                continue;
            }
            // Kept by its node pod name, as the agent names it on the node.
            let node_pod = testbed_api::objects::node_pod_name(&ns, &name);
            seen.push(node_pod.clone());
            let Some(info) = nodes.iter().find(|n| n.name == node) else { continue };
            let ip = info.pod_subnet.hosts().nth(200).unwrap_or(info.pod_subnet.addr());
            // A container whose program does not exist never starts and is never Ready, as on a node.
            let crashing = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.command.as_ref())
                .is_some_and(|c| c.first().is_some_and(|p| p == super::conformance::NEVER_STARTS));
            let ready = if crashing { "False" } else { "True" };
            let started = running.lock().map(|r| r.contains_key(&node_pod)).unwrap_or(true);
            if started && (keeps_overwritten || ready_condition(pod.status.as_ref()) == Some(ready)) {
                continue;
            }
            let status = serde_json::json!({"status": {
                "phase": "Running", "podIP": ip.to_string(),
                "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": Timestamp::now().to_string()}],
            }});
            let patched = Api::<Pod>::namespaced(client.clone(), &ns)
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                .await;
            if patched.is_ok() {
                if let Ok(mut r) = running.lock() {
                    r.insert(node_pod, (node, ip));
                }
            }
        }
        if let Ok(mut r) = running.lock() {
            r.retain(|name, _| seen.contains(name));
        }
    }
}

/// The status of the pod's Ready condition.
fn ready_condition(status: Option<&k8s_openapi::api::core::v1::PodStatus>) -> Option<&str> {
    status?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").map(|c| c.status.as_str())
}

/// Sets every node's Ready condition True again where another writer changed it, as agents do.
async fn restore_nodes(client: &Client) {
    let api: Api<Node> = Api::all(client.clone());
    let Ok(list) = api.list(&ListParams::default()).await else { return };
    for node in list.items {
        let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
        if conditions.into_iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True") {
            continue;
        }
        let ready = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let name = node.metadata.name.unwrap_or_default();
        let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(ready)).await;
    }
}
