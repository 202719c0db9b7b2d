//! The Plan: everything about a lab resolved from its topology, deterministically (same file, same plan).
//! Providers, the agent specs and the suites read only the Plan, never the raw topology.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use testbed_api::{Backend, NodeSpec, PeerSpec, PodSpec, UnderlaySpec};

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
/// SSH ports: each lab owns a block of `MAX_NODES` ports starting at `SSH_PORT_BASE + slot * MAX_NODES`,
/// slot = hash(lab) % `SSH_PORT_SLOTS`, so every port is in 10000..=32399: below Linux's ephemeral range
/// (32768-60999), where any outgoing connection on the host could be holding the port. Two labs may hash to
/// one slot; the provider checks that a port is free before it starts QEMU and fails with a clear message.
pub const SSH_PORT_BASE: u16 = 10000;
pub const SSH_PORT_SLOTS: u64 = 700;
/// The MAC byte that stands in for the network index in VTEP MACs (networks are numbered 0..8).
const VTEP_MAC_MARKER: u8 = 0xff;

const _: () = assert!(
    SSH_PORT_BASE as u64 + SSH_PORT_SLOTS * crate::topology::validate::MAX_NODES as u64 <= 32768,
    "SSH port blocks must stay below the ephemeral port range"
);

/// Per-lab values derived from the lab name alone.
struct LabIds {
    /// 6 hex digits prefixing host-side interface names.
    short: String,
    /// Two bytes in every MAC of the lab.
    mac: [u8; 2],
    ssh_slot: u64,
}

fn lab_ids(lab: &str) -> LabIds {
    use sha2::Digest;
    let h = sha2::Sha256::digest(lab.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    LabIds { short: hex::encode(&h[..3]), mac: [h[3], h[4]], ssh_slot: u64::from_be_bytes(first) % SSH_PORT_SLOTS }
}

/// `52:54:..`: locally administered (bit 1 of the first byte set), unicast (bit 0 clear), like QEMU's own.
fn mac(lab: &[u8; 2], a: u8, b: u8) -> String {
    format!("52:54:{:02x}:{:02x}:{a:02x}:{b:02x}", lab[0], lab[1])
}

/// Bridge of network `net` inside the lab netns: `tb<id>-br<net>` (12 characters).
pub fn bridge_name(lab_short: &str, net: usize) -> String {
    format!("tb{lab_short}-br{net}")
}

/// Tap of node `node`'s guest NIC `eth<nic>`: `tb<id>-n<node>e<nic>` (at most 14 characters).
pub fn tap_name(lab_short: &str, node: usize, nic: usize) -> String {
    format!("tb{lab_short}-n{node}e{nic}")
}

/// Resolves a parsed topology into the Plan: validates it (errors point into `source`, named `file`), then
/// assigns every address, MAC, subnet, port and name. Same bytes in, same plan out.
pub fn build(
    topology: &crate::topology::Topology,
    source: &[u8],
    file: &std::path::Path,
) -> Result<Plan, crate::topology::TopologyError> {
    use crate::topology::{locate::Locator, validate, TopologyError};
    use sha2::Digest;

    let text = String::from_utf8_lossy(source);
    let locator = Locator::parse(&text).map_err(|e| {
        let field = e.path.to_string();
        TopologyError::invalid(file, e.pos.line, e.pos.column, field, e.message)
    })?;
    let checked = validate::check(topology, file, &locator)?;
    let ids = lab_ids(&checked.lab);

    let networks: Vec<NetworkPlan> = checked
        .networks
        .iter()
        .enumerate()
        .map(|(i, n)| NetworkPlan {
            name: n.name.clone(),
            bridge: bridge_name(&ids.short, i),
            cidr: n.cidr,
            mtu: n.mtu,
            impair: n.impair.clone(),
        })
        .collect();

    let mut subnets =
        checked.cluster.pod_cidr.subnets(checked.cluster.node_subnet_prefix).map_err(|_| {
            TopologyError::invalid(file, 1, 1, "cluster.node_subnet_prefix", "cannot divide the pod CIDR")
        })?;
    let mut nodes = Vec::with_capacity(checked.nodes.len());
    for (index, n) in checked.nodes.iter().enumerate() {
        let pod_subnet = subnets.next().ok_or_else(|| {
            TopologyError::invalid(file, 1, 1, "cluster.pod_cidr", "too few node subnets for the nodes")
        })?;
        let nics = n
            .networks
            .iter()
            .enumerate()
            .map(|(k, &net)| {
                let network = &checked.networks[net];
                NicPlan {
                    network: network.name.clone(),
                    guest_interface: format!("eth{}", k + 1),
                    tap: tap_name(&ids.short, index, k + 1),
                    mac: mac(&ids.mac, net as u8, index as u8),
                    ip: validate::host_address(&network.cidr, index),
                    prefix_len: network.cidr.prefix_len(),
                    mtu: network.mtu,
                }
            })
            .collect();
        nodes.push(NodePlan {
            name: n.name.clone(),
            index,
            cpus: n.cpus,
            memory_mib: n.memory_mib,
            image: n.image.clone(),
            kernel_args: n.kernel_args.clone(),
            ssh_port: SSH_PORT_BASE + (ids.ssh_slot as u16) * (validate::MAX_NODES as u16) + index as u16,
            nics,
            pod_subnet,
            vtep_mac: mac(&ids.mac, VTEP_MAC_MARKER, index as u8),
        });
    }

    Ok(Plan {
        version: PLAN_VERSION,
        lab: checked.lab.clone(),
        topology_hash: hex::encode(sha2::Sha256::digest(source)),
        netns: format!("tb-{}", checked.lab),
        networks,
        nodes,
        cluster: checked.cluster.clone(),
        pods: checked.pods.clone(),
        tests: checked.tests.clone(),
    })
}

/// The plan as tables for people (`testbed plan FILE`).
pub fn render_text(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "lab {}  netns {}  plan v{}  topology sha256 {}",
        plan.lab, plan.netns, plan.version, plan.topology_hash
    );
    let _ = writeln!(
        s,
        "cluster: pod_cidr {}  node subnets /{}  backend {}",
        plan.cluster.pod_cidr, plan.cluster.node_subnet_prefix, plan.cluster.backend
    );
    let _ = writeln!(s, "\nnetworks:");
    let _ = writeln!(s, "  {:<16} {:<14} {:<18} {:>5}  impairment", "NAME", "BRIDGE", "CIDR", "MTU");
    for n in &plan.networks {
        let _ = writeln!(
            s,
            "  {:<16} {:<14} {:<18} {:>5}  {}",
            n.name,
            n.bridge,
            n.cidr.to_string(),
            n.mtu,
            impairment_text(&n.impair)
        );
    }
    let _ = writeln!(s, "\nnodes:");
    let _ = writeln!(
        s,
        "  {:<3} {:<16} {:>4} {:>7} {:>6}  {:<18} {:<17} IMAGE",
        "#", "NAME", "CPUS", "MEMORY", "SSH", "POD SUBNET", "VTEP MAC"
    );
    for n in &plan.nodes {
        let image = match &n.image {
            ImageRef::Named(name) => name.clone(),
            ImageRef::Url { url, .. } => url.clone(),
        };
        let _ = writeln!(
            s,
            "  {:<3} {:<16} {:>4} {:>6}M {:>6}  {:<18} {:<17} {}",
            n.index,
            n.name,
            n.cpus,
            n.memory_mib,
            n.ssh_port,
            n.pod_subnet.to_string(),
            n.vtep_mac,
            image
        );
    }
    let _ = writeln!(s, "\nnics:");
    let _ = writeln!(
        s,
        "  {:<16} {:<6} {:<16} {:<14} {:<17} {:<18} {:>5}",
        "NODE", "GUEST", "NETWORK", "TAP", "MAC", "ADDRESS", "MTU"
    );
    for n in &plan.nodes {
        for nic in &n.nics {
            let _ = writeln!(
                s,
                "  {:<16} {:<6} {:<16} {:<14} {:<17} {:<18} {:>5}",
                n.name,
                nic.guest_interface,
                nic.network,
                nic.tap,
                nic.mac,
                format!("{}/{}", nic.ip, nic.prefix_len),
                nic.mtu
            );
        }
    }
    if !plan.pods.is_empty() {
        let _ = writeln!(s, "\npods:");
        for p in &plan.pods {
            let names: Vec<&str> = p.spec.containers.iter().map(|c| c.name.as_str()).collect();
            let _ = writeln!(
                s,
                "  {:<20} on {:<16} containers: {}{}",
                p.spec.name,
                p.node,
                names.join(", "),
                if p.spec.host_network { "  (host network)" } else { "" }
            );
        }
    }
    if !plan.tests.is_empty() {
        let _ = writeln!(s, "\ntests:");
        for t in &plan.tests {
            let _ = writeln!(s, "  {:<32} {}", t.name, test_text(t));
        }
    }
    s
}

