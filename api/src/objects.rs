//! Objects of the cluster control plane in the Kubernetes wire format (JSON field names, `apiVersion`/`kind`,
//! `metadata`, `spec`, `status`): Namespace, Node, Pod and Lease (`coordination.k8s.io/v1`), and the
//! `Status` every error answer carries.
//!
//! They are a subset of the Kubernetes schemas: the fields testbed acts on. Standard clients (kubectl, kube-rs
//! with k8s-openapi) read and write them unchanged; a field outside the subset is refused when the client asks
//! for strict field validation (kubectl does by default) and dropped with a warning otherwise, as the
//! Kubernetes API server does. Own types rather than k8s-openapi's keep the static agent, which serves them,
//! small (docs/architecture.md has the measurements).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{PodPhase, RestartPolicy};

/// `metadata` of every object. The server sets `uid`, `resourceVersion`, `creationTimestamp` and
/// `generation`; clients set the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The object's name: a DNS label, unique per kind (and namespace, for namespaced kinds).
    #[serde(default)]
    pub name: String,
    /// Namespace of a namespaced object; none for Namespace and Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Unique for the object's whole life: a deleted and recreated object gets a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The etcd revision of the object's last change: an update carrying an older one is refused (409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Bumped by the server on every change of `spec` (1 at creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// RFC 3339 time of creation, in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Key/value pairs selectors match (`-l app=web`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Key/value pairs for tools, not for selection.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

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

/// A condition of a Node or Pod (`Ready`: `True`/`False`/`Unknown`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// What the condition is about, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// RFC 3339 time the reporter last confirmed the condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<String>,
    /// RFC 3339 time `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// One CamelCase word for machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A sentence for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `v1 Pod`: containers run together on one node by its agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// `v1`.
    #[serde(default)]
    pub api_version: String,
    /// `Pod`.
    #[serde(default)]
    pub kind: String,
    /// Name, namespace, labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What to run.
    #[serde(default)]
    pub spec: PodSpec,
    /// Where it runs and how it is going, written by the node's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

/// `spec` of a Pod: the Kubernetes fields that map onto testbed's own [`crate::PodSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// At least one.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// The node the pod runs on; empty until it is placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// `Always` (default), `OnFailure` or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// The pod uses the node's network namespace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// Containers share one PID namespace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub share_process_namespace: bool,
    /// Seconds between SIGTERM and SIGKILL at deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
}

/// One container of a Pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// DNS label, unique in the pod.
    #[serde(default)]
    pub name: String,
    /// Kept as given and not pulled: testbed runs programs of the guest's root file system (so manifests
    /// written for Kubernetes load unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The program and its first arguments, resolved with the guest's PATH.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// More arguments, appended to `command`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// One environment variable of a Container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Its value (empty when absent).
    #[serde(default)]
    pub value: String,
}

/// `status` of a Pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `Pending` until the node's agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PodPhase>,
    /// The node's underlay address.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "hostIP")]
    pub host_ip: Option<String>,
    /// The pod's address in its node's pod subnet.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "podIP")]
    pub pod_ip: Option<String>,
    /// `Ready` and the other pod conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// A sentence about the phase, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// One entry per container of the spec, in its order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
}

/// One entry of a Pod's `status.containerStatuses`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name from the spec.
    pub name: String,
    /// The container runs (testbed has no readiness probes: running is ready).
    #[serde(default)]
    pub ready: bool,
    /// How many times the node's agent started the container again after it exited.
    #[serde(default)]
    pub restart_count: u32,
    /// The image as the spec names it (testbed runs the guest's programs, see [`Container::image`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Exactly one of `waiting`, `running`, `terminated`.
    #[serde(default)]
    pub state: ContainerState,
}

/// `state` of a [`ContainerStatus`]: one of its fields is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    /// Not running yet, or between restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<ContainerStateWaiting>,
    /// The process is alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<ContainerStateRunning>,
    /// The process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<ContainerStateTerminated>,
}

/// `state.waiting` of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStateWaiting {
    /// `ContainerCreating`, `CrashLoopBackOff`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `state.running` of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStateRunning {
    /// RFC 3339 time the node's agent first saw it running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

/// `state.terminated` of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStateTerminated {
    /// The exit code, or 128 + the signal that killed it.
    #[serde(default)]
    pub exit_code: i32,
    /// `Completed`, `Error` or `OOMKilled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `coordination.k8s.io/v1 Lease`: a holder and a renewal time (node heartbeats, subnet leases).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// `coordination.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `Lease`.
    #[serde(default)]
    pub kind: String,
    /// Name, namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Holder and times.
    #[serde(default)]
    pub spec: LeaseSpec,
}

/// `spec` of a Lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseSpec {
    /// Who holds the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_identity: Option<String>,
    /// How long the holder keeps it without renewing; above 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_duration_seconds: Option<i32>,
    /// RFC 3339 time (with microseconds) the current holder took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquire_time: Option<String>,
    /// RFC 3339 time (with microseconds) of the holder's last renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_time: Option<String>,
    /// How many times the holder changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_transitions: Option<i32>,
}

/// `v1 Status`: the body of every error answer (and of some successes), as Kubernetes sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `v1`.
    pub api_version: String,
    /// `Status`.
    pub kind: String,
    /// `Success` or `Failure`.
    pub status: String,
    /// For people: what went wrong.
    pub message: String,
    /// One CamelCase word for machines: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `Expired`, ...
    pub reason: String,
    /// The object and, for `Invalid`, the fields to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    /// The HTTP status code.
    pub code: u16,
}

/// `details` of a Status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    /// The object's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The resource (`pods`), despite the field's name, as Kubernetes fills it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// One entry per field to blame.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

/// One field to blame in a Status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusCause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, ...
    pub reason: String,
    /// What is wrong with the field.
    pub message: String,
    /// The field as a path: `spec.containers[0].command`.
    pub field: String,
}

impl Pod {
    /// The node agent's [`crate::PodSpec`] for this pod (`command` and `args` joined, as the runtime does),
    /// so the control plane runs the same checks ([`crate::validate::validate_pod`]) as the CLI and the agent.
    pub fn to_agent_spec(&self) -> crate::PodSpec {
        let containers = self
            .spec
            .containers
            .iter()
            .map(|c| crate::ContainerSpec {
                name: c.name.clone(),
                command: c.command.iter().chain(&c.args).cloned().collect(),
                env: c.env.iter().map(|e| (e.name.clone(), e.value.clone())).collect(),
                resources: crate::Resources::default(),
                pids_limit: None,
            })
            .collect();
        crate::PodSpec {
            name: self.metadata.name.clone(),
            containers,
            restart_policy: self.spec.restart_policy.unwrap_or_default(),
            share_process_namespace: self.spec.share_process_namespace,
            host_network: self.spec.host_network,
        }
    }
}
