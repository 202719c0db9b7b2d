//! The node's own objects: its Node (registered by the agent: podCIDR from the applied NodeSpec and the
//! subnet lease's annotations (`leases::annotations`), the underlay address, CPU and memory of the guest, the Ready condition with its heartbeat) and its Lease
//! `kube-node-lease/<node>`, renewed every `LEASE_RENEW` as the kubelet does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use testbed_api::objects::{
    Condition, Lease, LeaseSpec, Node, NodeAddress, NodeSpec, NodeStatus, NodeSystemInfo, ObjectMeta,
};
use testbed_control_plane::client::{now_rfc3339_micro, paths, Client, ClientError};

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The kubelet's defaults: renewed every 10 s, held for 40 s.
pub const LEASE_RENEW: Duration = Duration::from_secs(testbed_api::NODE_LEASE_RENEW_SECS);
pub const LEASE_DURATION_SECS: i32 = 40;
/// The Node's status is written when it changes, and at least this often (its Ready heartbeat); the Lease
/// is the frequent liveness signal, as in Kubernetes.
pub const NODE_STATUS_PERIOD: Duration = Duration::from_secs(60);

/// What the guest has, read once per registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub cpus: usize,
    pub memory_kib: u64,
    pub info: NodeSystemInfo,
}

impl Machine {
    pub fn read() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let os_release = read("/etc/os-release");
        let os_image = os_release
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        let info = NodeSystemInfo {
            kernel_version: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os_image,
            operating_system: "linux".into(),
            architecture: if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }.into(),
            kubelet_version: format!("testbed-agent/{}", env!("CARGO_PKG_VERSION")),
        };
        Self { cpus, memory_kib, info }
    }
}

/// What the agent's runtime says about the node's network.
pub struct NodeView<'a> {
    pub name: &'a str,
    pub spec: Option<&'a testbed_api::NodeSpec>,
    pub converged: bool,
    pub last_error: Option<&'a str>,
}

/// What the agent registers: the Node's spec and its subnet lease's annotations (none before a NodeSpec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub spec: NodeSpec,
    pub annotations: BTreeMap<String, String>,
}

pub fn registration(view: &NodeView<'_>) -> Registration {
    let cidr = view.spec.map(|s| s.pod_subnet.to_string());
    Registration {
        spec: NodeSpec { pod_cidrs: cidr.iter().cloned().collect(), pod_cidr: cidr, unschedulable: false },
        annotations: view.spec.map(super::leases::annotations).unwrap_or_default(),
    }
}

/// The Node's status; `heartbeat` is the time to report as the Ready condition's last heartbeat.
pub fn status_of(view: &NodeView<'_>, machine: &Machine, prev: Option<&NodeStatus>, heartbeat: &str) -> NodeStatus {
    let mut addresses = Vec::new();
    if let Some(spec) = view.spec {
        addresses.push(NodeAddress { type_: "InternalIP".into(), address: spec.underlay.address.to_string() });
    }
    addresses.push(NodeAddress { type_: "Hostname".into(), address: view.name.to_string() });
    let (ready, reason, message) = match (view.spec, view.converged) {
        (Some(_), true) => ("True", "KubeletReady", "testbed-agent is posting ready status".to_string()),
        (None, _) => ("False", "NetworkNotReady", "no NodeSpec applied yet".to_string()),
        (Some(_), false) => {
            ("False", "NetworkNotReady", view.last_error.unwrap_or("network not converged").to_string())
        }
    };
    let since = prev
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == "Ready" && c.status == ready))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| heartbeat.to_string());
    let capacity = BTreeMap::from([
        ("cpu".to_string(), machine.cpus.to_string()),
        ("memory".to_string(), format!("{}Ki", machine.memory_kib)),
    ]);
    NodeStatus {
        addresses,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: ready.into(),
            last_heartbeat_time: Some(heartbeat.to_string()),
            last_transition_time: Some(since),
            reason: Some(reason.into()),
            message: Some(message),
            last_update_time: None,
        }],
        allocatable: capacity.clone(),
        capacity,
        node_info: Some(machine.info.clone()),
    }
}

