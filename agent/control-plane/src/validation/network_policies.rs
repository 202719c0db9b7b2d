//! NetworkPolicies, with the rules and wording of Kubernetes' `ValidateNetworkPolicy`
//! (`pkg/apis/networking/validation`): selectors, peers (exactly the allowed combinations), ipBlocks, ports
//! with `endPort`, and `policyTypes`.

use ipnet::IpNet;
use testbed_api::objects::{IntOrString, IpBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};

use super::services::{is_port_name, port_number, unsupported};
use super::{invalid, label_selector, ValidationError};

const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
const POLICY_TYPES: [&str; 2] = ["Ingress", "Egress"];

pub(super) fn check_network_policy(policy: &NetworkPolicy) -> Result<(), ValidationError> {
    dns_subdomain("metadata.name", &policy.metadata.name)?;
    let spec = &policy.spec;
    label_selector("spec.podSelector", &spec.pod_selector)?;
    for (i, rule) in spec.ingress.iter().enumerate() {
        let at = format!("spec.ingress[{i}]");
        ports(&at, &rule.ports)?;
        peers(&format!("{at}.from"), &rule.from)?;
    }
    for (i, rule) in spec.egress.iter().enumerate() {
        let at = format!("spec.egress[{i}]");
        ports(&at, &rule.ports)?;
        peers(&format!("{at}.to"), &rule.to)?;
    }
    if spec.policy_types.len() > POLICY_TYPES.len() {
        return Err(invalid("spec.policyTypes", "Invalid value: may not specify more than two policyTypes"));
    }
    for (i, t) in spec.policy_types.iter().enumerate() {
        if !POLICY_TYPES.contains(&t.as_str()) {
            return Err(unsupported(&format!("spec.policyTypes[{i}]"), t, &POLICY_TYPES));
        }
    }
    Ok(())
}

/// A DNS-1123 subdomain, as Kubernetes names NetworkPolicies: dot-separated DNS labels, at most 253.
fn dns_subdomain(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(invalid(field, "Required value: name or generateName is required"));
    }
    let labels_ok = value.split('.').all(|l| testbed_api::validate::is_dns_label(l, 63));
    if value.len() > 253 || !labels_ok {
        return Err(invalid(
            field,
            format!(
                "Invalid value: \"{value}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
                 characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ));
    }
    Ok(())
}

fn ports(rule: &str, ports: &[NetworkPolicyPort]) -> Result<(), ValidationError> {
    for (j, port) in ports.iter().enumerate() {
        let at = format!("{rule}.ports[{j}]");
        if let Some(p) = port.protocol.as_deref() {
            if !PROTOCOLS.contains(&p) {
                return Err(unsupported(&format!("{at}.protocol"), p, &PROTOCOLS));
            }
        }
        match (&port.port, port.end_port) {
            (Some(IntOrString::Int(n)), end) => {
                port_number(&format!("{at}.port"), *n)?;
                if let Some(end) = end {
                    if end < *n {
                        return Err(invalid(
                            format!("{at}.endPort"),
                            format!("Invalid value: {n}: must be greater than or equal to `port`"),
                        ));
                    }
                    port_number(&format!("{at}.endPort"), end)?;
                }
            }
            (Some(IntOrString::String(name)), end) => {
                if let Some(end) = end {
                    return Err(invalid(
                        format!("{at}.endPort"),
                        format!("Invalid value: {end}: may not be specified when `port` is non-numeric"),
                    ));
                }
                if !is_port_name(name) {
                    return Err(invalid(
                        format!("{at}.port"),
                        format!("Invalid value: \"{name}\": must be a valid port name (IANA_SVC_NAME)"),
                    ));
                }
            }
            (None, Some(end)) => {
                return Err(invalid(
                    format!("{at}.endPort"),
                    format!("Invalid value: {end}: may not be specified when `port` is not specified"),
                ))
            }
            (None, None) => {}
        }
    }
    Ok(())
}

fn peers(at: &str, peers: &[NetworkPolicyPeer]) -> Result<(), ValidationError> {
    for (k, peer) in peers.iter().enumerate() {
        let at = format!("{at}[{k}]");
        if let Some(s) = &peer.pod_selector {
            label_selector(&format!("{at}.podSelector"), s)?;
        }
        if let Some(s) = &peer.namespace_selector {
            label_selector(&format!("{at}.namespaceSelector"), s)?;
        }
        let selectors = usize::from(peer.pod_selector.is_some()) + usize::from(peer.namespace_selector.is_some());
        match &peer.ip_block {
            None if selectors == 0 => return Err(invalid(at, "Required value: must specify a peer")),
            None => {}
            Some(_) if selectors > 0 => {
                return Err(invalid(at, "Forbidden: may not specify both ipBlock and another peer"))
            }
            Some(block) => ip_block(&format!("{at}.ipBlock"), block)?,
        }
    }
    Ok(())
}

