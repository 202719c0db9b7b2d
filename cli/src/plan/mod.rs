//! The Plan: everything about a lab resolved from its checked topology, deterministically (same file, same
//! plan), and the `plan` command. Providers, the agent specs and the suites read only the Plan, never the
//! topology. The dependency runs one way: the plan reads `crate::topology`'s checked model; the topology
//! module does not know the plan.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use testbed_api::{Backend, NodeSpec, PeerSpec, PodSpec, UnderlaySpec};

use crate::exit::{CliError, CliResult};
use crate::topology::{self, TopologyError};
use crate::ui::Ui;

mod build;
mod change;
mod names;
mod render;
#[cfg(test)]
mod tests;

pub use build::{build, keep_allocation};
pub use change::{node_change, NodeChange, RefusedChange};
pub use render::render_text;
// The declared values a plan carries unchanged, defined with the checked topology they come from; named here
// too because they are part of the plan's contract (plan.json, the suites).
pub use crate::topology::checked::{
    ContainerImage, DeclaredTest, ImageRef, Impairment, NodeLifecycle, TestKind, TestLevel, TestSource, TestTarget,
};

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Topology file (YAML).
    pub file: PathBuf,
}

/// Reads, checks and plans a topology file. This is what `up` and every other command use.
pub fn load(path: &Path) -> Result<Plan, TopologyError> {
    topology::load(path).map(|checked| build(&checked))
}

pub fn cmd_plan(ui: &Ui, args: PlanArgs) -> CliResult {
    let plan = load(&args.file).map_err(CliError::bad_input)?;
    if ui.is_json() {
        let doc = serde_json::to_string_pretty(&plan).map_err(CliError::infra)?;
        println!("{doc}");
    } else {
        print!("{}", render_text(&plan));
    }
    Ok(())
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
    /// The node's slot: its SSH port, MACs, taps and underlay addresses derive from it. A fresh plan gives
    /// node i of the file slot i; a node added to a running lab takes the lowest free one and keeps it
    /// (`keep_allocation`).
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
    /// The nodes running etcd and the API server (1 or 3), in the topology's order of
    /// `cluster.control_plane.nodes`. Absent from plans written before the control plane (version 2).
    #[serde(default)]
    pub control_plane: Vec<String>,
    /// Where Services' cluster IPs come from (the API server's `--service-cluster-ip-range`). Plans written
    /// before Services have the default.
    #[serde(default = "default_service_cidr")]
    pub service_cidr: Ipv4Net,
    /// The controller manager's node lifecycle times (Kubernetes' defaults in plans written before them).
    #[serde(default)]
    pub node_lifecycle: NodeLifecycle,
}

fn default_service_cidr() -> Ipv4Net {
    crate::topology::validate::DEFAULT_SERVICE_CIDR.parse().expect("the default service CIDR parses")
}

/// The API server's port on a control-plane node's underlay address (Kubernetes' secure port).
pub const API_PORT: u16 = 6443;
/// etcd's client and peer ports on a control-plane node's underlay address (etcd's registered ports).
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;

/// A user pod from the topology, placed on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    pub node: String,
    /// The containers' `image` is filled in by `up` with the digest of the image it delivered (`images`).
    pub spec: PodSpec,
    /// The containers with an image of their own, by container name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, ContainerImage>,
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
    /// Namespaces created through the API before everything else (the topology's pods' mirrors and
    /// NetworkPolicies' namespace selectors need them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<serde_json::Value>,
    /// Deployments created through the API once the nodes are Ready, as the API server normalizes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<serde_json::Value>,
    /// Services created through the API before the Deployments, with their cluster IPs and node ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<serde_json::Value>,
    /// NetworkPolicies created through the API with the Services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_policies: Vec<serde_json::Value>,
}

impl Plan {
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The control-plane nodes with their underlay address (where etcd and the API server listen).
    pub fn control_plane_members(&self) -> Vec<(&NodePlan, Ipv4Addr)> {
        self.cluster
            .control_plane
            .iter()
            .filter_map(|name| self.node(name))
            .filter_map(|n| n.nics.first().map(|nic| (n, nic.ip)))
            .collect()
    }

    /// The API servers' URLs on the underlay, in the order of the control-plane nodes.
    pub fn api_servers(&self) -> Vec<String> {
        self.control_plane_members().iter().map(|(_, ip)| format!("https://{ip}:{API_PORT}")).collect()
    }

    /// True when both plans build the same lab: they differ at most in the topology's bytes (comments), in
    /// the declared tests, which the suites read when they run and which change nothing that `up` creates,
    /// and in the Namespaces, Deployments, Services and NetworkPolicies, API objects that `up` applies to a running
    /// lab as they are now.
    pub fn same_lab(&self, other: &Plan) -> bool {
        // Destructured so that a new field must be classified here.
        let Plan {
            version,
            lab,
            topology_hash: _,
            netns,
            networks,
            nodes,
            cluster,
            pods,
            tests: _,
            namespaces: _,
            deployments: _,
            services: _,
            network_policies: _,
        } = self;
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
            service_cidr: Some(self.cluster.service_cidr),
        }
    }
}

/// Version of the plan format written to plan.json. 2: SSH ports moved below the ephemeral range. 3: the
/// control plane (`cluster.control_plane`); a lab up from version 2 has none and must be brought down first.
pub const PLAN_VERSION: u32 = 3;
