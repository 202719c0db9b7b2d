//! The Plan: everything about a lab resolved from its topology, deterministically (same file, same plan).
//! Providers, the agent specs and the suites read only the Plan, never the raw topology.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use testbed_api::{Backend, NodeSpec, PeerSpec, PodSpec, UnderlaySpec};

mod build;
mod names;
mod render;

pub use build::build;
pub use render::render_text;

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

/// One underlay L2 segment: a Linux bridge inside the lab's network namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkPlan {
    pub name: String,
    /// Bridge name inside the lab netns (<= 15 chars).
    pub bridge: String,
    pub cidr: Ipv4Net,
    pub mtu: u32,
    pub impair: Impairment,
}

/// One guest NIC on an underlay network, backed by a tap in the lab netns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicPlan {
    pub network: String,
    /// Name inside the guest: `eth1`, `eth2`, ... (`eth0` is the management NIC).
    pub guest_interface: String,
    /// Tap name inside the lab netns (<= 15 chars, carries the lab's prefix).
    pub tap: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    /// Position in the topology (stable, used for ports and addresses).
    pub index: usize,
    pub cpus: u32,
    pub memory_mib: u64,
    pub image: ImageRef,
    /// Extra kernel command-line arguments.
    pub kernel_args: Vec<String>,
    /// Host port on 127.0.0.1 forwarded to the guest's SSH port.
    pub ssh_port: u16,
    /// Underlay NICs; the first one carries the overlay.
    pub nics: Vec<NicPlan>,
    pub pod_subnet: Ipv4Net,
    pub vtep_mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPlan {
    pub pod_cidr: Ipv4Net,
    /// Prefix length of each node's pod subnet (flannel's SubnetLen, default 24).
    pub node_subnet_prefix: u8,
    pub backend: Backend,
}

/// A user pod from the topology, placed on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    pub node: String,
    pub spec: PodSpec,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Plan format version, bumped when fields change meaning.
    pub version: u32,
    pub lab: String,
    /// sha256 of the topology file's bytes, recorded in every result.
    pub topology_hash: String,
    /// The lab's network namespace on the host (`tb-<lab>`).
    pub netns: String,
    pub networks: Vec<NetworkPlan>,
    pub nodes: Vec<NodePlan>,
    pub cluster: ClusterPlan,
    pub pods: Vec<PodPlan>,
    /// The topology's declared tests (absent from plan.json files written before they were planned).
    #[serde(default)]
    pub tests: Vec<DeclaredTest>,
}

impl Plan {
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// True when both plans build the same lab: they differ at most in the topology's bytes (comments) and in
    /// the declared tests, which the suites read when they run and which change nothing that `up` creates.
    pub fn same_lab(&self, other: &Plan) -> bool {
        // Destructured so that a new field must be classified here.
        let Plan { version, lab, topology_hash: _, netns, networks, nodes, cluster, pods, tests: _ } = self;
        *version == other.version
            && *lab == other.lab
            && *netns == other.netns
            && *networks == other.networks
            && *nodes == other.nodes
            && *cluster == other.cluster
            && *pods == other.pods
    }

    /// The NodeSpec the agent on `node` must converge to, for `backend` (the suites switch backends on a
    /// running lab by re-applying with another one).
    pub fn node_spec(&self, node: &NodePlan, backend: Backend) -> NodeSpec {
        let overlay_nic = |n: &NodePlan| n.nics.first().cloned();
        let nic = overlay_nic(node);
        NodeSpec {
            node_name: node.name.clone(),
            underlay: UnderlaySpec {
                interface: nic.as_ref().map_or_else(|| "eth1".into(), |n| n.guest_interface.clone()),
                address: nic.as_ref().map_or(Ipv4Addr::UNSPECIFIED, |n| n.ip),
                prefix_len: nic.as_ref().map_or(0, |n| n.prefix_len),
                mtu: nic.as_ref().map_or(1500, |n| n.mtu),
            },
            pod_cidr: self.cluster.pod_cidr,
            pod_subnet: node.pod_subnet,
            backend,
            vtep_mac: node.vtep_mac.clone(),
            peers: self
                .nodes
                .iter()
                .filter(|p| p.name != node.name)
                .filter_map(|p| {
                    overlay_nic(p).map(|nic| PeerSpec {
                        name: p.name.clone(),
                        underlay_ip: nic.ip,
                        pod_subnet: p.pod_subnet,
                        vtep_mac: p.vtep_mac.clone(),
                    })
                })
                .collect(),
        }
    }
}

/// Version of the plan format written to plan.json. 2: SSH ports moved below the ephemeral range.
pub const PLAN_VERSION: u32 = 2;
