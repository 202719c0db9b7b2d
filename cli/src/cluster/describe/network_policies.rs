//! The `Spec:` section of a NetworkPolicy, laid out as `kubectl describe networkpolicy` lays it out.

use std::fmt::Write;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::cluster::table::format_selector;

pub(super) fn network_policy(out: &mut String, policy: &NetworkPolicy) {
    let Some(spec) = &policy.spec else { return };
    out.push_str("Spec:\n");
    let selector = format_selector(spec.pod_selector.as_ref());
    if selector == "<none>" {
        let _ =
            writeln!(out, "  PodSelector:     <none> (Allowing the specific traffic to all pods in this namespace)");
    } else {
        let _ = writeln!(out, "  PodSelector:     {selector}");
    }
    let types = spec.policy_types.clone().unwrap_or_default();
    if types.iter().any(|t| t == "Ingress") {
        out.push_str("  Allowing ingress traffic:\n");
        let rules = spec.ingress.as_deref().unwrap_or_default();
        if rules.is_empty() {
            out.push_str("    <none> (Selected pods are isolated for ingress connectivity)\n");
        }
        for (i, rule) in rules.iter().enumerate() {
            if i > 0 {
                out.push_str("    ----------\n");
            }
            ports(out, "To Port", rule.ports.as_deref());
            peers(out, "From", rule.from.as_deref());
        }
    } else {
        out.push_str("  Not affecting ingress traffic\n");
    }
    if types.iter().any(|t| t == "Egress") {
        out.push_str("  Allowing egress traffic:\n");
        let rules = spec.egress.as_deref().unwrap_or_default();
        if rules.is_empty() {
            out.push_str("    <none> (Selected pods are isolated for egress connectivity)\n");
        }
        for (i, rule) in rules.iter().enumerate() {
            if i > 0 {
                out.push_str("    ----------\n");
            }
            ports(out, "To Port", rule.ports.as_deref());
            peers(out, "To", rule.to.as_deref());
        }
    } else {
        out.push_str("  Not affecting egress traffic\n");
    }
    let _ = writeln!(out, "  Policy Types: {}", types.join(", "));
}

fn ports(out: &mut String, label: &str, ports: Option<&[NetworkPolicyPort]>) {
    let ports = ports.unwrap_or_default();
    if ports.is_empty() {
        let _ = writeln!(out, "    {label}: <any> (traffic allowed to all ports)");
    }
    for p in ports {
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        let port = match (&p.port, p.end_port) {
            (Some(IntOrString::Int(n)), Some(end)) => format!("{n}-{end}"),
            (Some(IntOrString::Int(n)), None) => n.to_string(),
            (Some(IntOrString::String(s)), _) => s.clone(),
            (None, _) => "<any>".into(),
        };
        let _ = writeln!(out, "    {label}: {port}/{protocol}");
    }
}

fn peers(out: &mut String, label: &str, peers: Option<&[NetworkPolicyPeer]>) {
    let peers = peers.unwrap_or_default();
    if peers.is_empty() {
        let _ = writeln!(out, "    {label}: <any> (traffic not restricted by destination)");
        return;
    }
    let _ = writeln!(out, "    {label}:");
    for peer in peers {
        match (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block) {
            (Some(pods), Some(ns), _) => {
                let _ = writeln!(out, "      NamespaceSelector: {}", format_selector(Some(ns)));
                let _ = writeln!(out, "      PodSelector: {}", format_selector(Some(pods)));
            }
            (Some(pods), None, _) => {
                let _ = writeln!(out, "      PodSelector: {}", format_selector(Some(pods)));
            }
            (None, Some(ns), _) => {
                let _ = writeln!(out, "      NamespaceSelector: {}", format_selector(Some(ns)));
            }
            (None, None, Some(block)) => {
                let _ = writeln!(out, "      IPBlock:\n        CIDR: {}", block.cidr);
                let except = block.except.clone().unwrap_or_default().join(", ");
                let _ = writeln!(out, "        Except: {except}");
            }
            (None, None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_reads_as_kubectl_describes_it() {
        let policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                                      {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                             "ports": [{"protocol": "TCP", "port": 5432}, {"protocol": "TCP", "port": 6000, "endPort": 6010}]}]}
        }))
        .unwrap();
        let mut out = String::new();
        network_policy(&mut out, &policy);
        let want = "Spec:\n  PodSelector:     app=db\n  Allowing ingress traffic:\n    To Port: 5432/TCP\n    \
                    To Port: 6000-6010/TCP\n    From:\n      PodSelector: app=web\n      IPBlock:\n        CIDR: \
                    10.0.0.0/8\n        Except: 10.1.0.0/16\n  Not affecting egress traffic\n  Policy Types: Ingress\n";
        assert_eq!(out, want);
    }
}
