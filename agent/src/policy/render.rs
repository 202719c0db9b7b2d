//! A `NetworkPolicyNodeSpec` as the table `inet testbed-policy` (docs/architecture.md, "NetworkPolicy"): base
//! chains on the forward and input hooks that accept what conntrack already let through, then look the
//! packet's pod up in a verdict map (one hash lookup whatever the number of pods), and per restricted pod a
//! chain of what its policies allow, ending in a drop.

use std::collections::BTreeMap;
use std::fmt::Write;

use ipnet::Ipv4Net;
use testbed_api::{NetworkPolicyNodeSpec, PolicedPod, PolicyProtocol, PolicyRule};

/// The table, apart from the service proxy's `ip testbed-proxy`; `inet` so that its hooks also see the IPv4
/// frames br_netfilter passes up from the bridge.
pub const TABLE: &str = "testbed-policy";
pub const FAMILY: &str = "inet";
/// Pod IP -> `jump ingress-<ns>/<name>`, for pods whose ingress is restricted.
pub const INGRESS_PODS: &str = "ingress-pods";
/// Pod IP -> `jump egress-<ns>/<name>`, for pods whose egress is restricted.
pub const EGRESS_PODS: &str = "egress-pods";

/// Which way a pod's chain looks at packets: ingress matches their source, egress their destination.
#[derive(Clone, Copy)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The address the rules match: the peer's.
    fn peer_addr(self) -> &'static str {
        match self {
            Direction::Ingress => "ip saddr",
            Direction::Egress => "ip daddr",
        }
    }

    /// What an allowed packet gets. Egress returns to the base chain, so the destination pod's ingress chain
    /// still looks at it (both ends must allow a pod-to-pod connection); ingress is the last check.
    fn allowed(self) -> &'static str {
        match self {
            Direction::Ingress => "accept",
            Direction::Egress => "return",
        }
    }
}

/// The nft script that replaces the table with `spec`'s, as one transaction: the table is created (a no-op
/// when it exists) and deleted first, so the kernel ends with exactly this whatever it held.
pub fn script(spec: &NetworkPolicyNodeSpec) -> String {
    let mut s = format!("table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n{}", table(spec));
    s.push('\n');
    s
}

/// The table itself (spec validated: names are DNS labels and subdomains, so chain names need no quoting).
pub fn table(spec: &NetworkPolicyNodeSpec) -> String {
    let mut t = format!("table {FAMILY} {TABLE} {{\n");
    for (map, direction, restricted) in [
        (INGRESS_PODS, Direction::Ingress, spec.pods.iter().filter(|p| p.ingress.is_some()).collect::<Vec<_>>()),
        (EGRESS_PODS, Direction::Egress, spec.pods.iter().filter(|p| p.egress.is_some()).collect()),
    ] {
        let _ = writeln!(t, "\tmap {map} {{\n\t\ttype ipv4_addr : verdict");
        if !restricted.is_empty() {
            let elements: Vec<String> =
                restricted.iter().map(|p| format!("{} : jump {}", p.ip, chain_name(direction, p))).collect();
            let _ = writeln!(t, "\t\telements = {{ {} }}", elements.join(", "));
        }
        t.push_str("\t}\n");
    }
    // Pod to pod (this node's bridge, or another node through the overlay) and pod to the world: forward.
    // A pod to its own node: input. The node to its pods is never restricted (Kubernetes: a pod cannot block
    // its node, whose kubelet probes it), so there is no output chain.
    base_chain(&mut t, "forward", &[EGRESS_PODS, INGRESS_PODS]);
    base_chain(&mut t, "input", &[EGRESS_PODS]);
    for pod in &spec.pods {
        for (direction, rules) in [(Direction::Ingress, &pod.ingress), (Direction::Egress, &pod.egress)] {
            if let Some(rules) = rules {
                pod_chain(&mut t, direction, pod, rules);
            }
        }
    }
    t.push_str("}\n");
    t
}

