//! `v1 Service`: a stable virtual address (`clusterIP`) and ports, load-balanced over the pods its selector
//! picks; `discovery.k8s.io/v1 EndpointSlice`: those pods' addresses and ports, which the control plane
//! computes and every node's proxy follows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{IntOrString, ObjectMeta, ObjectReference};

/// The label that ties an EndpointSlice to its Service, as Kubernetes names it.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

/// `v1 Service`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// `v1`.
    #[serde(default)]
    pub api_version: String,
    /// `Service`.
    #[serde(default)]
    pub kind: String,
    /// Name (a DNS-1035 label), namespace, labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the Service offers and to which pods.
    #[serde(default)]
    pub spec: ServiceSpec,
}

/// `spec` of a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP` (default) or `NodePort`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub type_: Option<String>,
    /// The pods it sends to: those of its namespace with all these labels. None: no endpoints are computed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// At least one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// The virtual address: allocated from the service CIDR when empty, fixed when given, `None` for a
    /// headless Service (no virtual address, no proxying).
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    /// `[clusterIP]` (single-stack IPv4): kept equal to `clusterIP`.
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<String>,
    /// `None` (default) or `ClientIP`: a client keeps its endpoint for `sessionAffinityConfig`'s timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    /// The ClientIP affinity's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// `Cluster` (default): pods and nodes reach every endpoint; `Local`: only the endpoints on their node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<String>,
    /// NodePort only. `Cluster` (default): any endpoint, the client's address masqueraded; `Local`: only the
    /// node's own endpoints, the client's address kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<String>,
    /// `SingleStack`: testbed's Services are IPv4 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family_policy: Option<String>,
    /// `[IPv4]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_families: Vec<String>,
}

/// One port of a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Required when there are several ports; unique; a DNS label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP` (default) or `UDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The port on the cluster IP, 1-65535.
    pub port: i32,
    /// The pods' port: a number, or the name of a container port; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// NodePort Services: the port on every node's address, allocated from 30000-32767 when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
}

/// `sessionAffinityConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinityConfig {
    /// `clientIP`.
    #[serde(default, rename = "clientIP", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<ClientIpConfig>,
}

/// `sessionAffinityConfig.clientIP`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    /// 1-86400 s; default 10800 (3 hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

/// `discovery.k8s.io/v1 EndpointSlice`: some of one Service's endpoints (at most 100), labelled with
/// [`SERVICE_NAME_LABEL`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// `discovery.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `EndpointSlice`.
    #[serde(default)]
    pub kind: String,
    /// Name, namespace, the Service's label, the owner reference to the Service.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `IPv4`.
    #[serde(default)]
    pub address_type: String,
    /// The pods.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The ports every endpoint of this slice serves (the Service's ports, resolved on these pods).
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

/// One endpoint: a pod's address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The pod IP (one).
    pub addresses: Vec<String>,
    /// Ready, serving, terminating.
    #[serde(default)]
    pub conditions: EndpointConditions,
    /// The node the pod runs on (`internalTrafficPolicy`/`externalTrafficPolicy: Local` use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<ObjectReference>,
}

/// `conditions` of an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConditions {
    /// The pod is Ready and not terminating: proxies send new connections to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// The pod is Ready (terminating or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    /// The pod is being deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

/// One port of an EndpointSlice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    /// The Service port's name (empty for a single unnamed port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP` or `UDP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The pods' port number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}
