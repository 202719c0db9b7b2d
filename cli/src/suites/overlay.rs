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

/// Header bytes each backend adds around a pod's packet on the underlay, written out here on purpose rather than
/// taken from `Backend::pod_mtu`: a check that reuses the agent's own formula cannot catch a wrong formula.
mod overhead {
    const IPV4: u32 = 20;
    const UDP: u32 = 8;
    const VXLAN: u32 = 8;
    /// The inner Ethernet header VXLAN carries (flannel.1 is an Ethernet device).
    const ETHERNET: u32 = 14;
    pub const VXLAN_ENCAP: u32 = IPV4 + UDP + VXLAN + ETHERNET;
    /// flannel's udp mode sends the bare IP packet in a UDP datagram.
    pub const UDP_ENCAP: u32 = IPV4 + UDP;
}

/// The largest pod packet the backend's path carries without fragmenting on an underlay of `underlay_mtu`: the
/// MTU the pods' eth0, cni0, the veths and the overlay device must all have.
pub fn overlay_mtu(backend: Backend, underlay_mtu: u32) -> u32 {
    match backend {
        Backend::Vxlan => underlay_mtu - overhead::VXLAN_ENCAP,
        Backend::Udp => underlay_mtu - overhead::UDP_ENCAP,
        Backend::HostGw | Backend::None => underlay_mtu,
    }
}

/// flannel's VXLAN device settings (VNI 1 on Linux's default port).
const VXLAN_LINK: &str = "flannel.1";
const VXLAN_VNI: u32 = 1;
const VXLAN_PORT: u16 = 8472;
const TUN_LINK: &str = "flannel0";
const BRIDGE: &str = "cni0";

/// Differences between the links the agent reports and the backend's: the bridge, the overlay device with its
/// settings and MTU, pod veths on the bridge at the pod MTU, and no device of another backend (a stale
/// flannel.1 or flannel0 after a switch).
pub fn link_mismatches(spec: &NodeSpec, links: &[String]) -> Vec<String> {
    let mtu = overlay_mtu(spec.backend, spec.underlay.mtu);
    let by_name: BTreeMap<&str, &String> =
        links.iter().filter_map(|l| l.split_whitespace().next().map(|n| (n, l))).collect();
    let mut out = Vec::new();
    let mut want = |name: &str, tokens: Vec<String>| match by_name.get(name) {
        None => out.push(format!("missing link {name}")),
        Some(line) if !has_tokens(line, &tokens) => out.push(format!("link `{line}` lacks {}", tokens.join(" "))),
        Some(_) => {}
    };
    want(BRIDGE, vec!["UP".into(), format!("{mtu}"), "bridge".into()]);
    match spec.backend {
        Backend::Vxlan => want(
            VXLAN_LINK,
            vec![
                "UP".into(),
                format!("{mtu}"),
                "vxlan".into(),
                format!("{VXLAN_VNI}"),
                format!("{VXLAN_PORT}"),
                spec.underlay.address.to_string(),
                spec.underlay.interface.clone(),
                "nolearning".into(),
            ],
        ),
        Backend::Udp => want(TUN_LINK, vec!["UP".into(), format!("{mtu}"), "tun".into()]),
        Backend::HostGw | Backend::None => {}
    }
    for (name, stale_unless) in [(VXLAN_LINK, Backend::Vxlan), (TUN_LINK, Backend::Udp)] {
        if spec.backend != stale_unless && by_name.contains_key(name) {
            out.push(format!("stale link of the {stale_unless} backend: {}", by_name[name]));
        }
    }
    for (name, line) in by_name.iter().filter(|(n, _)| n.starts_with("veth")) {
        if !has_tokens(line, &[format!("{mtu}"), "master".into(), BRIDGE.into()]) {
            out.push(format!("pod veth {name} is not on {BRIDGE} at MTU {mtu}: `{line}`"));
        }
    }
    out
}

fn has_tokens(line: &str, tokens: &[String]) -> bool {
    let words: Vec<String> = line.split_whitespace().map(str::to_ascii_lowercase).collect();
    tokens.iter().all(|t| words.iter().any(|w| *w == t.to_ascii_lowercase()))
}