fn chain_name(direction: Direction, pod: &PolicedPod) -> String {
    format!("{}-{}/{}", direction.name(), pod.namespace, pod.name)
}

fn base_chain(t: &mut String, hook: &str, maps: &[&str]) {
    // Priority filter (0): after the service proxy's DNAT (prerouting, dstnat), so policies see the pod a
    // Service connection really goes to, as Kubernetes' semantics are on pod IPs.
    let _ = writeln!(t, "\tchain {hook} {{\n\t\ttype filter hook {hook} priority filter; policy accept;");
    // Replies and the rest of an allowed connection pass without a lookup: only new connections are judged.
    t.push_str("\t\tct state established,related accept\n");
    for map in maps {
        let addr = if *map == EGRESS_PODS { "ip saddr" } else { "ip daddr" };
        let _ = writeln!(t, "\t\t{addr} vmap @{map}");
    }
    t.push_str("\t}\n");
}

fn pod_chain(t: &mut String, direction: Direction, pod: &PolicedPod, rules: &[PolicyRule]) {
    let _ = writeln!(t, "\tchain {} {{", chain_name(direction, pod));
    for rule in rules {
        for peer in peer_matches(direction, rule) {
            for port in port_matches(rule) {
                let parts: Vec<&str> =
                    [peer.as_str(), port.as_str(), direction.allowed()].into_iter().filter(|p| !p.is_empty()).collect();
                let _ = writeln!(t, "\t\t{}", parts.join(" "));
            }
        }
    }
    t.push_str("\t\tdrop\n\t}\n");
}

/// The peer half of a rule's nft rules: one empty match for "any peer"; otherwise the peers without
/// exceptions as one set (aggregated: nft refuses overlapping intervals in a set) and each peer with
/// exceptions as a match of its own.
fn peer_matches(direction: Direction, rule: &PolicyRule) -> Vec<String> {
    if rule.peers.is_empty() {
        return vec![String::new()];
    }
    let addr = direction.peer_addr();
    let plain: Vec<Ipv4Net> = rule.peers.iter().filter(|p| p.except.is_empty()).map(|p| p.cidr.trunc()).collect();
    let mut out = Vec::new();
    if !plain.is_empty() {
        out.push(format!("{addr} {}", set(Ipv4Net::aggregate(&plain).iter().map(|n| net(*n)))));
    }
    for peer in rule.peers.iter().filter(|p| !p.except.is_empty()) {
        let except: Vec<Ipv4Net> = peer.except.iter().map(|n| n.trunc()).collect();
        let except = set(Ipv4Net::aggregate(&except).iter().map(|n| net(*n)));
        out.push(format!("{addr} {} {addr} != {except}", net(peer.cidr.trunc())));
    }
    out
}

/// The port half: one empty match for "any port"; otherwise per protocol `meta l4proto P` with its ports
/// (merged ranges) or none when one of its entries names no port.
fn port_matches(rule: &PolicyRule) -> Vec<String> {
    if rule.ports.is_empty() {
        return vec![String::new()];
    }
    // None: every port of the protocol.
    let mut by_protocol: BTreeMap<PolicyProtocol, Option<Vec<(u16, u16)>>> = BTreeMap::new();
    for p in &rule.ports {
        let entry = by_protocol.entry(p.protocol).or_insert_with(|| Some(Vec::new()));
        match (p.port, entry.as_mut()) {
            (Some(port), Some(ranges)) => ranges.push((port, p.end_port.unwrap_or(port))),
            _ => *entry = None,
        }
    }
    by_protocol
        .into_iter()
        .map(|(protocol, ranges)| match ranges {
            None => format!("meta l4proto {}", protocol.nft()),
            Some(ranges) => format!("meta l4proto {} th dport {}", protocol.nft(), set(merge(ranges))),
        })
        .collect()
}

