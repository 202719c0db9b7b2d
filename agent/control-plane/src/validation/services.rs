//! Services and EndpointSlices, with Kubernetes' rules and wording for what testbed serves (ClusterIP and
//! NodePort Services, IPv4, TCP and UDP). The range checks of `clusterIP` and `nodePort` need the server's
//! ranges and are made where they are allocated (`apiserver/services.rs`).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use testbed_api::objects::{EndpointSlice, IntOrString, Service, ServicePort};
use testbed_api::validate::is_dns_label;

use super::{invalid, name, ValidationError};

/// What `spec.type` may be. LoadBalancer needs a cloud and ExternalName DNS; testbed has neither.
const TYPES: [&str; 2] = ["ClusterIP", "NodePort"];
const PROTOCOLS: [&str; 2] = ["TCP", "UDP"];
const POLICIES: [&str; 2] = ["Cluster", "Local"];
const AFFINITIES: [&str; 2] = ["None", "ClientIP"];
/// Kubernetes' bound on `sessionAffinityConfig.clientIP.timeoutSeconds` (one day).
const MAX_AFFINITY_TIMEOUT: i32 = 86_400;
/// Endpoints and ports an EndpointSlice may hold.
const MAX_ENDPOINTS: usize = 1000;
const MAX_PORTS: usize = 100;

pub(super) fn unsupported(field: &str, value: &str, allowed: &[&str]) -> ValidationError {
    let allowed: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    invalid(field, format!("Unsupported value: \"{value}\": supported values: {}", allowed.join(", ")))
}

fn one_of(field: &str, value: Option<&str>, allowed: &[&str]) -> Result<(), ValidationError> {
    match value {
        Some(v) if !allowed.contains(&v) => Err(unsupported(field, v, allowed)),
        _ => Ok(()),
    }
}

/// A DNS-1035 label: a DNS label that starts with a letter (Service names become DNS names).
fn dns_1035(field: &str, value: &str) -> Result<(), ValidationError> {
    name(field, value)?;
    if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid(
            field,
            format!("Invalid value: \"{value}\": a DNS-1035 label must start with an alphabetic character"),
        ));
    }
    Ok(())
}

