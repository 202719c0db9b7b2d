//! Pods and containers: spec, status, exec.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// When the agent starts a container again after it exits, as Kubernetes' `restartPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Restart after every exit (the default, like a Deployment's pods).
    #[default]
    Always,
    /// Restart only after a non-zero exit; exit 0 leaves the container terminated.
    OnFailure,
    /// Never restart: the pod ends Succeeded or Failed once every container has exited.
    Never,
}

/// Resource amounts already parsed from Kubernetes quantities (the CLI parses `500m`, `64Mi`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceAmounts {
    /// CPU in millicores (`500m` = 500, `2` = 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// Memory in bytes (`64Mi` = 67108864, `128M` = 128000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// Requests and limits of one container, with Kubernetes' meaning: they map to cgroup weights, quotas and
/// `memory.max`, and together decide the pod's `QosClass`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// What the container asks for: the CPU request sets its cgroup's CPU weight (shares); both count for
    /// the QoS class.
    #[serde(default)]
    pub requests: ResourceAmounts,
    /// Caps the kernel enforces: the CPU limit becomes a CFS quota, the memory limit `memory.max`.
    #[serde(default)]
    pub limits: ResourceAmounts,
}

/// One process of a pod, in its own cgroup and (unless the pod shares it) its own PID namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// DNS label, unique in the pod; names its cgroup and `exec`'s target.
    pub name: String,
    /// argv; resolved with the guest's PATH. With an `image`, Kubernetes' `command`: replaces the image's
    /// Entrypoint (and drops its Cmd); empty means the image's.
    #[serde(default)]
    pub command: Vec<String>,
    /// With an `image`, Kubernetes' `args`: replace the image's Cmd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The container's own root filesystem: an OCI image in the node's store by manifest digest
    /// (`sha256:<hex>`) or by a name it was imported under (`busybox`, `registry.local/app:v2`;
    /// [`crate::image_ref`]), or an image layout directory or `oci-archive` on the node by absolute path
    /// (imported into the store at first use). None: the container shares the node's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Environment variables the process starts with.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// CPU and memory requests and limits.
    #[serde(default)]
    pub resources: Resources,
    /// `pids.max` for the container's cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u64>,
    /// Volumes of the pod mounted into the container (only with an `image`).
    #[serde(default, rename = "volumeMounts", skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<crate::VolumeMount>,
    /// User, capabilities, read-only root (only with an `image`).
    #[serde(default, rename = "securityContext", skip_serializing_if = "Option::is_none")]
    pub security_context: Option<crate::SecurityContext>,
    /// `livenessProbe`, `readinessProbe`, `startupProbe` (ports already numbers: the CLI and the control
    /// plane resolve the container's port names).
    #[serde(default, skip_serializing_if = "crate::probe::Probes::is_empty")]
    pub probes: crate::probe::Probes,
}

/// `POST /v1/pods` with this body creates a pod; the name is the key (re-posting an identical spec is a no-op).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    /// DNS label, unique on the node: the key of the pod for every later request.
    pub name: String,
    /// At least one; each runs in its own cgroup below the pod's.
    pub containers: Vec<ContainerSpec>,
    /// What happens when a container exits.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Containers share one PID namespace (the infra process's) instead of one each.
    #[serde(default)]
    pub share_process_namespace: bool,
    /// The pod uses the node's network namespace: no veth, the node's IP.
    #[serde(default)]
    pub host_network: bool,
    /// The namespace of the pod's mirror in the cluster API, as a static pod manifest's
    /// `metadata.namespace` (default `default`). Unused while the node follows no API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The labels of the pod's mirror in the cluster API: what Services and NetworkPolicies select it by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// What the containers' `volumeMounts` can mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::Volume>,
    /// Defaults of the containers' `securityContext`.
    #[serde(default, rename = "securityContext", skip_serializing_if = "Option::is_none")]
    pub security_context: Option<crate::PodSecurityContext>,
}

/// Where a pod is in its life, computed from its containers the way the kubelet computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    /// A container has not started yet (its sandbox or process is still being created).
    Pending,
    /// Containers are running, or waiting to be restarted.
    Running,
    /// Every container exited with 0 and none will be restarted.
    Succeeded,
    /// Every container exited, at least one with a non-zero code, and none will be restarted.
    Failed,
}

/// Kubernetes QoS class, derived from requests and limits the way the kubelet derives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QosClass {
    /// Every container has CPU and memory limits and requests equal to them (unset requests default to the
    /// limits): the last to be reclaimed.
    Guaranteed,
    /// Some request or limit is set, but not the Guaranteed way.
    Burstable,
    /// No requests or limits at all: the first to be reclaimed under pressure.
    BestEffort,
}

