//! Node-level desired state (network) and observed state.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::pod::PodStatus;

/// Overlay backend, with flannel's kernel state (see docs/architecture.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// `flannel.1`, VNI 1, UDP 8472, learning off, static neighbour + FDB + onlink route per peer.
    Vxlan,
    /// A route per peer node subnet via the peer's underlay IP (all nodes on one L2 segment).
    HostGw,
    /// TUN `flannel0`; the agent encapsulates IP packets in UDP to peer:8285 in userspace.
    Udp,
    /// No cross-node pod routing: only the bridge and same-node pods.
    None,
}

impl Backend {
    /// Every backend, e.g. to list the choices or to run a suite over all of them.
    pub const ALL: [Backend; 4] = [Backend::Vxlan, Backend::HostGw, Backend::Udp, Backend::None];

    /// The name used in topology files, on the command line and in results (`host-gw`, not `HostGw`).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::Udp => "udp",
            Backend::None => "none",
        }
    }

    /// MTU for pod interfaces given the underlay MTU (flannel's overheads).
    pub fn pod_mtu(self, underlay_mtu: u32) -> u32 {
        match self {
            Backend::Vxlan => underlay_mtu - 50,
            Backend::Udp => underlay_mtu - 28,
            Backend::HostGw | Backend::None => underlay_mtu,
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Backend::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| format!("unknown backend `{s}` (expected vxlan, host-gw, udp or none)"))
    }
}

/// The guest NIC on the underlay segment that carries cross-node pod traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderlaySpec {
    /// Guest interface name, e.g. `eth1` (the first NIC is QEMU's management network).
    pub interface: String,
    /// Address the agent puts on `interface`; peers route pod traffic to it.
    pub address: Ipv4Addr,
    /// Prefix length of the underlay network (the address's on-link range).
    pub prefix_len: u8,
    /// MTU of the underlay NIC; pod MTUs derive from it (`Backend::pod_mtu`).
    pub mtu: u32,
}

/// Another node as this node must know it to route pod traffic to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSpec {
    /// The peer's node name, as in its own `NodeSpec::node_name`.
    pub name: String,
    /// The peer's address on the underlay: next hop (host-gw), VXLAN or UDP tunnel endpoint.
    pub underlay_ip: Ipv4Addr,
    /// The peer's pod subnet, routed towards `underlay_ip` by the backend.
    pub pod_subnet: Ipv4Net,
    /// MAC of the peer's `flannel.1`; planned up front (flannel learns it from the peer's lease).
    pub vtep_mac: String,
}

/// Desired network state of one node. `PUT /v1/node` with this body; the agent converges the kernel to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Name of the node the spec is for; the agent reports it back in `NodeStatus::node_name`.
    pub node_name: String,
    /// The NIC that carries cross-node pod traffic.
    pub underlay: UnderlaySpec,
    /// Cluster-wide pod CIDR (routes for the udp backend, no-SNAT checks).
    pub pod_cidr: Ipv4Net,
    /// This node's pod subnet; `.1` goes on `cni0`, pods get addresses from `.2` up.
    pub pod_subnet: Ipv4Net,
    /// How pod traffic crosses nodes; re-applying with another backend switches a running node.
    pub backend: Backend,
    /// MAC for this node's `flannel.1` (vxlan backend).
    pub vtep_mac: String,
    /// Every other node of the lab: the agent converges its routes (and VXLAN entries) to exactly these.
    pub peers: Vec<PeerSpec>,
    /// Where Services' cluster IPs come from (`--service-cluster-ip-range`). The agent routes it to `cni0`
    /// so that the node's own connections to a ClusterIP get as far as the service proxy's DNAT (the nodes
    /// have no default route); None: no such route (a spec from before Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<Ipv4Net>,
}

/// Answer to `PUT /v1/node`: what the reconcile changed. Empty when the kernel already matched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponse {
    /// One line per kernel object the reconcile added, changed or removed; the suites show them as evidence
    /// that a re-apply changed nothing.
    pub changes: Vec<String>,
}

/// One kernel object as the agent observed it (read back from netlink, not from memory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedNetwork {
    /// Links the agent manages: `cni0`, `flannel.1`, `flannel0`, pod veths (`ip -br link` style lines).
    pub links: Vec<String>,
    /// Routes the agent owns, `ip route` style: to pod subnets (`10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink`) and to the Services' range (`10.96.0.0/12 dev cni0`).
    pub routes: Vec<String>,
    /// Permanent neighbours on `flannel.1` (`10.244.1.0 lladdr ...`).
    pub neighbours: Vec<String>,
    /// FDB entries on `flannel.1` (`<mac> dst <ip>`).
    pub fdb: Vec<String>,
}

/// `GET /v1/node`: the node as the agent sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node name of the spec last applied (the guest's hostname before any spec).
    pub node_name: String,
    /// Version of the agent binary answering, as `testbed status` shows it.
    pub agent_version: String,
    /// Kernel release (`uname -r`) of the guest, recorded in suite results.
    pub kernel: String,
    /// The guest kernel's command line (`/proc/cmdline`), recorded in suite results: under TCG `up` adds
    /// arguments that change what a figure measures. Empty from older agents.
    #[serde(default)]
    pub kernel_cmdline: String,
    /// `v2` or `v1`.
    pub cgroup_version: String,
    /// The spec last applied, if any.
    pub spec: Option<NodeSpec>,
    /// True when the last reconcile found nothing to change or converged without error.
    pub converged: bool,
    /// Error of the last reconcile, if it failed.
    pub last_error: Option<String>,
    /// How many periodic reconciles repaired drift since the agent started.
    pub drift_repairs: u64,
    /// How many `PUT /v1/node` requests (the CLI's) the agent answered since it started; the subnet leases'
    /// own applies are not counted. Evidence that `up` left a node alone. Absent from older agents.
    #[serde(default)]
    pub node_puts: u64,
    /// The agent's managed kernel objects, read back from netlink.
    pub network: ObservedNetwork,
    /// Every pod on the node, as `GET /v1/pods` would list them.
    pub pods: Vec<PodStatus>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` whenever the agent answers at all: its readiness is the answer itself.
    pub status: String,
    /// Version of the agent binary answering, as `testbed status` shows it.
    pub agent_version: String,
}
