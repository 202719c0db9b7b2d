//! The service proxy's node-local desired state (`PUT /v1/services`) and what the agent reads back from the
//! kernel (`GET /v1/services`). A watcher of the API's Services and EndpointSlices fills the spec; the agent
//! turns it into an nftables ruleset as kube-proxy's nftables mode does (docs/architecture.md, "Service proxy").

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::validate::is_dns_label;
use crate::ApiError;

/// Every Service the node proxies: the whole desired set, replaced on every PUT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceProxySpec {
    /// One entry per Service with a ClusterIP (headless Services are not proxied and are left out).
    pub services: Vec<ProxiedService>,
}

/// One Service as the proxy needs it: its virtual IP, its ports and the endpoints behind each port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxiedService {
    /// The Service's namespace (part of every chain name, as in kube-proxy).
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The virtual IP clients connect to.
    pub cluster_ip: Ipv4Addr,
    /// At least one; each with its own endpoints.
    pub ports: Vec<ServicePort>,
    /// `ClientIP` keeps a client on one endpoint for `timeout_seconds` after its last new connection.
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    /// `Local`: traffic to the ClusterIP goes only to this node's endpoints.
    #[serde(default)]
    pub internal_traffic_policy: TrafficPolicy,
    /// `Local`: NodePort traffic goes only to this node's endpoints and keeps its client address.
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    /// The port's name; required (and unique) when the Service has more than one port.
    #[serde(default)]
    pub name: String,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port on the ClusterIP.
    pub port: u16,
    /// The port opened on every local address of the node (NodePort Services), 30000-32767.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// The endpoints serving this port (an EndpointSlice's endpoints with the port's target port).
    #[serde(default)]
    pub endpoints: Vec<ProxyEndpoint>,
}

/// One endpoint of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyEndpoint {
    /// The pod's IP.
    pub ip: Ipv4Addr,
    /// The pod's (target) port.
    pub port: u16,
    /// The pod runs on this node: the only endpoints `Local` traffic policies use.
    #[serde(default)]
    pub local: bool,
    /// Not-ready endpoints get no traffic (they are kept so that the watcher can pass EndpointSlices as is).
    #[serde(default = "ready_default")]
    pub ready: bool,
}

fn ready_default() -> bool {
    true
}

/// Transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    /// The name nftables uses (`meta l4proto tcp`).
    pub fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Kubernetes' `sessionAffinity`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum SessionAffinity {
    /// Every new connection picks an endpoint at random.
    #[default]
    None,
    /// A client's new connections go to the endpoint it last used, until `timeout_seconds` without one.
    #[serde(rename = "ClientIP")]
    ClientIp {
        /// 1..=86400 (Kubernetes' default is 10800).
        timeout_seconds: u32,
    },
}

/// Kubernetes' `internalTrafficPolicy` / `externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficPolicy {
    /// Every ready endpoint, wherever it runs.
    #[default]
    Cluster,
    /// Only the endpoints on this node.
    Local,
}

/// `GET /v1/services`: the proxy's state, read back from the kernel's ruleset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceProxyStatus {
    /// nftables transactions the agent ran since it started (a re-applied spec runs none).
    pub transactions: u64,
    /// How many periodic reconciles found the kernel changed behind the agent's back and repaired it.
    pub drift_repairs: u64,
    /// Error of the last apply or reconcile, if it failed.
    pub last_error: Option<String>,
    /// Every destination the kernel's maps hold, sorted.
    pub destinations: Vec<ObservedDestination>,
}

/// One entry of the ruleset's lookup maps, followed to the endpoints its chain DNATs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedDestination {
    /// `10.96.0.10 . tcp . 80` (ClusterIP) or `tcp . 30080` (NodePort), as the map's key reads.
    pub key: String,
    /// `service-ips`, `service-nodeports`, `no-endpoint-services` or `no-endpoint-nodeports`.
    pub map: String,
    /// The chain the key leads to.
    pub chain: String,
    /// Where the chain's endpoint chains DNAT to (empty for the no-endpoint maps, which reject).
    pub endpoints: Vec<SocketAddrV4>,
    /// The chain keeps clients on their endpoint (ClientIP session affinity).
    pub session_affinity: bool,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError { field: Some(field.into()), message: message.into(), leaked: vec![] }
}

