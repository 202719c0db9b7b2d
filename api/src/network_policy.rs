//! The network policy enforcer's node-local desired state (`PUT /v1/network-policies`) and what the agent
//! reads back (`GET /v1/network-policies`). The follower of the API's NetworkPolicies, Pods and Namespaces
//! compiles it (selectors resolved to pod IPs, named ports to numbers); the agent turns it into the table
//! `inet testbed-policy` (docs/architecture.md, "NetworkPolicy").

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::validate::is_dns_label;
use crate::ApiError;

/// Every pod of the node that some policy restricts: the whole desired set, replaced on every PUT. A pod
/// not listed (or listed with a direction `None`) is open in that direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicyNodeSpec {
    /// One entry per restricted pod of this node.
    pub pods: Vec<PolicedPod>,
}

/// One pod and what it may receive and send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicedPod {
    /// The pod's namespace (part of its chains' names).
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's IP: the key of its entries in the lookup maps.
    pub ip: Ipv4Addr,
    /// None: open; Some: only what one of the rules allows comes in (none: nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<PolicyRule>>,
    /// None: open; Some: only what one of the rules allows goes out (none: nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<PolicyRule>>,
}

/// Traffic from (ingress) or to (egress) any of `peers` on any of `ports`; an empty list is "any".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Address blocks (a pod is its /32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PolicyPeer>,
    /// Destination ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// A CIDR less the CIDRs in `except`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPeer {
    /// `10.244.1.5/32`, `10.0.0.0/8`.
    pub cidr: Ipv4Net,
    /// Strict subsets of `cidr` that are not part of the peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Ipv4Net>,
}

/// A protocol, and a port or a range of them (none: every port of the protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPort {
    /// TCP, UDP or SCTP.
    pub protocol: PolicyProtocol,
    /// The destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// With `port`: the range `port..=end_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

/// The protocols a NetworkPolicy port names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PolicyProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl PolicyProtocol {
    /// nft's name for it (`meta l4proto tcp`).
    pub fn nft(self) -> &'static str {
        match self {
            PolicyProtocol::Tcp => "tcp",
            PolicyProtocol::Udp => "udp",
            PolicyProtocol::Sctp => "sctp",
        }
    }
}

/// `GET /v1/network-policies`: the table as the kernel holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicyStatus {
    /// nft transactions run since the agent started.
    pub transactions: u64,
    /// Reconciles that found the table changed behind the agent's back and rewrote it.
    pub drift_repairs: u64,
    /// The last apply's or reconcile's error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// While the node follows the API: the NetworkPolicies (`namespace/name` -> resourceVersion) the table in
    /// force was built from. A policy is enforced here once its version (or a later one) is listed, and no
    /// longer once its name is gone; changes of pod or namespace labels do not show here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub built_from: BTreeMap<String, String>,
    /// Pod IPs in the kernel's ingress lookup map (pods whose ingress is restricted).
    pub ingress_pods: Vec<Ipv4Addr>,
    /// Pod IPs in the kernel's egress lookup map.
    pub egress_pods: Vec<Ipv4Addr>,
    /// `nft list table inet testbed-policy` as read now; None when the table does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

fn err(field: String, message: impl Into<String>) -> ApiError {
    ApiError { field: Some(field), message: message.into(), leaked: vec![] }
}

/// Checks a spec before anything is touched; the error names the field (`pods[1].ingress[0].ports[0].port`).
pub fn validate_network_policies(spec: &NetworkPolicyNodeSpec) -> Result<(), ApiError> {
    let mut names = std::collections::BTreeSet::new();
    let mut ips = std::collections::BTreeSet::new();
    for (i, pod) in spec.pods.iter().enumerate() {
        let at = |f: &str| format!("pods[{i}].{f}");
        if !is_dns_label(&pod.namespace, 63) {
            return Err(err(at("namespace"), format!("`{}` is not a DNS label", pod.namespace)));
        }
        let subdomain = pod.name.len() <= 253 && pod.name.split('.').all(|l| is_dns_label(l, 63));
        if !subdomain {
            return Err(err(at("name"), format!("`{}` is not a DNS subdomain", pod.name)));
        }
        if !names.insert((&pod.namespace, &pod.name)) {
            return Err(err(at("name"), format!("duplicate pod {}/{}", pod.namespace, pod.name)));
        }
        if pod.ip.is_unspecified() || pod.ip.is_loopback() || pod.ip.is_multicast() || pod.ip.is_broadcast() {
            return Err(err(at("ip"), format!("{} cannot be a pod's IP", pod.ip)));
        }
        if !ips.insert(pod.ip) {
            return Err(err(at("ip"), format!("{} is given to two pods", pod.ip)));
        }
        for (direction, rules) in [("ingress", &pod.ingress), ("egress", &pod.egress)] {
            for (j, rule) in rules.iter().flatten().enumerate() {
                validate_rule(&at(&format!("{direction}[{j}]")), rule)?;
            }
        }
    }
    Ok(())
}

