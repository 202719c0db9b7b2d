//! The API's NetworkPolicies, Pods and Namespaces as this node's `NetworkPolicyNodeSpec` (pure): for each pod
//! of the node, the policies of its namespace whose `podSelector` picks it; a pod picked by none of a type is
//! open for that type, a picked one allows the union of its policies' rules. Peers are resolved to the IPs of
//! every pod in the cluster they pick (a pod is its /32), named ports to numbers on the pod they are on: the
//! target pod's container ports for ingress, each destination pod's for egress, as Kubernetes does.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use testbed_api::objects::{
    IntOrString, Namespace, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, Pod, POLICY_TYPE_EGRESS,
    POLICY_TYPE_INGRESS,
};
use testbed_api::{NetworkPolicyNodeSpec, PodPhase, PolicedPod, PolicyPeer, PolicyPort, PolicyProtocol, PolicyRule};

/// The label Kubernetes puts on every namespace (its name), which namespace selectors commonly use.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A pod as policies see it: running with an IP on the pod network.
struct Member<'a> {
    pod: &'a Pod,
    namespace: &'a str,
    ip: Ipv4Addr,
}

/// The spec for `node`.
pub fn build(policies: &[NetworkPolicy], pods: &[Pod], namespaces: &[Namespace], node: &str) -> NetworkPolicyNodeSpec {
    let members: Vec<Member<'_>> = pods.iter().filter_map(member).collect();
    let ns_labels: BTreeMap<&str, BTreeMap<String, String>> = namespaces
        .iter()
        .map(|ns| {
            let mut labels = ns.metadata.labels.clone();
            labels.insert(NAMESPACE_NAME_LABEL.into(), ns.metadata.name.clone());
            (ns.metadata.name.as_str(), labels)
        })
        .collect();
    let world = World { members: &members, ns_labels };
    let mut out: Vec<PolicedPod> = Vec::new();
    for target in members.iter().filter(|m| m.pod.spec.node_name.as_deref() == Some(node)) {
        let mut policed = PolicedPod {
            namespace: target.namespace.to_string(),
            name: target.pod.metadata.name.clone(),
            ip: target.ip,
            ingress: None,
            egress: None,
        };
        let selecting = policies.iter().filter(|p| {
            p.metadata.namespace.as_deref().unwrap_or("default") == target.namespace
                && p.spec.pod_selector.matches(&target.pod.metadata.labels)
        });
        for policy in selecting {
            let ns = policy.metadata.namespace.as_deref().unwrap_or("default");
            if policy.spec.restricts(POLICY_TYPE_INGRESS) {
                let rules = policed.ingress.get_or_insert_with(Vec::new);
                for rule in &policy.spec.ingress {
                    rules.extend(world.ingress_rule(ns, target, &rule.from, &rule.ports));
                }
            }
            if policy.spec.restricts(POLICY_TYPE_EGRESS) {
                let rules = policed.egress.get_or_insert_with(Vec::new);
                for rule in &policy.spec.egress {
                    rules.extend(world.egress_rule(ns, &rule.to, &rule.ports));
                }
            }
        }
        if policed.ingress.is_some() || policed.egress.is_some() {
            out.push(policed);
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    NetworkPolicyNodeSpec { pods: out }
}

/// Pods that have an IPv4 pod-network address and have not finished; host-network pods are not policed and
/// are no pod peer (their address is the node's).
fn member(pod: &Pod) -> Option<Member<'_>> {
    let status = pod.status.as_ref()?;
    if pod.spec.host_network || matches!(status.phase, Some(PodPhase::Succeeded | PodPhase::Failed)) {
        return None;
    }
    let ip = status.pod_ip.as_deref()?.parse().ok()?;
    Some(Member { pod, namespace: pod.metadata.namespace.as_deref().unwrap_or("default"), ip })
}

struct World<'a> {
    members: &'a [Member<'a>],
    ns_labels: BTreeMap<&'a str, BTreeMap<String, String>>,
}