/// `node:node2 -> pod:web http :8080, 5 attempts, warning, only vxlan, host-gw`.
fn test_text(t: &DeclaredTest) -> String {
    let from = match &t.from {
        TestSource::Pod(p) => format!("pod:{p}"),
        TestSource::Node(n) => format!("node:{n}"),
    };
    let to = match &t.to {
        TestTarget::Pod(p) => format!("pod:{p}"),
        TestTarget::Node(n) => format!("node:{n}"),
        TestTarget::Ip(ip) => format!("ip:{ip}"),
    };
    let kind = match t.kind {
        TestKind::Ping => "ping",
        TestKind::Tcp => "tcp",
        TestKind::Http => "http",
    };
    let mut s = format!("{from} -> {to} {kind}");
    if let Some(p) = t.port {
        s += &format!(" :{p}");
    }
    if !t.expect_pass {
        s += ", must fail";
    }
    if t.attempts > 1 {
        s += &format!(", {} attempts {}ms apart", t.attempts, t.wait_ms);
    }
    if t.level == TestLevel::Warning {
        s += ", warning";
    }
    if t.stop_on_error {
        s += ", stop on error";
    }
    if !t.backends.is_empty() {
        let b: Vec<&str> = t.backends.iter().map(|b| b.as_str()).collect();
        s += &format!(", only {}", b.join(", "));
    }
    s
}

fn impairment_text(i: &Impairment) -> String {
    if i.is_none() {
        return "none".into();
    }
    let mut parts = Vec::new();
    if i.delay_ms > 0.0 {
        parts.push(format!("delay {}ms", i.delay_ms));
    }
    if i.jitter_ms > 0.0 {
        parts.push(format!("jitter {}ms", i.jitter_ms));
    }
    if i.loss_percent > 0.0 {
        parts.push(format!("loss {}%", i.loss_percent));
    }
    if let Some(r) = i.rate_mbit {
        parts.push(format!("rate {r}mbit"));
    }
    parts.join(", ")
}