/// Everything the agent checks before touching the kernel, so that a spec that passes is never refused by
/// nftables half-way: names that fit chain names, no two Services on one (IP, protocol, port) or one NodePort.
pub fn validate_services(spec: &ServiceProxySpec) -> Result<(), ApiError> {
    // Hashed, sized once, one endpoint set reused: a node's proxy validates every PUT whole, and at 10,000
    // Services this is most of an endpoint change's time.
    let n = spec.services.len();
    let mut names = std::collections::HashSet::with_capacity(n);
    let mut destinations = std::collections::HashMap::with_capacity(n);
    let mut node_ports = std::collections::HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (i, s) in spec.services.iter().enumerate() {
        let at = |f: &str| format!("services[{i}].{f}");
        if !is_dns_label(&s.namespace, 63) {
            return Err(err(at("namespace"), format!("`{}` is not a DNS label", s.namespace)));
        }
        if !is_dns_label(&s.name, 63) {
            return Err(err(at("name"), format!("`{}` is not a DNS label", s.name)));
        }
        if !names.insert((s.namespace.as_str(), s.name.as_str())) {
            return Err(err(at("name"), format!("duplicate Service {}/{}", s.namespace, s.name)));
        }
        let ip = s.cluster_ip;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
            return Err(err(at("cluster_ip"), format!("{ip} cannot be a Service's virtual IP")));
        }
        if let SessionAffinity::ClientIp { timeout_seconds } = s.session_affinity {
            if !(1..=86400).contains(&timeout_seconds) {
                return Err(err(at("session_affinity.timeout_seconds"), "must be within 1..=86400"));
            }
        }
        if s.ports.is_empty() {
            return Err(err(at("ports"), "a Service needs at least one port"));
        }
        let mut port_names = std::collections::BTreeSet::new();
        for (j, p) in s.ports.iter().enumerate() {
            let at = |f: &str| at(&format!("ports[{j}].{f}"));
            if s.ports.len() > 1 && !is_dns_label(&p.name, 15) {
                return Err(err(at("name"), "required with several ports: a DNS label of at most 15 characters"));
            }
            if !p.name.is_empty() && !is_dns_label(&p.name, 15) {
                return Err(err(at("name"), format!("`{}` is not a DNS label of at most 15 characters", p.name)));
            }
            if !port_names.insert(&p.name) {
                return Err(err(at("name"), format!("duplicate port name `{}`", p.name)));
            }
            if p.port == 0 {
                return Err(err(at("port"), "must be within 1..=65535"));
            }
            if let Some(earlier) = destinations.insert((ip, p.protocol, p.port), i) {
                return Err(err(at("port"), format!("{ip}:{} {:?} is also services[{earlier}]'s", p.port, p.protocol)));
            }
            if let Some(np) = p.node_port {
                if !(30000..=32767).contains(&np) {
                    return Err(err(at("node_port"), format!("{np} is outside 30000..=32767")));
                }
                if let Some(earlier) = node_ports.insert((p.protocol, np), i) {
                    return Err(err(at("node_port"), format!("{np} is also services[{earlier}]'s")));
                }
            }
            seen.clear();
            for (k, e) in p.endpoints.iter().enumerate() {
                let at = |f: &str| at(&format!("endpoints[{k}].{f}"));
                if e.ip.is_unspecified() || e.ip.is_loopback() || e.ip.is_multicast() || e.ip.is_broadcast() {
                    return Err(err(at("ip"), format!("{} cannot be an endpoint", e.ip)));
                }
                if e.port == 0 {
                    return Err(err(at("port"), "must be within 1..=65535"));
                }
                if !seen.insert((e.ip, e.port)) {
                    return Err(err(at("ip"), format!("duplicate endpoint {}:{}", e.ip, e.port)));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, ip: [u8; 4], port: u16) -> ProxiedService {
        ProxiedService {
            namespace: "default".into(),
            name: name.into(),
            cluster_ip: ip.into(),
            ports: vec![ServicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port,
                node_port: None,
                endpoints: vec![ProxyEndpoint { ip: [10, 244, 0, 5].into(), port: 8080, local: true, ready: true }],
            }],
            session_affinity: SessionAffinity::None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
        }
    }

    fn field_of(spec: &ServiceProxySpec) -> String {
        validate_services(spec).expect_err("invalid").field.unwrap_or_default()
    }

    #[test]
    fn a_good_spec_passes() {
        let spec =
            ServiceProxySpec { services: vec![service("a", [10, 96, 0, 1], 80), service("b", [10, 96, 0, 2], 80)] };
        assert_eq!(validate_services(&spec), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        let mut spec =
            ServiceProxySpec { services: vec![service("a", [10, 96, 0, 1], 80), service("b", [10, 96, 0, 1], 80)] };
        assert_eq!(field_of(&spec), "services[1].ports[0].port");
        spec.services[1].cluster_ip = [10, 96, 0, 2].into();
        spec.services[1].ports[0].endpoints[0].port = 0;
        assert_eq!(field_of(&spec), "services[1].ports[0].endpoints[0].port");
        spec.services[1].ports[0].endpoints[0].port = 1;
        spec.services[1].ports[0].node_port = Some(80);
        assert_eq!(field_of(&spec), "services[1].ports[0].node_port");
        spec.services[1].ports[0].node_port = None;
        spec.services[0].session_affinity = SessionAffinity::ClientIp { timeout_seconds: 0 };
        assert_eq!(field_of(&spec), "services[0].session_affinity.timeout_seconds");
        spec.services[0].session_affinity = SessionAffinity::None;
        spec.services[1].name = "a".into();
        assert_eq!(field_of(&spec), "services[1].name");
        spec.services[1].name = "b".into();
        let port = spec.services[1].ports[0].clone();
        spec.services[1].ports.push(port);
        assert_eq!(field_of(&spec), "services[1].ports[0].name");
    }

    #[test]
    fn the_wire_format_reads_as_kubernetes_words() {
        let json = r#"{"services":[{"namespace":"ns","name":"web","cluster_ip":"10.96.0.10",
            "session_affinity":{"type":"ClientIP","timeout_seconds":60},"internal_traffic_policy":"Local",
            "ports":[{"protocol":"TCP","port":80,"endpoints":[{"ip":"10.244.0.2","port":8080}]}]}]}"#;
        let spec: ServiceProxySpec = serde_json::from_str(json).expect("parses");
        let s = &spec.services[0];
        assert_eq!(s.session_affinity, SessionAffinity::ClientIp { timeout_seconds: 60 });
        assert_eq!(s.internal_traffic_policy, TrafficPolicy::Local);
        assert!(s.ports[0].endpoints[0].ready, "ready unless told");
        assert!(serde_json::from_str::<ServiceProxySpec>(r#"{"services":[],"extra":1}"#).is_err());
    }
}