fn ip_block(at: &str, block: &IpBlock) -> Result<(), ValidationError> {
    if block.cidr.is_empty() {
        return Err(invalid(format!("{at}.cidr"), "Required value"));
    }
    let cidr = parse_cidr(&format!("{at}.cidr"), &block.cidr)?.trunc();
    for (i, except) in block.except.iter().enumerate() {
        let field = format!("{at}.except[{i}]");
        let inner = parse_cidr(&field, except)?;
        if !cidr.contains(&inner.network()) || cidr.prefix_len() >= inner.prefix_len() {
            return Err(invalid(field, format!("Invalid value: \"{except}\": must be a strict subset of `cidr`")));
        }
    }
    Ok(())
}

fn parse_cidr(field: &str, s: &str) -> Result<IpNet, ValidationError> {
    s.parse::<IpNet>().map_err(|_| {
        invalid(
            field,
            format!("Invalid value: \"{s}\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::{check, ValidationError};
    use crate::resources::Kind;

    fn policy(spec: Value) -> Value {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "allow-web", "namespace": "default"}, "spec": spec})
    }

    fn field_of(obj: Value) -> String {
        match check(Kind::NetworkPolicy, obj) {
            Err(ValidationError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn valid_policies_pass() {
        let specs = [
            json!({"podSelector": {}}),
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            json!({"podSelector": {"matchLabels": {"app": "db"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                                         {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]},
                                          "podSelector": {}},
                                         {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                                "ports": [{"port": 5432}, {"protocol": "UDP", "port": "dns"},
                                          {"protocol": "SCTP", "port": 9000, "endPort": 9010}, {"protocol": "TCP"}]}],
                   "egress": [{}]}),
        ];
        for spec in specs {
            check(Kind::NetworkPolicy, policy(spec.clone())).unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
                "spec.podSelector.matchExpressions[0].values",
            ),
            (json!({"ingress": [{"from": [{}]}]}), "spec.ingress[0].from[0]"),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
                "spec.egress[0].to[0]",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            (json!({"ingress": [{"from": [{"ipBlock": {"cidr": ""}}]}]}), "spec.ingress[0].from[0].ipBlock.cidr"),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}),
                "spec.ingress[0].from[0].ipBlock.except[0]",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16"]}}]}]}),
                "spec.ingress[0].from[0].ipBlock.except[0]",
            ),
            (json!({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}), "spec.ingress[0].ports[0].protocol"),
            (json!({"ingress": [{"ports": [{"port": 0}]}]}), "spec.ingress[0].ports[0].port"),
            (json!({"ingress": [{"ports": [{"port": "Not_A_Name"}]}]}), "spec.ingress[0].ports[0].port"),
            (json!({"egress": [{"ports": [{"port": 90, "endPort": 80}]}]}), "spec.egress[0].ports[0].endPort"),
            (json!({"egress": [{"ports": [{"port": "http", "endPort": 80}]}]}), "spec.egress[0].ports[0].endPort"),
            (json!({"egress": [{"ports": [{"endPort": 80}]}]}), "spec.egress[0].ports[0].endPort"),
            (json!({"egress": [{"ports": [{"port": 80, "endPort": 70000}]}]}), "spec.egress[0].ports[0].endPort"),
            (json!({"policyTypes": ["Ingress", "Sideways"]}), "spec.policyTypes[1]"),
            (json!({"policyTypes": ["Ingress", "Egress", "Ingress"]}), "spec.policyTypes"),
        ];
        for (spec, field) in cases {
            assert_eq!(field_of(policy(spec.clone())), field, "{spec}");
        }
        let mut bad_name = policy(json!({}));
        bad_name["metadata"]["name"] = json!("Allow_Web");
        assert_eq!(field_of(bad_name), "metadata.name");
        let mut dotted = policy(json!({}));
        dotted["metadata"]["name"] = json!("allow.web");
        check(Kind::NetworkPolicy, dotted).expect("a DNS subdomain is a valid name");
    }
}
