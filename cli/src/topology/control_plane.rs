//! `cluster.control_plane`: which nodes run etcd and the API server.

use super::checked::{CheckedNode, ImageRef};
use super::model::Topology;
use super::validate::{names, root, Ctx};
use super::TopologyError;

/// The control-plane nodes, as listed (default: the first node). One member, or three: an etcd cluster of
/// three keeps its quorum with one member down, while two members would stop with either down (and four
/// survive no more than three), so other sizes are refused.
pub(super) fn check(ctx: &Ctx<'_>, t: &Topology, nodes: &[CheckedNode]) -> Result<Vec<String>, TopologyError> {
    let path = root().key("cluster").key("control_plane").key("nodes");
    let listed: Vec<(String, _)> = match &t.cluster.control_plane {
        // `check_nodes` has refused an empty `nodes:`.
        None => vec![(nodes[0].name.clone(), root().key("nodes").key(&nodes[0].name))],
        Some(cp) => {
            if cp.nodes.len() != 1 && cp.nodes.len() != 3 {
                return Err(ctx.at(
                    &path,
                    format!(
                        "{} control-plane nodes: give 1, or 3 (an etcd cluster that survives losing one)",
                        cp.nodes.len()
                    ),
                ));
            }
            cp.nodes.iter().enumerate().map(|(i, n)| (n.clone(), path.index(i))).collect()
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