/// The status of a node's Ready condition.
pub fn ready(status: Option<&NodeStatus>) -> Option<&str> {
    status?.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.status.as_str())
}

/// Whether two statuses differ in more than the heartbeat.
pub fn changed(a: &NodeStatus, b: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        s.conditions.iter_mut().for_each(|c| c.last_heartbeat_time = None);
        s
    };
    strip(a) != strip(b)
}

/// Creates the Node, or brings an existing one's spec and annotations to `reg` (other annotations are
/// left as they are); answers the status it holds.
pub async fn register(api: &Client, name: &str, reg: &Registration) -> Result<Option<NodeStatus>, ClientError> {
    let spec = &reg.spec;
    match api.get::<Node>(&paths::node(name)).await {
        Ok(node) => {
            let held = &node.metadata.annotations;
            if node.spec.pod_cidr != spec.pod_cidr || reg.annotations.iter().any(|(k, v)| held.get(k) != Some(v)) {
                let patch = json!({"metadata": {"annotations": reg.annotations},
                    "spec": {"podCIDR": spec.pod_cidr, "podCIDRs": spec.pod_cidrs}});
                api.merge_patch::<Node>(&paths::node(name), &patch).await?;
            }
            Ok(node.status)
        }
        Err(e) if e.is_not_found() => {
            let node = Node {
                api_version: "v1".into(),
                kind: "Node".into(),
                metadata: ObjectMeta { name: name.into(), annotations: reg.annotations.clone(), ..Default::default() },
                spec: spec.clone(),
                status: None,
            };
            api.create(&paths::nodes(), &node).await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Renews the node's Lease, creating it when it is not there; answers the renewal time.
pub async fn renew_lease(api: &Client, node: &str) -> Result<String, ClientError> {
    let now = now_rfc3339_micro();
    let path = paths::lease(LEASE_NAMESPACE, node);
    let patch =
        json!({"spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_DURATION_SECS, "renewTime": now}});
    match api.merge_patch::<Lease>(&path, &patch).await {
        Ok(_) => Ok(now),
        Err(e) if e.is_not_found() => {
            let lease = Lease {
                api_version: "coordination.k8s.io/v1".into(),
                kind: "Lease".into(),
                metadata: ObjectMeta {
                    name: node.into(),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    ..Default::default()
                },
                spec: LeaseSpec {
                    holder_identity: Some(node.into()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECS),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now.clone()),
                    lease_transitions: None,
                },
            };
            api.create(&paths::leases(LEASE_NAMESPACE), &lease).await?;
            Ok(now)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_status_reports_the_spec_machine_and_readiness() {
        let spec = testbed_test_support::node_spec::sample_node_spec(1, 2, testbed_api::Backend::Vxlan);
        let machine = Machine { cpus: 2, memory_kib: 2_000_000, info: NodeSystemInfo::default() };
        let view = NodeView { name: "node1", spec: Some(&spec), converged: true, last_error: None };
        let s = status_of(&view, &machine, None, "T1");
        assert_eq!(s.addresses[0].address, spec.underlay.address.to_string());
        assert_eq!((s.capacity["cpu"].as_str(), s.allocatable["memory"].as_str()), ("2", "2000000Ki"));
        let reg = registration(&view);
        assert_eq!(reg.spec.pod_cidr, Some(spec.pod_subnet.to_string()));
        assert_eq!(reg.annotations[super::super::leases::PUBLIC_IP], spec.underlay.address.to_string());
        assert_eq!(s.conditions[0].status, "True");

        // A newer heartbeat alone is no change; a network that stopped converging is one, dated then.
        let beat = status_of(&view, &machine, Some(&s), "T2");
        assert!(!changed(&s, &beat));
        let broken = NodeView { converged: false, last_error: Some("apply: eth1 missing"), ..view };
        let down = status_of(&broken, &machine, Some(&beat), "T3");
        assert!(changed(&beat, &down));
        let ready = &down.conditions[0];
        assert_eq!((ready.status.as_str(), ready.last_transition_time.as_deref()), ("False", Some("T3")));
        assert_eq!(ready.message.as_deref(), Some("apply: eth1 missing"));
    }
}