/// An IANA service name, as a port may be named: at most 15 of a-z, 0-9 and '-', with a letter, no '-' at
/// either end and no "--".
pub(super) fn is_port_name(s: &str) -> bool {
    s.len() <= 15
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

pub(super) fn port_number(field: &str, port: i32) -> Result<(), ValidationError> {
    if !(1..=65535).contains(&port) {
        return Err(invalid(field, format!("Invalid value: {port}: must be between 1 and 65535, inclusive")));
    }
    Ok(())
}

pub(super) fn check_service(svc: &Service) -> Result<(), ValidationError> {
    dns_1035("metadata.name", &svc.metadata.name)?;
    let spec = &svc.spec;
    one_of("spec.type", spec.type_.as_deref(), &TYPES)?;
    let node_port_type = spec.type_.as_deref() == Some("NodePort");
    let headless = spec.cluster_ip.as_deref() == Some("None");
    match spec.cluster_ip.as_deref() {
        None | Some("") => {}
        Some("None") if node_port_type => {
            return Err(invalid(
                "spec.clusterIP",
                "Invalid value: \"None\": may not be set to 'None' for NodePort services",
            ))
        }
        Some("None") => {}
        Some(ip) if ip.parse::<Ipv4Addr>().is_err() => {
            return Err(invalid("spec.clusterIP", format!("Invalid value: \"{ip}\": must be a valid IPv4 address")))
        }
        Some(_) => {}
    }
    if !spec.cluster_ips.is_empty() && spec.cluster_ips.first() != spec.cluster_ip.as_ref() {
        return Err(invalid("spec.clusterIPs[0]", "Invalid value: must match `spec.clusterIP`"));
    }
    if spec.ports.is_empty() && !headless {
        return Err(invalid("spec.ports", "Required value"));
    }
    check_ports(&spec.ports, node_port_type)?;
    for (key, value) in &spec.selector {
        if key.is_empty() || value.len() > 63 {
            return Err(invalid(format!("spec.selector[{key}]"), format!("Invalid value: \"{value}\"")));
        }
    }
    one_of("spec.sessionAffinity", spec.session_affinity.as_deref(), &AFFINITIES)?;
    let timeout =
        spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds);
    match (spec.session_affinity.as_deref(), timeout) {
        (Some("ClientIP"), Some(t)) if !(1..=MAX_AFFINITY_TIMEOUT).contains(&t) => {
            return Err(invalid(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                format!("Invalid value: {t}: must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT}"),
            ))
        }
        (Some("ClientIP"), _) => {}
        (_, _) if spec.session_affinity_config.is_some() => {
            return Err(invalid(
                "spec.sessionAffinityConfig",
                "Forbidden: must not be set when `sessionAffinity` is None",
            ))
        }
        _ => {}
    }
    one_of("spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref(), &POLICIES)?;
    one_of("spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref(), &POLICIES)?;
    if spec.external_traffic_policy.is_some() && !node_port_type {
        return Err(invalid(
            "spec.externalTrafficPolicy",
            "Invalid value: may only be set for externally-accessible services (type NodePort)",
        ));
    }
    one_of("spec.ipFamilyPolicy", spec.ip_family_policy.as_deref(), &["SingleStack"])?;
    for (i, family) in spec.ip_families.iter().enumerate() {
        one_of(&format!("spec.ipFamilies[{i}]"), Some(family), &["IPv4"])?;
    }
    Ok(())
}

fn check_ports(ports: &[ServicePort], node_port_type: bool) -> Result<(), ValidationError> {
    let (mut names, mut pairs) = (HashSet::new(), HashSet::new());
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        match p.name.as_deref() {
            None | Some("") if ports.len() > 1 => return Err(invalid(format!("{at}.name"), "Required value")),
            None | Some("") => {}
            Some(n) if !is_dns_label(n, 63) => {
                return Err(invalid(format!("{at}.name"), format!("Invalid value: \"{n}\": must be a DNS label")))
            }
            Some(n) if !names.insert(n) => {
                return Err(invalid(format!("{at}.name"), format!("Duplicate value: \"{n}\"")))
            }
            Some(_) => {}
        }
        port_number(&format!("{at}.port"), p.port)?;
        one_of(&format!("{at}.protocol"), p.protocol.as_deref(), &PROTOCOLS)?;
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        if !pairs.insert((p.port, protocol)) {
            return Err(invalid(
                at.clone(),
                format!("Duplicate value: {{\"port\":{},\"protocol\":\"{protocol}\"}}", p.port),
            ));
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) => port_number(&format!("{at}.targetPort"), *t)?,
            Some(IntOrString::String(s)) if !is_port_name(s) => {
                return Err(invalid(
                    format!("{at}.targetPort"),
                    format!("Invalid value: \"{s}\": must be a port number or an IANA service name (at most 15 of a-z, 0-9, '-', with a letter)"),
                ))
            }
            _ => {}
        }
        match p.node_port {
            Some(n) if n != 0 && !node_port_type => {
                return Err(invalid(format!("{at}.nodePort"), "Forbidden: may not be used when `type` is 'ClusterIP'"))
            }
            Some(n) if !(0..=65535).contains(&n) => port_number(&format!("{at}.nodePort"), n)?,
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn check_endpoint_slice(slice: &EndpointSlice) -> Result<(), ValidationError> {
    name("metadata.name", &slice.metadata.name)?;
    if slice.address_type != "IPv4" {
        return Err(unsupported("addressType", &slice.address_type, &["IPv4"]));
    }
    if slice.endpoints.len() > MAX_ENDPOINTS {
        return Err(invalid(
            "endpoints",
            format!("Too many: {}: must have at most {MAX_ENDPOINTS} items", slice.endpoints.len()),
        ));
    }
    for (i, e) in slice.endpoints.iter().enumerate() {
        if e.addresses.is_empty() || e.addresses.len() > 100 {
            return Err(invalid(format!("endpoints[{i}].addresses"), "Invalid value: must have 1 to 100 addresses"));
        }
        for (j, a) in e.addresses.iter().enumerate() {
            if a.parse::<Ipv4Addr>().is_err() {
                return Err(invalid(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("Invalid value: \"{a}\": must be a valid IPv4 address"),
                ));
            }
        }
    }
    if slice.ports.len() > MAX_PORTS {
        return Err(invalid("ports", format!("Too many: {}: must have at most {MAX_PORTS} items", slice.ports.len())));
    }
    let mut names = HashSet::new();
    for (i, p) in slice.ports.iter().enumerate() {
        let port_name = p.name.as_deref().unwrap_or("");
        if !names.insert(port_name) {
            return Err(invalid(format!("ports[{i}].name"), format!("Duplicate value: \"{port_name}\"")));
        }
        one_of(&format!("ports[{i}].protocol"), p.protocol.as_deref(), &PROTOCOLS)?;
        if let Some(port) = p.port {
            port_number(&format!("ports[{i}].port"), port)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::check;
    use super::*;
    use crate::resources::Kind;

    fn service(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn field_of(kind: Kind, object: Value) -> String {
        match check(kind, object) {
            Err(ValidationError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal naming a field, got {other:?}"),
        }
    }

    #[test]
    fn services_pass_and_fail_on_the_named_field() {
        let ok = json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]});
        check(Kind::Service, service(ok)).expect("valid service");
        let headless = json!({"clusterIP": "None", "selector": {"app": "web"}});
        check(Kind::Service, service(headless)).expect("headless without ports");
        let cases = [
            (json!({"type": "LoadBalancer", "ports": [{"port": 80}]}), "spec.type"),
            (json!({"ports": []}), "spec.ports"),
            (json!({"ports": [{"port": 0}]}), "spec.ports[0].port"),
            (json!({"ports": [{"port": 80, "protocol": "SCTP"}]}), "spec.ports[0].protocol"),
            (json!({"ports": [{"port": 80, "name": "a"}, {"port": 81}]}), "spec.ports[1].name"),
            (json!({"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "a"}]}), "spec.ports[1].name"),
            (json!({"ports": [{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]}), "spec.ports[1]"),
            (json!({"ports": [{"port": 80, "targetPort": "Not_A_Name"}]}), "spec.ports[0].targetPort"),
            (json!({"ports": [{"port": 80, "targetPort": 70000}]}), "spec.ports[0].targetPort"),
            (json!({"ports": [{"port": 80, "nodePort": 30080}]}), "spec.ports[0].nodePort"),
            (json!({"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}), "spec.clusterIP"),
            (json!({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]}), "spec.clusterIP"),
            (json!({"sessionAffinity": "Cookie", "ports": [{"port": 80}]}), "spec.sessionAffinity"),
            (
                json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}, "ports": [{"port": 80}]}),
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            ),
            (json!({"externalTrafficPolicy": "Local", "ports": [{"port": 80}]}), "spec.externalTrafficPolicy"),
            (json!({"internalTrafficPolicy": "Nearest", "ports": [{"port": 80}]}), "spec.internalTrafficPolicy"),
            (json!({"ipFamilies": ["IPv6"], "ports": [{"port": 80}]}), "spec.ipFamilies[0]"),
        ];
        for (spec, field) in cases {
            assert_eq!(field_of(Kind::Service, service(spec.clone())), field, "{spec}");
        }
        let mut numeric = service(json!({"ports": [{"port": 80}]}));
        numeric["metadata"]["name"] = json!("1web");
        assert_eq!(field_of(Kind::Service, numeric), "metadata.name");
    }

    #[test]
    fn endpoint_slices_pass_and_fail_on_the_named_field() {
        let slice = |patch: Value| {
            let mut s = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-abc", "namespace": "default"}, "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]});
            for (k, v) in patch.as_object().expect("object") {
                s[k] = v.clone();
            }
            s
        };
        check(Kind::EndpointSlice, slice(json!({}))).expect("valid slice");
        assert_eq!(field_of(Kind::EndpointSlice, slice(json!({"addressType": "IPv6"}))), "addressType");
        assert_eq!(
            field_of(Kind::EndpointSlice, slice(json!({"endpoints": [{"addresses": ["x"]}]}))),
            "endpoints[0].addresses[0]"
        );
        assert_eq!(
            field_of(Kind::EndpointSlice, slice(json!({"endpoints": [{"addresses": []}]}))),
            "endpoints[0].addresses"
        );
        let ports = json!({"ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]});
        assert_eq!(field_of(Kind::EndpointSlice, slice(ports)), "ports[1].name");
    }

    #[test]
    fn port_names_are_iana_service_names() {
        for good in ["http", "web-8080", "a1"] {
            assert!(is_port_name(good), "{good}");
        }
        for bad in ["", "8080", "-http", "http-", "a--b", "HTTP", "sixteen-chars-xx"] {
            assert!(!is_port_name(bad), "{bad}");
        }
    }
}
