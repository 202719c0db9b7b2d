//! The sections of a Service (type, addresses, ports, selector, affinity) and of an EndpointSlice (its
//! ports and endpoints).

use std::fmt::Write;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::field;

pub(super) fn service(out: &mut String, svc: &Service) {
    let Some(spec) = &svc.spec else { return };
    let selector: Vec<String> = spec.selector.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    field(out, "Selector", &selector.join(","));
    field(out, "Type", spec.type_.as_deref().unwrap_or("ClusterIP"));
    field(out, "IP", spec.cluster_ip.as_deref().unwrap_or_default());
    for p in spec.ports.iter().flatten() {
        let name = p.name.as_deref().filter(|n| !n.is_empty()).unwrap_or("<unset>");
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        field(out, "Port", &format!("{name}  {}/{protocol}", p.port));
        let target = match &p.target_port {
            Some(IntOrString::Int(n)) => format!("{n}/{protocol}"),
            Some(IntOrString::String(s)) => format!("{s}/{protocol}"),
            None => format!("{}/{protocol}", p.port),
        };
        field(out, "TargetPort", &target);
        if let Some(node_port) = p.node_port {
            field(out, "NodePort", &format!("{name}  {node_port}/{protocol}"));
        }
    }
    field(out, "Session Affinity", spec.session_affinity.as_deref().unwrap_or("None"));
    if let Some(policy) = &spec.external_traffic_policy {
        field(out, "External Traffic Policy", policy);
    }
    field(out, "Internal Traffic Policy", spec.internal_traffic_policy.as_deref().unwrap_or("Cluster"));
}

pub(super) fn endpoint_slice(out: &mut String, slice: &EndpointSlice) {
    field(out, "AddressType", &slice.address_type);
    out.push_str("Ports:\n  Name     Port  Protocol\n");
    for p in slice.ports.iter().flatten() {
        let name = p.name.as_deref().filter(|n| !n.is_empty()).unwrap_or("<unset>");
        let port = p.port.map_or_else(|| "<unset>".to_string(), |n| n.to_string());
        let _ = writeln!(out, "  {name:<8} {port:<5} {}", p.protocol.as_deref().unwrap_or("TCP"));
    }
    out.push_str("Endpoints:\n");
    for e in &slice.endpoints {
        let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
        let _ = writeln!(out, "  - Addresses:  {}", e.addresses.join(","));
        let _ = writeln!(out, "    Conditions:\n      Ready:    {ready}");
        let target = e
            .target_ref
            .as_ref()
            .map(|t| format!("{}/{}", t.kind.as_deref().unwrap_or_default(), t.name.as_deref().unwrap_or_default()));
        let _ = writeln!(out, "    TargetRef:  {}", target.unwrap_or_default());
        let _ = writeln!(out, "    NodeName:   {}", e.node_name.as_deref().unwrap_or_default());
    }
}