/// Sorted, with overlapping and adjacent ranges joined (nft refuses overlapping intervals in a set).
fn merge(mut ranges: Vec<(u16, u16)>) -> impl Iterator<Item = String> {
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged.into_iter().map(|(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") })
}

/// A single address without its /32, as nft writes it back.
fn net(n: Ipv4Net) -> String {
    if n.prefix_len() == 32 {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

fn set(items: impl Iterator<Item = String>) -> String {
    format!("{{ {} }}", items.collect::<Vec<_>>().join(", "))
}

/// The pod IPs of a lookup map in `nft list table` output (the element keys of `map NAME { ... }`).
pub fn map_keys(listing: &str, map: &str) -> Vec<std::net::Ipv4Addr> {
    let Some(start) = listing.find(&format!("map {map} {{")) else { return Vec::new() };
    let body = &listing[start..];
    let body = &body[..body.find("\n\t}").unwrap_or(body.len())];
    body.split(|c: char| c.is_whitespace() || matches!(c, ',' | '{' | '}')).filter_map(|w| w.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use testbed_api::{PolicyPeer, PolicyPort};

    use super::*;

    fn pod(ingress: Option<Vec<PolicyRule>>, egress: Option<Vec<PolicyRule>>) -> PolicedPod {
        PolicedPod {
            namespace: "default".into(),
            name: "db".into(),
            ip: "10.244.1.2".parse().unwrap(),
            ingress,
            egress,
        }
    }

    fn peer(cidr: &str, except: &[&str]) -> PolicyPeer {
        PolicyPeer { cidr: cidr.parse().unwrap(), except: except.iter().map(|e| e.parse().unwrap()).collect() }
    }

    fn port(protocol: PolicyProtocol, port: Option<u16>, end_port: Option<u16>) -> PolicyPort {
        PolicyPort { protocol, port, end_port }
    }

    #[test]
    fn chains_allow_what_the_rules_say_and_drop_the_rest() {
        let rule = PolicyRule {
            peers: vec![
                peer("10.244.2.3/32", &[]),
                peer("10.244.0.0/16", &[]),
                peer("192.168.0.0/16", &["192.168.1.0/24"]),
            ],
            ports: vec![
                port(PolicyProtocol::Tcp, Some(80), None),
                port(PolicyProtocol::Tcp, Some(81), Some(90)),
                port(PolicyProtocol::Udp, None, None),
            ],
        };
        let spec = NetworkPolicyNodeSpec { pods: vec![pod(Some(vec![rule]), Some(vec![]))] };
        let t = table(&spec);
        for line in [
            "elements = { 10.244.1.2 : jump ingress-default/db }",
            "elements = { 10.244.1.2 : jump egress-default/db }",
            "ct state established,related accept\n\t\tip saddr vmap @egress-pods\n\t\tip daddr vmap @ingress-pods",
            "ip saddr { 10.244.0.0/16 } meta l4proto tcp th dport { 80-90 } accept",
            "ip saddr { 10.244.0.0/16 } meta l4proto udp accept",
            "ip saddr 192.168.0.0/16 ip saddr != { 192.168.1.0/24 } meta l4proto tcp th dport { 80-90 } accept",
            "chain egress-default/db {\n\t\tdrop\n\t}",
        ] {
            assert!(t.contains(line), "missing `{line}` in:\n{t}");
        }
    }

    #[test]
    fn an_open_pod_has_no_entry_and_any_is_a_bare_verdict() {
        let any = PolicyRule::default();
        let spec = NetworkPolicyNodeSpec { pods: vec![pod(None, Some(vec![any]))] };
        let t = table(&spec);
        assert!(!t.contains("jump ingress-"), "{t}");
        assert!(t.contains("chain egress-default/db {\n\t\treturn\n\t\tdrop\n\t}"), "{t}");
        assert_eq!(map_keys(&t, EGRESS_PODS), vec!["10.244.1.2".parse::<std::net::Ipv4Addr>().unwrap()]);
        assert!(map_keys(&t, INGRESS_PODS).is_empty());
    }
}