/// One container's state, as Kubernetes reports it (`state` in JSON: `waiting`, `running`, `terminated`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ContainerState {
    /// Not running yet, or between restarts.
    Waiting {
        /// Why, in Kubernetes' words, e.g. `ContainerCreating`.
        reason: String,
    },
    /// The process is alive.
    Running {
        /// Its PID as the agent sees it (the guest's root PID namespace).
        pid: u32,
    },
    /// `reason` is `Completed`, `Error` or `OOMKilled` (from the cgroup's memory.events).
    Terminated {
        /// The process's exit code, or 128 + the signal that killed it.
        exit_code: i32,
        /// `Completed`, `Error` or `OOMKilled`.
        reason: String,
    },
}

/// One container of `PodStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// The container's name from the spec.
    pub name: String,
    /// Current state.
    pub state: ContainerState,
    /// How many times the agent started the container again after it exited.
    pub restart_count: u32,
    /// Kubernetes' `ready`: running, started, and its readiness probe (if any) passing.
    #[serde(default)]
    pub ready: bool,
    /// Kubernetes' `started`: running and its startup probe (if any) passed.
    #[serde(default)]
    pub started: bool,
    /// How the previous run ended (`Terminated`), once the container has been restarted: Kubernetes'
    /// `lastState`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_state: Option<ContainerState>,
    /// Absolute cgroup directory of the container, e.g. `/sys/fs/cgroup/testbed/pod-web/srv`.
    pub cgroup: String,
}

/// `GET /v1/pods/{pod}`: a pod as the agent sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    /// The pod's name from the spec.
    pub name: String,
    /// Phase derived from the containers' states and the restart policy.
    pub phase: PodPhase,
    /// QoS class derived from the containers' requests and limits.
    pub qos_class: QosClass,
    /// None for hostNetwork pods until the node IP is known, and before the sandbox exists.
    pub ip: Option<Ipv4Addr>,
    /// PID of the infra ("pause") process holding the pod's namespaces.
    pub infra_pid: Option<u32>,
    /// Host-side veth name in `cni0`.
    pub host_veth: Option<String>,
    /// Absolute cgroup directory of the pod, parent of its containers' cgroups.
    pub cgroup: String,
    /// One entry per container of the spec, in its order.
    pub containers: Vec<ContainerStatus>,
}

/// `POST /v1/pods/{pod}/exec`: run a command inside a pod: in its network, UTS and IPC namespaces (the infra
/// process's), or, when `container` is set, in every namespace of that container's process (network, UTS,
/// IPC, PID, mount, cgroup) and its cgroup, so the command sees what the container sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Container whose namespaces and cgroup the command joins; without one it runs in the pod's shared
    /// namespaces (network, UTS, IPC) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// argv, resolved with the guest's PATH; must name a program.
    pub command: Vec<String>,
    /// Bytes written to the command's stdin, then closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Killed after this many seconds (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// Answer to an exec: the command's exit and its whole output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResponse {
    /// Exit code, or 128+signal when killed; `timed_out` tells a timeout kill apart.
    pub exit_code: i32,
    /// Everything the command wrote to stdout, as UTF-8 (invalid bytes replaced).
    pub stdout: String,
    /// Everything the command wrote to stderr, as UTF-8 (invalid bytes replaced).
    pub stderr: String,
    /// True when the agent killed the command at `timeout_secs`.
    pub timed_out: bool,
}

/// Query of `DELETE /v1/pods/{pod}[?grace_period_secs=N]`: as `kubectl delete --grace-period`, containers get
/// SIGTERM and are SIGKILLed when they are still running N seconds later (0 = at once). Without it the agent's
/// default applies (30 s, Kubernetes' `terminationGracePeriodSeconds`). A container whose PID 1 ignores
/// SIGTERM (`sleep` as PID 1 of its PID namespace does) takes the whole grace period. Answer: 204 once the
/// processes, host veth, IP lease, cgroups and state of the pod are gone. When some of them could not be
/// removed the answer is 500 with `ApiError::leaked` naming each one: the pod is gone from the API (404 on
/// GET) but the agent keeps its teardown and retries it on every reconcile pass (3 s), on a repeated DELETE
/// (which answers 204 once nothing is left) and before a POST of the same name (409 while something is left).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletePodOptions {
    /// Seconds between SIGTERM and SIGKILL; none takes the agent's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_secs: Option<u64>,
}

/// Kind of a `Leak`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakKind {
    /// The pod's host-side veth (in the node's network namespace).
    Veth,
    /// The pod's IP lease (the address stays allocated).
    Lease,
    /// A cgroup of the pod or one of its containers.
    Cgroup,
}

/// One thing a pod deletion could not remove, in `ApiError::leaked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leak {
    /// What it is.
    pub kind: LeakKind,
    /// Which one: the veth name, the leased address (or the pod, when the address is unknown), the cgroup's
    /// absolute directory.
    pub name: String,
    /// Why its removal failed.
    pub error: String,
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            LeakKind::Veth => "veth",
            LeakKind::Lease => "lease",
            LeakKind::Cgroup => "cgroup",
        };
        write!(f, "{kind} {} ({})", self.name, self.error)
    }
}