/// Every difference between the observed state and the spec's; empty means exactly as planned.
pub fn mismatches(spec: &NodeSpec, seen: &ObservedNetwork) -> Vec<String> {
    let mut out = link_mismatches(spec, &seen.links);
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

    /// The links a correct agent reports on node1 (192.168.50.11 on eth1, MTU 1500) for `backend`.
    fn links(backend: Backend) -> Vec<String> {
        let mut l = match backend {
            Backend::Vxlan => vec![
                "cni0 UP mtu 1450 bridge",
                "flannel.1 UP mtu 1450 vxlan id 1 dstport 8472 local 192.168.50.11 dev eth1 nolearning",
                "vethab12 UP mtu 1450 veth master cni0",
            ],
            Backend::Udp => vec!["cni0 UP mtu 1472 bridge", "flannel0 UP mtu 1472 tun"],
            Backend::HostGw | Backend::None => vec!["cni0 UP mtu 1500 bridge", "vethab12 UP mtu 1500 veth master cni0"],
        };
        l.sort();
        l.into_iter().map(str::to_string).collect()
    }

    fn seen_on(backend: Backend, routes: &[&str], neigh: &[&str], fdb: &[&str]) -> ObservedNetwork {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        ObservedNetwork { links: links(backend), routes: v(routes), neighbours: v(neigh), fdb: v(fdb) }
    }

    fn seen(routes: &[&str], neigh: &[&str], fdb: &[&str]) -> ObservedNetwork {
        seen_on(Backend::Vxlan, routes, neigh, fdb)
    }

    #[test]
    fn overlay_mtu_from_header_sizes_agrees_with_the_agent() {
        for b in Backend::ALL {
            assert_eq!(overlay_mtu(b, 1500), b.pod_mtu(1500), "{b}");
        }
        assert_eq!(overlay_mtu(Backend::Vxlan, 9000), 8950);
        assert_eq!(overlay_mtu(Backend::Udp, 1500), 1472);
    }

    #[test]
    fn links_of_each_backend_match_and_faults_are_named() {
        for b in Backend::ALL {
            assert!(link_mismatches(&spec(b), &links(b)).is_empty(), "{b}: {:?}", link_mismatches(&spec(b), &links(b)));
        }
        // A stale flannel.1 after switching to host-gw.
        let mut stale = links(Backend::HostGw);
        stale.push(links(Backend::Vxlan)[1].clone());
        let m = link_mismatches(&spec(Backend::HostGw), &stale);
        assert!(m.len() == 1 && m[0].starts_with("stale link of the vxlan backend"), "{m:?}");
        // An overlay device 10 bytes too big (a wrong overhead), a veth off the bridge, no bridge.
        let wrong: Vec<String> =
            links(Backend::Vxlan).iter().map(|l| l.replace("flannel.1 UP mtu 1450", "flannel.1 UP mtu 1460")).collect();
        assert!(link_mismatches(&spec(Backend::Vxlan), &wrong).iter().any(|x| x.contains("lacks UP 1450 vxlan")));
        let loose: Vec<String> = links(Backend::Vxlan).iter().map(|l| l.replace(" master cni0", "")).collect();
        assert!(link_mismatches(&spec(Backend::Vxlan), &loose).iter().any(|x| x.starts_with("pod veth vethab12")));
        let m = link_mismatches(&spec(Backend::Udp), &[]);
        assert_eq!(m, vec!["missing link cni0".to_string(), "missing link flannel0".to_string()]);
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
        let hg = seen_on(Backend::HostGw, &["10.244.1.0/24 via 192.168.50.12 dev eth1"], &[], &[]);
        assert!(mismatches(&spec(Backend::HostGw), &hg).is_empty());
        let stale = seen_on(
            Backend::HostGw,
            &["10.244.1.0/24 via 192.168.50.12 dev eth1"],
            &["10.244.1.0 lladdr 0e:00:00:00:00:02"],
            &[],
        );
        assert_eq!(mismatches(&spec(Backend::HostGw), &stale).len(), 1);
        let udp = seen_on(Backend::Udp, &["10.244.0.0/16 dev flannel0"], &[], &[]);
        assert!(mismatches(&spec(Backend::Udp), &udp).is_empty());
        assert!(mismatches(&spec(Backend::None), &seen_on(Backend::None, &[], &[], &[])).is_empty());
        assert_eq!(mismatches(&spec(Backend::None), &hg).len(), 1);
    }
}
