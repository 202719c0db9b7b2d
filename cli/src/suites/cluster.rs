//! The small surface the suites drive a lab through. The real implementation talks SSH and the agent API
//! (`lab_adapter.rs`); unit tests use a scripted fake (`fake.rs`), so the runner, the result model and the
//! renderers are tested without VMs.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use testbed_api::{
    ApplyResponse, ExecRequest, ExecResponse, LogChunk, LogQuery, NetworkPolicyStatus, NodeSpec, NodeStatus, PodSpec,
    PodStatus,
};

use crate::plan::{ContainerImage, Plan};

/// A lab operation failed below the suite: SSH, the agent's HTTP API, a 4xx/5xx. Always an infrastructure
/// failure from the suite's point of view (exit 3), never a failed check.
#[derive(Debug, thiserror::Error)]
#[error("node {node}: {step}: {message}")]
pub struct ClusterError {
    pub node: String,
    pub step: String,
    pub message: String,
}

impl ClusterError {
    pub fn new(node: &str, step: &str, message: impl std::fmt::Display) -> Self {
        ClusterError { node: node.to_string(), step: step.to_string(), message: message.to_string() }
    }
}

/// Output of a command run on a node (over SSH, in the node's root namespaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeExec {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A node as the checks address it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// Address on the overlay-carrying underlay NIC.
    pub underlay_ip: Ipv4Addr,
    pub underlay_mtu: u32,
    pub pod_subnet: Ipv4Net,
}

/// Facts about the lab recorded in results.json.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabFacts {
    pub qemu_version: Option<String>,
    pub accelerator: Option<String>,
    pub provider: Option<String>,
}

pub trait Cluster {
    fn plan(&self) -> &Plan;
    fn facts(&self) -> LabFacts;
    /// The node's serial console log on the host, copied into the debug bundle.
    fn serial_log(&self, node: &str) -> Option<PathBuf>;

    /// The host's CPU counters and the lab's own share of them, for telling a disturbed sample (perf);
    /// None when they cannot be read.
    fn host_counters(&self) -> Option<super::hostload::HostCounters>;

    /// Whether the nodes' agents follow the API's Services and NetworkPolicies into their kernels (a lab's
    /// do; the unit tests' fake has no data plane for them, so the `service` and `network-policy` groups run
    /// on labs only, and tests/conformance_e2e.rs requires their checks there).
    fn follows_api_networking(&self) -> bool {
        true
    }

    /// A client of the lab's API server (its kubeconfig), or why there is none.
    fn api(&self) -> impl Future<Output = Result<kube::Client, ClusterError>>;

    /// Puts a container image into the node's store as `up` does (copied over the node's SSH session, every
    /// blob checked by the node's `testbed-agent import-image`; nothing copied when the store has it) and
    /// answers its manifest digest, which a container's `image` then names.
    fn ensure_image(&self, node: &str, image: &ContainerImage) -> impl Future<Output = Result<String, ClusterError>>;

    fn node_exec(&self, node: &str, command: &str) -> impl Future<Output = Result<NodeExec, ClusterError>>;
    /// `command` bounded on the node itself to `timeout_secs` (killed there when it overruns, as the agent
    /// bounds an exec in a pod: a run that never ends is the command's failure, not the session's), with
    /// `timed_out` set then.
    fn node_exec_bounded(
        &self,
        node: &str,
        command: &str,
        timeout_secs: u64,
    ) -> impl Future<Output = Result<ExecResponse, ClusterError>>;
    fn apply(&self, node: &str, spec: &NodeSpec) -> impl Future<Output = Result<ApplyResponse, ClusterError>>;
    fn node_status(&self, node: &str) -> impl Future<Output = Result<NodeStatus, ClusterError>>;
    /// The node's NetworkPolicy table and the API policies it is built from (`GET /v1/network-policies`).
    fn network_policy_status(&self, node: &str) -> impl Future<Output = Result<NetworkPolicyStatus, ClusterError>>;
    fn create_pod(&self, node: &str, spec: &PodSpec) -> impl Future<Output = Result<PodStatus, ClusterError>>;
    fn get_pod(&self, node: &str, pod: &str) -> impl Future<Output = Result<PodStatus, ClusterError>>;
    /// `grace`: SIGTERM -> SIGKILL delay (`None`: the agent's default, 30 s as Kubernetes).
    fn delete_pod(
        &self,
        node: &str,
        pod: &str,
        grace: Option<std::time::Duration>,
    ) -> impl Future<Output = Result<(), ClusterError>>;
    fn pod_exec(
        &self,
        node: &str,
        pod: &str,
        req: &ExecRequest,
    ) -> impl Future<Output = Result<ExecResponse, ClusterError>>;
    /// A chunk of a container's log (`GET /v1/pods/{name}/log`), the running instance's or the previous one's.
    fn container_log(
        &self,
        node: &str,
        pod: &str,
        query: &LogQuery,
    ) -> impl Future<Output = Result<LogChunk, ClusterError>>;
}

/// The nodes of a plan, in topology order, as the checks address them. The underlay address and MTU come from
/// the NodeSpec the agents get, so the suites and the agents agree on which NIC carries the overlay.
pub fn nodes_of(plan: &Plan) -> Vec<NodeInfo> {
    plan.nodes
        .iter()
        .map(|n| {
            let spec = plan.node_spec(n, plan.cluster.backend);
            NodeInfo {
                name: n.name.clone(),
                underlay_ip: spec.underlay.address,
                underlay_mtu: spec.underlay.mtu,
                pod_subnet: n.pod_subnet,
            }
        })
        .collect()
}
