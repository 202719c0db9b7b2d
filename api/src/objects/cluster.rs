//! The cluster-scoped kinds: `v1 Namespace` and `v1 Node`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Condition, ObjectMeta};

/// `v1 Namespace`: a name scope for pods and leases.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    /// `v1`.
    #[serde(default)]
    pub api_version: String,
    /// `Namespace`.
    #[serde(default)]
    pub kind: String,
    /// Name and server-set metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `Active` (set by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NamespaceStatus>,
}

/// `status` of a Namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceStatus {
    /// `Active`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// `v1 Node`: one VM of the lab, registered by its agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `v1`.
    #[serde(default)]
    pub api_version: String,
    /// `Node`.
    #[serde(default)]
    pub kind: String,
    /// The node's name (the topology's node name).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Pod subnet and schedulability.
    #[serde(default)]
    pub spec: NodeSpec,
    /// Addresses and conditions, written by the node's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
}

/// `spec` of a Node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// The node's pod subnet, e.g. `10.244.1.0/24`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// Same as `podCIDR`, as a list (Kubernetes keeps both).
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    /// No new pods are placed on the node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unschedulable: bool,
}

/// `status` of a Node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// `InternalIP` (the underlay address) and `Hostname`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<NodeAddress>,
    /// `Ready` and the pressure conditions, as the kubelet reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// What the node has: `cpu` (cores) and `memory` (`Ki`), as the kubelet reads them from the machine.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, String>,
    /// What pods may use of it (testbed reserves nothing, so the same as `capacity`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allocatable: BTreeMap<String, String>,
    /// The guest's kernel, OS and agent, as `kubectl get nodes -o wide` shows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_info: Option<NodeSystemInfo>,
}

/// A Node's `status.nodeInfo`: the part of the Kubernetes fields a testbed guest can fill in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSystemInfo {
    /// `uname -r` of the guest.
    pub kernel_version: String,
    /// `PRETTY_NAME` of the guest's /etc/os-release.
    pub os_image: String,
    /// `linux`.
    pub operating_system: String,
    /// `amd64`, as Kubernetes spells the architecture.
    pub architecture: String,
    /// The node agent and its version (`testbed-agent/0.1.0`), where a kubelet reports its own.
    pub kubelet_version: String,
}

/// One entry of a Node's `status.addresses`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAddress {
    /// `InternalIP`, `ExternalIP` or `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The address.
    pub address: String,
}