fn validate_rule(at: &str, rule: &PolicyRule) -> Result<(), ApiError> {
    for (k, peer) in rule.peers.iter().enumerate() {
        for (l, except) in peer.except.iter().enumerate() {
            if !peer.cidr.contains(except) || except.prefix_len() <= peer.cidr.prefix_len() {
                return Err(err(
                    format!("{at}.peers[{k}].except[{l}]"),
                    format!("{except} is not a strict subset of {}", peer.cidr),
                ));
            }
        }
    }
    for (k, port) in rule.ports.iter().enumerate() {
        let field = |f: &str| format!("{at}.ports[{k}].{f}");
        match (port.port, port.end_port) {
            (Some(0), _) => return Err(err(field("port"), "must be within 1..=65535")),
            (None, Some(_)) => return Err(err(field("end_port"), "needs a port")),
            (Some(p), Some(end)) if end < p => {
                return Err(err(field("end_port"), format!("{end} is below the port {p}")))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ip: &str, ingress: Option<Vec<PolicyRule>>) -> PolicedPod {
        PolicedPod { namespace: "default".into(), name: "db".into(), ip: ip.parse().unwrap(), ingress, egress: None }
    }

    #[test]
    fn refusals_name_the_field() {
        let rule = |peers: Vec<PolicyPeer>, ports: Vec<PolicyPort>| Some(vec![PolicyRule { peers, ports }]);
        let block = |cidr: &str, except: &str| PolicyPeer {
            cidr: cidr.parse().unwrap(),
            except: vec![except.parse().unwrap()],
        };
        let port =
            |port: Option<u16>, end_port: Option<u16>| PolicyPort { protocol: PolicyProtocol::Tcp, port, end_port };
        let cases = [
            (vec![pod("0.0.0.0", None)], "pods[0].ip"),
            (
                vec![pod("10.244.1.2", rule(vec![block("10.0.0.0/16", "10.1.0.0/24")], vec![]))],
                "pods[0].ingress[0].peers[0].except[0]",
            ),
            (
                vec![pod("10.244.1.2", rule(vec![block("10.0.0.0/16", "10.0.0.0/16")], vec![]))],
                "pods[0].ingress[0].peers[0].except[0]",
            ),
            (
                vec![pod("10.244.1.2", rule(vec![], vec![port(Some(90), Some(80))]))],
                "pods[0].ingress[0].ports[0].end_port",
            ),
            (vec![pod("10.244.1.2", rule(vec![], vec![port(None, Some(80))]))], "pods[0].ingress[0].ports[0].end_port"),
            (vec![pod("10.244.1.2", rule(vec![], vec![port(Some(0), None)]))], "pods[0].ingress[0].ports[0].port"),
            (vec![pod("10.244.1.2", None), pod("10.244.1.3", None)], "pods[1].name"),
        ];
        for (pods, field) in cases {
            let e = validate_network_policies(&NetworkPolicyNodeSpec { pods }).expect_err(field);
            assert_eq!(e.field.as_deref(), Some(field), "{e:?}");
        }
        let ok = NetworkPolicyNodeSpec {
            pods: vec![pod(
                "10.244.1.2",
                rule(vec![block("10.0.0.0/8", "10.1.0.0/16")], vec![port(Some(80), Some(90))]),
            )],
        };
        validate_network_policies(&ok).expect("valid");
    }
}
