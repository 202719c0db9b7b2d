//! What a node's overlay control state must be for its NodeSpec (flannel's kernel state per backend), compared
//! with what the agent observed from netlink. Pure, so the expectations are unit-tested on their own.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use testbed_api::{Backend, NodeSpec, ObservedNetwork};

/// The route a node must hold to reach a peer's pods (udp: one route for the whole pod CIDR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedRoute {
    pub dest: Ipv4Net,
    /// Tokens that must appear in the route line (`via X`, `dev Y`).
    pub tokens: Vec<String>,
}

pub fn expected_routes(spec: &NodeSpec) -> Vec<ExpectedRoute> {
    match spec.backend {
        Backend::Vxlan => spec
            .peers
            .iter()
            .map(|p| ExpectedRoute {
                dest: p.pod_subnet,
                tokens: vec![p.pod_subnet.network().to_string(), "flannel.1".into()],
            })
            .collect(),
        Backend::HostGw => spec
            .peers
            .iter()
            .map(|p| ExpectedRoute { dest: p.pod_subnet, tokens: vec![p.underlay_ip.to_string()] })
            .collect(),
        Backend::Udp if !spec.peers.is_empty() => {
            vec![ExpectedRoute { dest: spec.pod_cidr, tokens: vec!["flannel0".into()] }]
        }
        Backend::Udp | Backend::None => Vec::new(),
    }
}

fn has_tokens(line: &str, tokens: &[String]) -> bool {
    let words: Vec<String> = line.split_whitespace().map(str::to_ascii_lowercase).collect();
    tokens.iter().all(|t| words.iter().any(|w| *w == t.to_ascii_lowercase()))
}

/// Every difference between the observed state and the spec's; empty means exactly as planned.
pub fn mismatches(spec: &NodeSpec, seen: &ObservedNetwork) -> Vec<String> {
    let mut out = Vec::new();
    let expected = expected_routes(spec);
    // Routes into the pod CIDR, by destination (the node's own subnet on cni0 is not overlay state).
    let mut by_dest: BTreeMap<Ipv4Net, Vec<&String>> = BTreeMap::new();
    for line in &seen.routes {
        let Some(dest) = line.split_whitespace().next().and_then(|d| d.parse::<Ipv4Net>().ok()) else {
            continue;
        };
        if dest != spec.pod_subnet && (spec.pod_cidr.contains(&dest) || dest == spec.pod_cidr) {
            by_dest.entry(dest).or_default().push(line);
        }
    }
    for e in &expected {
        match by_dest.remove(&e.dest).unwrap_or_default().as_slice() {
            [] => out.push(format!("missing route to {} ({})", e.dest, e.tokens.join(" "))),
            [line] if has_tokens(line, &e.tokens) => {}
            [line] => out.push(format!("route `{line}` lacks {}", e.tokens.join(" "))),
            lines => out.push(format!("{} routes to {}: {lines:?}", lines.len(), e.dest)),
        }
    }
    for (dest, lines) in by_dest {
        out.push(format!("unexpected route to {dest}: {lines:?}"));
    }
    if spec.backend == Backend::Vxlan {
        for p in &spec.peers {
            let gw = p.pod_subnet.network().to_string();
            if !seen.neighbours.iter().any(|l| has_tokens(l, &[gw.clone(), p.vtep_mac.clone()])) {
                out.push(format!("missing neighbour {gw} lladdr {} (peer {})", p.vtep_mac, p.name));
            }
            if !seen.fdb.iter().any(|l| has_tokens(l, &[p.vtep_mac.clone(), p.underlay_ip.to_string()])) {
                out.push(format!("missing FDB entry {} dst {} (peer {})", p.vtep_mac, p.underlay_ip, p.name));
            }
        }
        if seen.neighbours.len() > spec.peers.len() {
            out.push(format!(
                "{} neighbours for {} peers: {:?}",
                seen.neighbours.len(),
                spec.peers.len(),
                seen.neighbours
            ));
        }
        if seen.fdb.len() > spec.peers.len() {
            out.push(format!("{} FDB entries for {} peers: {:?}", seen.fdb.len(), spec.peers.len(), seen.fdb));
        }
    } else {
        // Leftovers of a previous vxlan spec are drift too.
        if !seen.neighbours.is_empty() {
            out.push(format!("stale vxlan neighbours: {:?}", seen.neighbours));
        }
        if !seen.fdb.is_empty() {
            out.push(format!("stale vxlan FDB entries: {:?}", seen.fdb));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed_test_support::node_spec::sample_node_spec;

    /// node1 of a two-node lab: its one peer is node2 (192.168.50.12, 10.244.1.0/24, 0e:00:00:00:00:02).
    fn spec(backend: Backend) -> NodeSpec {
        sample_node_spec(1, 2, backend)
    }

    fn seen(routes: &[&str], neigh: &[&str], fdb: &[&str]) -> ObservedNetwork {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        ObservedNetwork { links: vec![], routes: v(routes), neighbours: v(neigh), fdb: v(fdb) }
    }

    #[test]
    fn vxlan_exact_state_matches() {
        let s = seen(
            &[
                "10.244.0.0/24 dev cni0 proto kernel scope link src 10.244.0.1",
                "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink",
            ],
            &["10.244.1.0 lladdr 0E:00:00:00:00:02 PERMANENT"],
            &["0e:00:00:00:00:02 dst 192.168.50.12 self permanent"],
        );
        assert_eq!(mismatches(&spec(Backend::Vxlan), &s), Vec::<String>::new());
    }

    #[test]
    fn vxlan_missing_and_extra_state_is_reported() {
        let s =
            seen(&["10.244.7.0/24 via 10.244.7.0 dev flannel.1 onlink"], &[], &["0e:00:00:00:00:02 dst 192.168.50.99"]);
        let m = mismatches(&spec(Backend::Vxlan), &s);
        assert!(m.iter().any(|x| x.starts_with("missing route to 10.244.1.0/24")), "{m:?}");
        assert!(m.iter().any(|x| x.starts_with("unexpected route to 10.244.7.0/24")), "{m:?}");
        assert!(m.iter().any(|x| x.starts_with("missing neighbour")), "{m:?}");
        assert!(m.iter().any(|x| x.starts_with("missing FDB")), "{m:?}");
    }

    #[test]
    fn host_gw_and_udp_and_none() {
        let hg = seen(&["10.244.1.0/24 via 192.168.50.12 dev eth1"], &[], &[]);
        assert!(mismatches(&spec(Backend::HostGw), &hg).is_empty());
        let stale = seen(&["10.244.1.0/24 via 192.168.50.12 dev eth1"], &["10.244.1.0 lladdr 0e:00:00:00:00:02"], &[]);
        assert_eq!(mismatches(&spec(Backend::HostGw), &stale).len(), 1);
        let udp = seen(&["10.244.0.0/16 dev flannel0"], &[], &[]);
        assert!(mismatches(&spec(Backend::Udp), &udp).is_empty());
        assert!(mismatches(&spec(Backend::None), &seen(&[], &[], &[])).is_empty());
        assert_eq!(mismatches(&spec(Backend::None), &hg).len(), 1);
    }
}
