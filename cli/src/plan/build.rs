//! Resolving a topology into the Plan: every address, MAC, subnet, port and name.

use sha2::Digest;

use super::names::{host_address, LabIds};
use super::{NetworkPlan, NicPlan, NodePlan, Plan, PLAN_VERSION};
use crate::topology::locate::Locator;
use crate::topology::{validate, Topology, TopologyError};

/// Resolves a parsed topology into the Plan: validates it (errors point into `source`, named `file`), then
/// assigns every address, MAC, subnet, port and name. Same bytes in, same plan out.
pub fn build(topology: &Topology, source: &[u8], file: &std::path::Path) -> Result<Plan, TopologyError> {
    let text = String::from_utf8_lossy(source);
    let locator = Locator::parse(&text).map_err(|e| {
        let field = e.path.to_string();
        TopologyError::invalid(file, e.pos.line, e.pos.column, field, e.message)
    })?;
    let checked = validate::check(topology, file, &locator)?;
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
                    tap: ids.tap_name(index, k + 1),
                    mac: ids.nic_mac(net, index),
                    ip: host_address(&network.cidr, index),
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
            ssh_port: ids.ssh_port(index),
            nics,
            pod_subnet,
            vtep_mac: ids.vtep_mac(index),
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
