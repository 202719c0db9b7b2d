//! Resolving a checked topology into the Plan: every address, MAC, subnet, port and name.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;

use super::names::{host_address, LabIds};
use super::{ClusterPlan, NetworkPlan, NicPlan, NodePlan, Plan, PodPlan, PLAN_VERSION};
use crate::topology::CheckedTopology;

/// Assigns every address, MAC, subnet, port and name of a checked topology. Same topology in, same plan out:
/// node i of the file gets slot i and the i-th node subnet of the pod CIDR. It cannot fail: the checks
/// guarantee the room it needs (node subnets in the pod CIDR, host addresses in every network).
pub fn build(checked: &CheckedTopology) -> Plan {
    let ids = LabIds::of(&checked.lab);

    let networks: Vec<NetworkPlan> = checked
        .networks
        .iter()
        .enumerate()
        .map(|(i, n)| NetworkPlan {
            name: n.name.clone(),
            bridge: ids.bridge_name(i),
            cidr: n.cidr,
            mtu: n.mtu,
            impair: n.impair.clone(),
        })
        .collect();

    let cluster = &checked.cluster;
    let mut subnets = cluster
        .pod_cidr
        .subnets(cluster.node_subnet_prefix)
        .expect("checked: the node subnet prefix is longer than the pod CIDR's and at most 29");
    let nodes = checked
        .nodes
        .iter()
        .enumerate()
        .map(|(index, n)| {
            let nics = n
                .networks
                .iter()
                .enumerate()
                .map(|(k, &net)| {
                    let network = &networks[net];
                    NicPlan {
                        network: network.name.clone(),
                        guest_interface: format!("eth{}", k + 1),
                        tap: String::new(),
                        mac: String::new(),
                        ip: network.cidr.network(),
                        prefix_len: network.cidr.prefix_len(),
                        mtu: network.mtu,
                    }
                })
                .collect();
            let mut node = NodePlan {
                name: n.name.clone(),
                index,
                cpus: n.cpus,
                memory_mib: n.memory_mib,
                image: n.image.clone(),
                kernel_args: n.kernel_args.clone(),
                ssh_port: 0,
                nics,
                pod_subnet: subnets.next().expect("checked: the pod CIDR holds a node subnet per node"),
                vtep_mac: String::new(),
            };
            place(&ids, &networks, &mut node, index);
            node
        })
        .collect();

    Plan {
        version: PLAN_VERSION,
        lab: checked.lab.clone(),
        topology_hash: checked.source_sha256.clone(),
        netns: format!("tb-{}", checked.lab),
        networks,
        nodes,
        cluster: ClusterPlan {
            pod_cidr: cluster.pod_cidr,
            node_subnet_prefix: cluster.node_subnet_prefix,
            backend: cluster.backend,
            control_plane: cluster.control_plane.clone(),
            service_cidr: cluster.service_cidr,
            node_lifecycle: cluster.node_lifecycle,
        },
        pods: checked
            .pods
            .iter()
            .map(|p| PodPlan { node: p.node.clone(), spec: p.spec.clone(), images: p.images.clone() })
            .collect(),
        tests: checked.tests.clone(),
        namespaces: checked.namespaces.clone(),
        deployments: checked.deployments.clone(),
        services: checked.services.clone(),
        network_policies: checked.network_policies.clone(),
    }
}

/// Gives `node` everything its slot `index` fixes: SSH port, VTEP MAC, and for each NIC its tap, MAC and
/// underlay address.
fn place(ids: &LabIds, networks: &[NetworkPlan], node: &mut NodePlan, index: usize) {
    node.index = index;
    node.ssh_port = ids.ssh_port(index);
    node.vtep_mac = ids.vtep_mac(index);
    for (k, nic) in node.nics.iter_mut().enumerate() {
        let Some((net, network)) = networks.iter().enumerate().find(|(_, n)| n.name == nic.network) else { continue };
        nic.tap = ids.tap_name(index, k + 1);
        nic.mac = ids.nic_mac(net, index);
        nic.ip = host_address(&network.cidr, index);
    }
}

/// `plan` (freshly built from the topology file) with the allocation of the lab that runs from `recorded`:
/// a node both name keeps its slot (hence its SSH port, MACs, taps and underlay addresses) and its pod subnet,
/// whatever its position in the file now; a new node takes the lowest free slot and the first free node
/// subnet of the pod CIDR (flannel's search for a free subnet). Without removals and reordering this is
/// exactly what `build` gives. There is room for every node: the topology's checks give every network room
/// for slots 0..n and the pod CIDR n subnets, and the new nodes' slots and subnets are the first free ones.
pub fn keep_allocation(mut plan: Plan, recorded: &Plan) -> Plan {
    let ids = LabIds::of(&plan.lab);
    let mut slots = BTreeSet::new();
    let mut subnets = BTreeSet::new();
    for node in plan.nodes.iter_mut() {
        if let Some(old) = recorded.node(&node.name) {
            place(&ids, &plan.networks, node, old.index);
            node.pod_subnet = old.pod_subnet;
            slots.insert(old.index);
            subnets.insert(old.pod_subnet);
        }
    }
    for node in plan.nodes.iter_mut().filter(|n| recorded.node(&n.name).is_none()) {
        let slot = (0..).find(|i| !slots.contains(i)).expect("an unbounded range has a free slot");
        slots.insert(slot);
        place(&ids, &plan.networks, node, slot);
        node.pod_subnet = first_free_subnet(plan.cluster.pod_cidr, plan.cluster.node_subnet_prefix, &subnets)
            .expect("checked: the pod CIDR holds a node subnet per node");
        subnets.insert(node.pod_subnet);
    }
    plan
}

/// The first node subnet of `pod_cidr` that `taken` does not hold.
fn first_free_subnet(pod_cidr: Ipv4Net, prefix: u8, taken: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
    pod_cidr.subnets(prefix).ok()?.find(|s| !taken.contains(s))
}
