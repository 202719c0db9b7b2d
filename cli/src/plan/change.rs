//! What a new plan changes in the lab a recorded plan runs: nothing, a set of nodes added and removed (what
//! `up` can do to a running lab in place), or anything else (refused: the lab must go down first).
//!
//! Per node, and so following a node in or out: its NodePlan (spec, slot, SSH port, NICs, pod subnet, VTEP
//! MAC) and the topology's pods placed on it. Lab-wide, and so refused: the plan format, the lab name and
//! netns, the networks, the cluster (pod CIDR, subnet size, backend, control-plane nodes) and the pods of the
//! nodes that stay. Not part of the lab at all: the topology's bytes, its declared tests and its Deployments
//! (API objects `up` applies to a running lab as they are).

use super::{NodePlan, Plan, PodPlan};

/// The nodes a new plan adds to the running lab and those it removes, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl NodeChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Why a new plan cannot be applied to the running lab in place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedChange {
    /// Changes beyond the set of nodes, each named.
    #[error("it changes {}", .0.join("; "))]
    LabWide(Vec<String>),
    /// etcd's membership is fixed when the lab is made.
    #[error(
        "it changes the control-plane nodes ({} to {}): etcd's membership is fixed when the lab is made",
        .recorded.join(", "),
        .new.join(", ")
    )]
    ControlPlane { recorded: Vec<String>, new: Vec<String> },
}

/// What `new` (with the allocation kept, `keep_allocation`) changes in the lab `recorded` runs.
pub fn node_change(recorded: &Plan, new: &Plan) -> Result<NodeChange, RefusedChange> {
    if recorded.cluster.control_plane != new.cluster.control_plane {
        return Err(RefusedChange::ControlPlane {
            recorded: recorded.cluster.control_plane.clone(),
            new: new.cluster.control_plane.clone(),
        });
    }
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
    } = recorded;
    let mut changed = Vec::new();
    if *version != new.version {
        changed.push(format!("the plan format (version {version} to {})", new.version));
    }
    if *lab != new.lab || *netns != new.netns {
        changed.push("the lab name".into());
    }
    if *networks != new.networks {
        changed.push("the networks".into());
    }
    if *cluster != new.cluster {
        changed.push("the cluster settings (pod CIDR, node subnet size or backend)".into());
    }
    let mut change = NodeChange::default();
    for old in nodes {
        match new.node(&old.name) {
            None => change.removed.push(old.name.clone()),
            Some(n) if n != old => changed.push(format!("node {}: {}", old.name, node_difference(old, n))),
            Some(_) => {
                if pods_on(pods, &old.name) != pods_on(&new.pods, &old.name) {
                    changed.push(format!("the pods on node {}", old.name));
                }
            }
        }
    }
    change.added = new.nodes.iter().filter(|n| recorded.node(&n.name).is_none()).map(|n| n.name.clone()).collect();
    if changed.is_empty() {
        Ok(change)
    } else {
        Err(RefusedChange::LabWide(changed))
    }
}

/// The topology's pods on `node`, by name (their order in the file is not a change).
fn pods_on<'a>(pods: &'a [PodPlan], node: &str) -> Vec<&'a PodPlan> {
    let mut on: Vec<&PodPlan> = pods.iter().filter(|p| p.node == node).collect();
    on.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    on
}