impl World<'_> {
    /// The pods `peer` picks (none for an ipBlock peer).
    fn pods_of(&self, policy_ns: &str, peer: &NetworkPolicyPeer) -> Vec<&Member<'_>> {
        if peer.ip_block.is_some() {
            return Vec::new();
        }
        let no_labels = BTreeMap::new();
        self.members
            .iter()
            .filter(|m| match &peer.namespace_selector {
                Some(sel) => sel.matches(self.ns_labels.get(m.namespace).unwrap_or(&no_labels)),
                None => m.namespace == policy_ns,
            })
            .filter(|m| peer.pod_selector.as_ref().is_none_or(|sel| sel.matches(&m.pod.metadata.labels)))
            .collect()
    }

    /// `from`/`to` as address peers: None for "any" (an empty list); Some(empty) when the peers pick nothing,
    /// which allows nothing.
    fn peers(&self, policy_ns: &str, peers: &[NetworkPolicyPeer]) -> Option<Vec<PolicyPeer>> {
        if peers.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        for peer in peers {
            match &peer.ip_block {
                Some(block) => out.extend(ip_block(&block.cidr, &block.except)),
                None => out.extend(self.pods_of(policy_ns, peer).iter().map(|m| host(m.ip))),
            }
        }
        Some(out)
    }

    /// One ingress rule of a policy for `target`: named ports are the target's own.
    fn ingress_rule(
        &self,
        policy_ns: &str,
        target: &Member<'_>,
        from: &[NetworkPolicyPeer],
        ports: &[NetworkPolicyPort],
    ) -> Option<PolicyRule> {
        let peers = self.peers(policy_ns, from);
        if peers.as_ref().is_some_and(Vec::is_empty) {
            return None;
        }
        let resolved: Vec<PolicyPort> = ports.iter().flat_map(|p| resolve(p, target.pod)).collect();
        if !ports.is_empty() && resolved.is_empty() {
            return None;
        }
        Some(PolicyRule { peers: peers.unwrap_or_default(), ports: resolved })
    }

    /// One egress rule: numeric ports for every peer; a named port per destination pod that has it (a
    /// destination that is no pod has no named ports).
    fn egress_rule(&self, policy_ns: &str, to: &[NetworkPolicyPeer], ports: &[NetworkPolicyPort]) -> Vec<PolicyRule> {
        let peers = self.peers(policy_ns, to);
        if peers.as_ref().is_some_and(Vec::is_empty) {
            return Vec::new();
        }
        let named = |p: &&NetworkPolicyPort| matches!(p.port, Some(IntOrString::String(_)));
        let numeric: Vec<PolicyPort> =
            ports.iter().filter(|p| !named(p)).flat_map(|p| resolve(p, &Pod::default())).collect();
        let mut rules = Vec::new();
        if ports.is_empty() || !numeric.is_empty() {
            rules.push(PolicyRule { peers: peers.clone().unwrap_or_default(), ports: numeric });
        }
        if ports.iter().any(|p| named(&p)) {
            let destinations: Vec<&Member<'_>> = if to.is_empty() {
                self.members.iter().collect()
            } else {
                to.iter().flat_map(|peer| self.pods_of(policy_ns, peer)).collect()
            };
            for dst in destinations {
                let resolved: Vec<PolicyPort> = ports.iter().filter(named).flat_map(|p| resolve(p, dst.pod)).collect();
                if !resolved.is_empty() {
                    rules.push(PolicyRule { peers: vec![host(dst.ip)], ports: resolved });
                }
            }
        }
        rules
    }
}

fn host(ip: Ipv4Addr) -> PolicyPeer {
    PolicyPeer { cidr: Ipv4Net::from(ip), except: Vec::new() }
}

/// An ipBlock as a peer; an IPv6 block has no IPv4 traffic to match (testbed's pod network is IPv4).
fn ip_block(cidr: &str, except: &[String]) -> Option<PolicyPeer> {
    let IpNet::V4(cidr) = cidr.parse::<IpNet>().ok()? else { return None };
    let except = except
        .iter()
        .filter_map(|e| match e.parse::<IpNet>() {
            Ok(IpNet::V4(n)) => Some(n.trunc()),
            _ => None,
        })
        .collect();
    Some(PolicyPeer { cidr: cidr.trunc(), except })
}

/// A policy port on `pod`: a number as it is, a name as the pod's container port of that name and protocol
/// (none when the pod has no such port).
fn resolve(port: &NetworkPolicyPort, pod: &Pod) -> Option<PolicyPort> {
    let protocol = match port.protocol.as_deref() {
        None | Some("TCP") => PolicyProtocol::Tcp,
        Some("UDP") => PolicyProtocol::Udp,
        Some("SCTP") => PolicyProtocol::Sctp,
        Some(_) => return None,
    };
    let number = |n: i32| u16::try_from(n).ok().filter(|n| *n > 0);
    match &port.port {
        None => Some(PolicyPort { protocol, port: None, end_port: None }),
        Some(IntOrString::Int(n)) => {
            Some(PolicyPort { protocol, port: Some(number(*n)?), end_port: port.end_port.and_then(number) })
        }
        Some(IntOrString::String(name)) => {
            let on_pod = pod.spec.containers.iter().flat_map(|c| &c.ports).find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP") == port.protocol.as_deref().unwrap_or("TCP")
            })?;
            Some(PolicyPort { protocol, port: Some(number(on_pod.container_port)?), end_port: None })
        }
    }
}

#[cfg(test)]
#[path = "policy_spec_tests.rs"]
mod tests;
