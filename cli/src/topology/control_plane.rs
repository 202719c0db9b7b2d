//! `cluster.control_plane`: which nodes run etcd, the API server and the controller manager, and the
//! controller manager's node lifecycle times.

use testbed_api::{quantity, NODE_LEASE_RENEW_SECS};

use super::checked::{CheckedNode, ImageRef, NodeLifecycle};
use super::model::{Scalar, Topology};
use super::validate::{names, root, Ctx};
use super::TopologyError;

/// The control-plane nodes, as listed (default: the first node). One member, or three: an etcd cluster of
/// three keeps its quorum with one member down, while two members would stop with either down (and four
/// survive no more than three), so other sizes are refused.
pub(super) fn members(ctx: &Ctx<'_>, t: &Topology, nodes: &[CheckedNode]) -> Result<Vec<String>, TopologyError> {
    let path = root().key("cluster").key("control_plane").key("nodes");
    let listed: Vec<(String, _)> = match t.cluster.control_plane.as_ref().and_then(|cp| cp.nodes.as_ref()) {
        // `check_nodes` has refused an empty `nodes:`.
        None => vec![(nodes[0].name.clone(), root().key("nodes").key(&nodes[0].name))],
        Some(listed) => {
            if listed.len() != 1 && listed.len() != 3 {
                return Err(ctx.at(
                    &path,
                    format!(
                        "{} control-plane nodes: give 1, or 3 (an etcd cluster that survives losing one)",
                        listed.len()
                    ),
                ));
            }
            listed.iter().enumerate().map(|(i, n)| (n.clone(), path.index(i))).collect()
        }
    };
    let mut out: Vec<String> = Vec::new();
    for (name, at) in listed {
        let Some(node) = nodes.iter().find(|n| n.name == name) else {
            return Err(
                ctx.at(&at, format!("unknown node `{name}` (nodes: {})", names(nodes.iter().map(|n| n.name.as_str()))))
            );
        };
        if out.contains(&name) {
            return Err(ctx.at(&at, format!("node `{name}` is listed twice")));
        }
        if let ImageRef::Url { .. } = node.image {
            return Err(ctx.at(
                &at,
                format!(
                    "node `{name}` boots a downloaded image, which has no etcd: the control plane needs a built \
                     image (debian-12); choose its nodes with cluster.control_plane.nodes"
                ),
            ));
        }
        out.push(name);
    }
    Ok(out)
}

/// The node lifecycle times, Kubernetes durations in whole seconds (defaults: Kubernetes' 40 s and 5 m).
pub(super) fn node_lifecycle(ctx: &Ctx<'_>, t: &Topology) -> Result<NodeLifecycle, TopologyError> {
    let path = root().key("cluster").key("control_plane");
    let cp = t.cluster.control_plane.as_ref();
    let seconds = |field: &str, value: Option<&Scalar>, default: u64| match value {
        None => Ok(default),
        Some(v) => quantity::kube_duration_secs(&v.0).map_err(|m| ctx.at(&path.key(field), m)),
    };
    let defaults = NodeLifecycle::default();
    let grace = seconds(
        "node_monitor_grace_period",
        cp.and_then(|c| c.node_monitor_grace_period.as_ref()),
        defaults.node_monitor_grace_period_seconds,
    )?;
    if grace <= NODE_LEASE_RENEW_SECS {
        return Err(ctx.at(
            &path.key("node_monitor_grace_period"),
            format!(
                "{grace} s must be longer than the agents' Lease renew interval ({NODE_LEASE_RENEW_SECS} s), or a \
                 healthy node turns NotReady between two renewals (Kubernetes uses 40s)"
            ),
        ));
    }
    let eviction = seconds(
        "pod_eviction_timeout",
        cp.and_then(|c| c.pod_eviction_timeout.as_ref()),
        defaults.pod_eviction_timeout_seconds,
    )?;
    Ok(NodeLifecycle { node_monitor_grace_period_seconds: grace, pod_eviction_timeout_seconds: eviction })
}
