//! A topology that passed every check of `validate`: what the file declares, with defaults applied and every
//! value parsed and cross-checked. The planner (`crate::plan`) reads only this and adds what testbed assigns
//! (addresses, MACs, ports, host-side names); this module knows nothing of the plan.
//!
//! The value types below (images, impairments, declared tests) go into the Plan unchanged, so their serde
//! shape is part of plan.json: changing it is a plan format change (`crate::plan::PLAN_VERSION`).

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use testbed_api::{Backend, PodSpec};

/// A topology that passed every check, with every value parsed. Only `validate::check` makes one, so the
/// planner may rely on what the checks guarantee (see the fields).
#[derive(Debug, Clone)]
pub struct CheckedTopology {
    /// The lab name, a valid `is_lab_name`.
    pub lab: String,
    /// sha256 of the topology file's bytes, hex: results name the exact file they ran against.
    pub source_sha256: String,
    /// In file order: a network's position numbers its bridge and its byte in MACs.
    pub networks: Vec<CheckedNetwork>,
    /// In file order: a node's position fixes its addresses, MACs, pod subnet and SSH port. Every network
    /// has room for all of them (host address `FIRST_HOST_OFFSET + index`).
    pub nodes: Vec<CheckedNode>,
    /// The pod CIDR holds at least one node subnet per node.
    pub cluster: CheckedCluster,
    /// Each on a node of `nodes`, with names unique and specs the agent accepts.
    pub pods: Vec<CheckedPod>,
    /// Names unique, pods and nodes they name exist.
    pub tests: Vec<DeclaredTest>,
    /// Namespace objects as the API server normalizes them, unique by name.
    pub namespaces: Vec<serde_json::Value>,
    /// Deployment objects as the API server normalizes them, unique by namespace and name.
    pub deployments: Vec<serde_json::Value>,
    /// Service manifests with their cluster IPs and node ports decided.
    pub services: Vec<serde_json::Value>,
    /// NetworkPolicy objects as the API server normalizes them, unique by namespace and name.
    pub network_policies: Vec<serde_json::Value>,
}

/// A network with its values resolved.
#[derive(Debug, Clone)]
pub struct CheckedNetwork {
    pub name: String,
    /// No overlap with another network, the pod CIDR or a reserved range.
    pub cidr: Ipv4Net,
    pub mtu: u32,
    pub impair: Impairment,
}

/// A node with defaults applied.
#[derive(Debug, Clone)]
pub struct CheckedNode {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub image: ImageRef,
    pub kernel_args: Vec<String>,
    /// Indices into `CheckedTopology::networks`: the cluster underlay first, then the others in file order.
    pub networks: Vec<usize>,
}

/// The pod network with defaults applied.
#[derive(Debug, Clone)]
pub struct CheckedCluster {
    pub pod_cidr: Ipv4Net,
    /// Longer than the pod CIDR's prefix and at most 29.
    pub node_subnet_prefix: u8,
    pub backend: Backend,
    /// Where Services' cluster IPs come from.
    pub service_cidr: Ipv4Net,
    /// Nodes of `nodes` running etcd and the API server, as listed: 1 or 3 of them, no repeats, each on a
    /// built image (which has etcd).
    pub control_plane: Vec<String>,
    /// The controller manager's node lifecycle times.
    pub node_lifecycle: NodeLifecycle,
}

/// When the controller manager gives up on a node: its Lease unrenewed for the grace period makes it
/// NotReady, and NotReady for the eviction timeout gets its pods deleted (their controllers recreate them
/// elsewhere). Whole seconds, as the controller manager's flags take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLifecycle {
    /// More than the agents' Lease renew interval.
    pub node_monitor_grace_period_seconds: u64,
    pub pod_eviction_timeout_seconds: u64,
}

impl Default for NodeLifecycle {
    /// Kubernetes' defaults: `--node-monitor-grace-period 40s`, and 300 s of the not-ready and unreachable
    /// taints' tolerations.
    fn default() -> Self {
        Self { node_monitor_grace_period_seconds: 40, pod_eviction_timeout_seconds: 300 }
    }
}

/// A pod of `pods:`, with its quantities parsed into the agent's PodSpec.
#[derive(Debug, Clone)]
pub struct CheckedPod {
    /// The node it runs on.
    pub node: String,
    /// Its containers' `image` is unset here: the digest is known once `up` has the image (see `images`).
    pub spec: PodSpec,
    /// The containers that have an image of their own, by container name.
    pub images: BTreeMap<String, ContainerImage>,
}

/// Where a container's image comes from on the host; `up` builds or reads it, copies it to the node and
/// gives the agent its manifest digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerImage {
    /// An image testbed builds from Debian packages (`testbed image oci build NAME`), one of
    /// `crate::image::oci::KNOWN_NAMES`.
    Built(String),
    /// An OCI image layout directory or `oci-archive` tarball on the host, absolute (a relative path in the
    /// file is taken from the file's directory); it existed when the file was checked.
    Path(PathBuf),
}

impl std::fmt::Display for ContainerImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContainerImage::Built(name) => f.write_str(name),
            ContainerImage::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Where a node's disk, kernel and initrd come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageRef {
    /// An image testbed builds from Debian packages, e.g. `debian-12`.
    Named(String),
    /// A downloaded disk image verified against its sha256 before use.
    Url { url: String, sha256: String },
}

/// Link impairments applied with tc netem on every tap of the network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Impairment {
    pub delay_ms: f64,
    pub jitter_ms: f64,
    pub loss_percent: f64,
    /// Rate limit in Mbit/s, none when absent.
    pub rate_mbit: Option<u64>,
}

impl Impairment {
    pub fn is_none(&self) -> bool {
        self.delay_ms == 0.0 && self.jitter_ms == 0.0 && self.loss_percent == 0.0 && self.rate_mbit.is_none()
    }
}

/// Where a declared test's probe runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestSource {
    /// Inside a pod of the topology's `pods:` (its network namespace).
    Pod(String),
    /// On a node, in the guest's root network namespace.
    Node(String),
}

/// What a declared test's probe aims at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestTarget {
    /// A pod of the topology's `pods:`, at the IP its agent reports when the test runs.
    Pod(String),
    /// A node's underlay address.
    Node(String),
    Ip(Ipv4Addr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestKind {
    Ping,
    /// A TCP connect, whatever the server speaks.
    Tcp,
    /// `GET /`, any 2xx.
    Http,
}

/// How much a failing declared test matters: `Warning` records `warn` and does not fail the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestLevel {
    #[default]
    Error,
    Warning,
}

/// A test from the topology's `tests:` (docs/tests.md), checked and resolved. The conformance suite runs it once
/// per backend, after its built-in checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredTest {
    /// Unique in the topology; the check is `[declared] <backend> <name>`.
    pub name: String,
    pub from: TestSource,
    pub to: TestTarget,
    pub kind: TestKind,
    /// tcp: always set; http: default 80; ping: none.
    pub port: Option<u16>,
    /// True: the probe must succeed; false: it must fail (an isolation test).
    pub expect_pass: bool,
    /// At least 1.
    pub attempts: u32,
    /// Pause between attempts.
    pub wait_ms: u64,
    pub level: TestLevel,
    /// When this test fails, the remaining declared tests of the backend are skipped.
    pub stop_on_error: bool,
    /// Backends the test applies to (a cross-node test makes no sense with `none`); empty = every backend.
    pub backends: Vec<Backend>,
}
