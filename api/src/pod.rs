//! Pods and containers: spec, status, exec.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// Resource amounts already parsed from Kubernetes quantities (the CLI parses `500m`, `64Mi`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceAmounts {
    /// CPU in millicores (`500m` = 500, `2` = 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub requests: ResourceAmounts,
    #[serde(default)]
    pub limits: ResourceAmounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    /// argv; resolved with the guest's PATH.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: Resources,
    /// `pids.max` for the container's cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u64>,
}

/// `POST /v1/pods` with this body creates a pod; the name is the key (re-posting an identical spec is a no-op).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    pub name: String,
    pub containers: Vec<ContainerSpec>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Containers share one PID namespace (the infra process's) instead of one each.
    #[serde(default)]
    pub share_process_namespace: bool,
    /// The pod uses the node's network namespace: no veth, the node's IP.
    #[serde(default)]
    pub host_network: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// Kubernetes QoS class, derived from requests and limits the way the kubelet derives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ContainerState {
    Waiting {
        reason: String,
    },
    Running {
        pid: u32,
    },
    /// `reason` is `Completed`, `Error` or `OOMKilled` (from the cgroup's memory.events).
    Terminated {
        exit_code: i32,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub state: ContainerState,
    pub restart_count: u32,
    /// Absolute cgroup directory of the container, e.g. `/sys/fs/cgroup/testbed/pod-web/srv`.
    pub cgroup: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    pub name: String,
    pub phase: PodPhase,
    pub qos_class: QosClass,
    /// None for hostNetwork pods until the node IP is known, and before the sandbox exists.
    pub ip: Option<Ipv4Addr>,
    /// PID of the infra ("pause") process holding the pod's namespaces.
    pub infra_pid: Option<u32>,
    /// Host-side veth name in `cni0`.
    pub host_veth: Option<String>,
    pub cgroup: String,
    pub containers: Vec<ContainerStatus>,
}

/// `POST /v1/pods/{pod}/exec`: run a command inside a pod (its network, UTS and IPC namespaces; and the named
/// container's PID and mount namespaces and cgroup when `container` is set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub command: Vec<String>,
    /// Bytes written to the command's stdin, then closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Killed after this many seconds (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResponse {
    /// Exit code, or 128+signal when killed; `timed_out` tells a timeout kill apart.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// Query of `DELETE /v1/pods/{pod}[?grace_period_secs=N]`: as `kubectl delete --grace-period`, containers get
/// SIGTERM and are SIGKILLed when they are still running N seconds later (0 = at once). Without it the agent's
/// default applies (30 s, Kubernetes' `terminationGracePeriodSeconds`). A container whose PID 1 ignores
/// SIGTERM (`sleep` as PID 1 of its PID namespace does) takes the whole grace period. Answer: 204.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletePodOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_secs: Option<u64>,
}