/// What differs between two plans of one node, for the refusal's message.
fn node_difference(old: &NodePlan, new: &NodePlan) -> &'static str {
    if old.cpus != new.cpus || old.memory_mib != new.memory_mib {
        "its CPUs or memory"
    } else if old.image != new.image || old.kernel_args != new.kernel_args {
        "its image or kernel arguments"
    } else if old.nics.iter().map(|n| &n.network).ne(new.nics.iter().map(|n| &n.network)) {
        "its networks"
    } else {
        "its addresses"
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::plan::{build, keep_allocation};
    use crate::topology;

    const NET: &str = "networks:\n  underlay: {cidr: 192.168.50.0/24}\n";

    fn plan_of(nodes: &[&str], extra: &str) -> Plan {
        let nodes: String = nodes.iter().map(|n| format!("  {n}: {{}}\n")).collect();
        let src = format!("name: lab\nnodes:\n{nodes}{NET}{extra}");
        build(&topology::check_source(Path::new("t.yaml"), src.as_bytes()).expect("valid"))
    }

    /// `nodes` as `up` plans them over the running lab of `recorded`.
    fn replan(recorded: &Plan, nodes: &[&str], extra: &str) -> Plan {
        keep_allocation(plan_of(nodes, extra), recorded)
    }

    fn pod(node: &str, name: &str) -> String {
        format!("  - {{name: {name}, node: {node}, containers: [{{name: c, command: [sh]}}]}}\n")
    }

    #[test]
    fn the_same_file_keeps_the_fresh_allocation_and_changes_nothing() {
        let recorded = plan_of(&["node1", "node2", "node3"], "");
        let again = replan(&recorded, &["node1", "node2", "node3"], "");
        assert_eq!(again, recorded);
        assert_eq!(node_change(&recorded, &again), Ok(NodeChange::default()));
    }

    #[test]
    fn nodes_that_stay_keep_slot_and_subnet_after_a_removal_or_a_reorder() {
        let recorded = plan_of(&["node1", "node2", "node3"], "");
        let shrunk = replan(&recorded, &["node1", "node3"], "");
        assert_eq!(shrunk.node("node3"), recorded.node("node3"), "node3 keeps everything");
        let change = node_change(&recorded, &shrunk).unwrap();
        assert_eq!((change.added, change.removed), (vec![], vec!["node2".to_string()]));

        // A new node takes the lowest free slot (node2's old one) and the first free subnet. (node1 stays
        // first: without `cluster.control_plane` the first node of the file is the control plane.)
        let grown = replan(&shrunk, &["node1", "node4", "node3"], "");
        let node4 = grown.node("node4").unwrap();
        let old2 = recorded.node("node2").unwrap();
        assert_eq!((node4.index, node4.pod_subnet, node4.ssh_port), (old2.index, old2.pod_subnet, old2.ssh_port));
        assert_eq!(node4.nics[0].ip, old2.nics[0].ip);
        assert_eq!(node4.nics[0].tap, old2.nics[0].tap);
        assert_eq!(grown.node("node1"), recorded.node("node1"));
        assert_eq!(grown.node("node3"), recorded.node("node3"));
        let change = node_change(&shrunk, &grown).unwrap();
        assert_eq!((change.added, change.removed), (vec!["node4".to_string()], vec![]));
    }

    #[test]
    fn an_added_node_takes_a_subnet_no_node_holds() {
        let recorded = plan_of(&["node1", "node2"], "");
        let grown = replan(&recorded, &["node1", "node2", "node3"], "");
        let subnets: std::collections::BTreeSet<_> = grown.nodes.iter().map(|n| n.pod_subnet).collect();
        assert_eq!(subnets.len(), 3);
        assert_eq!(grown.node("node3").unwrap().pod_subnet.to_string(), "10.244.2.0/24");
        // Appending a node gives what a fresh `up` of the bigger file gives.
        assert_eq!(grown, plan_of(&["node1", "node2", "node3"], ""));
    }

    #[test]
    fn pods_follow_their_node_and_pods_of_staying_nodes_must_not_change() {
        let recorded = plan_of(&["node1", "node2"], &format!("pods:\n{}", pod("node2", "b")));
        let with_new = format!("pods:\n{}{}", pod("node2", "b"), pod("node3", "c"));
        let grown = replan(&recorded, &["node1", "node2", "node3"], &with_new);
        assert!(node_change(&recorded, &grown).is_ok());
        let removed = replan(&recorded, &["node1"], "");
        assert_eq!(node_change(&recorded, &removed).unwrap().removed, ["node2"]);
        let moved = replan(&recorded, &["node1", "node2"], &format!("pods:\n{}", pod("node1", "b")));
        let Err(RefusedChange::LabWide(what)) = node_change(&recorded, &moved) else { panic!("accepted") };
        assert_eq!(what, ["the pods on node node1", "the pods on node node2"]);
    }

    #[test]
    fn lab_wide_and_control_plane_changes_are_refused_with_what_changed() {
        let recorded = plan_of(&["node1", "node2"], "");
        let backend = replan(&recorded, &["node1", "node2", "node3"], "cluster: {backend: host-gw}\n");
        let err = node_change(&recorded, &backend).unwrap_err();
        assert!(err.to_string().contains("the cluster settings"), "{err}");
        let mut bigger = plan_of(&["node1", "node2"], "");
        bigger.nodes[1].memory_mib = 1024;
        let err = node_change(&recorded, &bigger).unwrap_err();
        assert_eq!(err.to_string(), "it changes node node2: its CPUs or memory");
        let cp = "cluster: {control_plane: {nodes: [node1, node2, node3]}}\n";
        let err = node_change(&recorded, &replan(&recorded, &["node1", "node2", "node3"], cp)).unwrap_err();
        assert!(matches!(err, RefusedChange::ControlPlane { .. }), "{err}");
        assert!(err.to_string().contains("node1 to node1, node2, node3"), "{err}");
    }
}
