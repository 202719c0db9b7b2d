//! Resolving a checked topology into the Plan: every address, MAC, subnet, port and name.

use super::names::{host_address, LabIds};
use super::{ClusterPlan, NetworkPlan, NicPlan, NodePlan, Plan, PodPlan, PLAN_VERSION};
use crate::topology::CheckedTopology;

/// Assigns every address, MAC, subnet, port and name of a checked topology. Same topology in, same plan out.
/// It cannot fail: the checks guarantee the room it needs (node subnets in the pod CIDR, host addresses in
/// every network).
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
                    let network = &checked.networks[net];
                    NicPlan {
                        network: network.name.clone(),
                        guest_interface: format!("eth{}", k + 1),
                        tap: ids.tap_name(index, k + 1),
                        mac: ids.nic_mac(net, index),
                        ip: host_address(&network.cidr, index),
                        prefix_len: network.cidr.prefix_len(),
                        mtu: network.mtu,
                    }
                })
                .collect();
            NodePlan {
                name: n.name.clone(),
                index,
                cpus: n.cpus,
                memory_mib: n.memory_mib,
                image: n.image.clone(),
                kernel_args: n.kernel_args.clone(),
                ssh_port: ids.ssh_port(index),
                nics,
                pod_subnet: subnets.next().expect("checked: the pod CIDR holds a node subnet per node"),
                vtep_mac: ids.vtep_mac(index),
            }
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
            node_lifecycle: cluster.node_lifecycle,
        },
        pods: checked.pods.iter().map(|p| PodPlan { node: p.node.clone(), spec: p.spec.clone() }).collect(),
        tests: checked.tests.clone(),
        deployments: checked.deployments.clone(),
    }
}
