//! The API's Services and EndpointSlices as the node's service proxy needs them (pure). Every Service with
//! a cluster IP (headless ones are not proxied); each port's endpoints are those of the Service's slices
//! (`kubernetes.io/service-name`) whose port of the same name and protocol gives the target port, as
//! kube-proxy reads them. An endpoint without a `ready` condition counts as ready (Kubernetes' reading);
//! `local` marks the endpoints on this node, which the `Local` traffic policies use.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use testbed_api::objects::{EndpointSlice, Service, SERVICE_NAME_LABEL};
use testbed_api::{ProxiedService, ProxyEndpoint, ServiceProxySpec, SessionAffinity, TrafficPolicy};

/// Kubernetes' default ClientIP affinity timeout (3 hours).
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

fn protocol(name: Option<&str>) -> Option<testbed_api::Protocol> {
    match name.unwrap_or("TCP") {
        "TCP" => Some(testbed_api::Protocol::Tcp),
        "UDP" => Some(testbed_api::Protocol::Udp),
        _ => None,
    }
}

fn policy(value: Option<&str>) -> TrafficPolicy {
    if value == Some("Local") {
        TrafficPolicy::Local
    } else {
        TrafficPolicy::Cluster
    }
}

/// The proxy's spec for `node` from every Service and EndpointSlice of the cluster.
pub fn build(services: &[Service], slices: &[EndpointSlice], node: &str) -> ServiceProxySpec {
    let mut out: Vec<ProxiedService> = services.iter().filter_map(|svc| proxied(svc, slices, node)).collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    ServiceProxySpec { services: out }
}

fn proxied(svc: &Service, slices: &[EndpointSlice], node: &str) -> Option<ProxiedService> {
    let cluster_ip: Ipv4Addr = svc.spec.cluster_ip.as_deref()?.parse().ok()?;
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let own: Vec<&EndpointSlice> = slices
        .iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace.as_str())
                && s.metadata.labels.get(SERVICE_NAME_LABEL) == Some(&svc.metadata.name)
        })
        .collect();
    let node_port_type = svc.spec.type_.as_deref() == Some("NodePort");
    let ports = svc
        .spec
        .ports
        .iter()
        .filter_map(|p| {
            let proto = protocol(p.protocol.as_deref())?;
            let name = p.name.clone().unwrap_or_default();
            let mut endpoints = BTreeSet::new();
            for slice in &own {
                let Some(port) = slice
                    .ports
                    .iter()
                    .find(|sp| {
                        sp.name.as_deref().unwrap_or("") == name && protocol(sp.protocol.as_deref()) == Some(proto)
                    })
                    .and_then(|sp| sp.port)
                    .and_then(|n| u16::try_from(n).ok())
                else {
                    continue;
                };
                for e in &slice.endpoints {
                    let Some(ip) = e.addresses.first().and_then(|a| a.parse::<Ipv4Addr>().ok()) else { continue };
                    let ready = e.conditions.ready.unwrap_or(true);
                    let local = e.node_name.as_deref() == Some(node);
                    endpoints.insert((ip, port, local, ready));
                }
            }
            Some(testbed_api::ServicePort {
                name,
                protocol: proto,
                port: u16::try_from(p.port).ok()?,
                node_port: p.node_port.filter(|_| node_port_type).and_then(|n| u16::try_from(n).ok()),
                endpoints: endpoints
                    .into_iter()
                    .map(|(ip, port, local, ready)| ProxyEndpoint { ip, port, local, ready })
                    .collect(),
            })
        })
        .collect();
    let session_affinity = match svc.spec.session_affinity.as_deref() {
        Some("ClientIP") => SessionAffinity::ClientIp {
            timeout_seconds: svc
                .spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT),
        },
        _ => SessionAffinity::None,
    };
    Some(ProxiedService {
        namespace,
        name: svc.metadata.name.clone(),
        cluster_ip,
        ports,
        session_affinity,
        internal_traffic_policy: policy(svc.spec.internal_traffic_policy.as_deref()),
        external_traffic_policy: policy(svc.spec.external_traffic_policy.as_deref()),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec})).unwrap()
    }

    fn slice(name: &str, service: &str, endpoints: serde_json::Value, ports: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default",
            "labels": {"kubernetes.io/service-name": service}}, "addressType": "IPv4",
            "endpoints": endpoints, "ports": ports}))
        .unwrap()
    }

    #[test]
    fn services_and_slices_become_the_proxy_spec() {
        let web = service(json!({"type": "NodePort", "clusterIP": "10.96.0.2", "sessionAffinity": "ClientIP",
            "externalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30000}, {"name": "dns", "port": 53, "protocol": "UDP"}]}));
        let headless = {
            let mut s = service(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
            s.metadata.name = "headless".into();
            s
        };
        let slices = [
            slice(
                "web-1",
                "web",
                json!([{"addresses": ["10.244.1.2"], "conditions": {"ready": true}, "nodeName": "node1"},
                       {"addresses": ["10.244.2.2"], "conditions": {"ready": false}, "nodeName": "node2"}]),
                json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            ),
            slice(
                "web-2",
                "web",
                json!([{"addresses": ["10.244.2.3"], "nodeName": "node2"}]),
                json!([{"name": "http", "port": 9090, "protocol": "TCP"}]),
            ),
            slice(
                "other-1",
                "other",
                json!([{"addresses": ["10.244.3.3"]}]),
                json!([{"name": "http", "port": 1, "protocol": "TCP"}]),
            ),
        ];
        let spec = build(&[web, headless], &slices, "node1");
        assert_eq!(spec.services.len(), 1, "the headless Service is not proxied");
        let s = &spec.services[0];
        assert_eq!(s.cluster_ip, Ipv4Addr::new(10, 96, 0, 2));
        assert_eq!(s.session_affinity, SessionAffinity::ClientIp { timeout_seconds: 10_800 });
        assert_eq!(
            (s.internal_traffic_policy, s.external_traffic_policy),
            (TrafficPolicy::Cluster, TrafficPolicy::Local)
        );
        let http = &s.ports[0];
        assert_eq!((http.port, http.node_port), (80, Some(30000)));
        let eps: Vec<(String, u16, bool, bool)> =
            http.endpoints.iter().map(|e| (e.ip.to_string(), e.port, e.local, e.ready)).collect();
        assert_eq!(
            eps,
            [
                ("10.244.1.2".into(), 8080, true, true),
                ("10.244.2.2".into(), 8080, false, false),
                ("10.244.2.3".into(), 9090, false, true)
            ]
        );
        let dns = &s.ports[1];
        assert_eq!((dns.protocol, dns.node_port, dns.endpoints.len()), (testbed_api::Protocol::Udp, None, 2));
    }
}
