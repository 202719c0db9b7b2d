//! `services:`: Kubernetes Service manifests (checked as every manifest is, `manifests.rs`), with their
//! addresses decided here so that `testbed plan` shows them and every `up` of the file gets the same: a
//! fixed `clusterIP` must lie in `cluster.service_cidr` and be given once; the others get the lowest free
//! address after the range's first (the API server's own rule, `apiserver/services.rs`), in file order.
//! NodePort Services' node ports likewise, from 30000-32767; ports of one number over TCP and UDP share one
//! (`node_port_sibling`, the API server's rule).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use testbed_control_plane::apiserver::{node_port_sibling, NODE_PORTS};

use super::manifests::{self, SERVICES};
use super::model::Topology;
use super::validate::{root, Ctx};
use super::TopologyError;

pub(super) fn check(ctx: &Ctx<'_>, t: &Topology, range: Ipv4Net) -> Result<Vec<Value>, TopologyError> {
    let mut services = manifests::check(ctx, &SERVICES, &t.services)?;
    let at = |i: usize| root().key("services").index(i).key("spec");
    // Fixed addresses first, so a free one is never one a later Service fixes.
    let (mut ips, mut ports) = (BTreeSet::new(), BTreeSet::new());
    for (i, svc) in services.iter().enumerate() {
        match svc["spec"]["clusterIP"].as_str() {
            None | Some("") | Some("None") => {}
            Some(text) => {
                let ip: Ipv4Addr = text.parse().map_err(|_| ctx.at(&at(i).key("clusterIP"), "not an IPv4 address"))?;
                if !range.contains(&ip) || ip == range.network() || ip == range.broadcast() {
                    return Err(ctx.at(&at(i).key("clusterIP"), format!("{ip} is not in cluster.service_cidr {range}")));
                }
                if !ips.insert(ip) {
                    return Err(ctx.at(&at(i).key("clusterIP"), format!("{ip} is given to another Service already")));
                }
            }
        }
        let svc_ports = svc["spec"]["ports"].as_array().map_or(&[][..], Vec::as_slice);
        for (j, port) in svc_ports.iter().enumerate() {
            let Some(n) = port["nodePort"].as_i64().filter(|n| *n != 0) else { continue };
            let field = at(i).key("ports").index(j).key("nodePort");
            // The same number over another protocol of this Service shares its port's node port.
            if node_port_sibling(svc_ports, j).is_some_and(|k| svc_ports[k]["nodePort"].as_i64() == Some(n)) {
                continue;
            }
            let n = i32::try_from(n).unwrap_or(-1);
            if !NODE_PORTS.contains(&n) {
                return Err(ctx.at(
                    &field,
                    format!("{n} is outside the node port range {}-{}", NODE_PORTS.start(), NODE_PORTS.end()),
                ));
            }
            if !ports.insert(n) {
                return Err(ctx.at(&field, format!("node port {n} is given to another Service already")));
            }
        }
    }
    let mut free_ips = range.hosts().skip(1).filter(|ip| !ips.contains(ip));
    let mut free_ports = NODE_PORTS.filter(|p| !ports.contains(p));
    for (i, svc) in services.iter_mut().enumerate() {
        if svc["spec"]["clusterIP"].as_str().unwrap_or("").is_empty() {
            let ip = free_ips
                .next()
                .ok_or_else(|| ctx.at(&at(i), format!("cluster.service_cidr {range} has no address left")))?;
            svc["spec"]["clusterIP"] = json!(ip.to_string());
        }
        if svc["spec"]["type"].as_str() != Some("NodePort") {
            continue;
        }
        let count = svc["spec"]["ports"].as_array().map_or(0, Vec::len);
        for j in 0..count {
            if svc["spec"]["ports"][j]["nodePort"].as_i64().unwrap_or(0) == 0 {
                let ports = svc["spec"]["ports"].as_array().map_or(&[][..], Vec::as_slice);
                let shared = node_port_sibling(ports, j).and_then(|k| ports[k]["nodePort"].as_i64());
                let port = match shared {
                    Some(n) => n,
                    None => free_ports
                        .next()
                        .map(i64::from)
                        .ok_or_else(|| ctx.at(&at(i), "no node port left in 30000-32767"))?,
                };
                svc["spec"]["ports"][j]["nodePort"] = json!(port);
            }
        }
    }
    Ok(services)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{checked_of, BASE};
    use super::super::TopologyError;

    const SERVICES: &str = "services:
  - metadata: {name: web}
    spec:
      selector: {app: web}
      ports: [{port: 80, targetPort: 8080}]
  - metadata: {name: fixed}
    spec:
      clusterIP: 10.96.0.2
      ports: [{port: 53, protocol: UDP}]
  - metadata: {name: np}
    spec:
      type: NodePort
      selector: {app: web}
      ports: [{name: a, port: 80, nodePort: 30000}, {name: b, port: 81}]
  - metadata: {name: dns}
    spec:
      type: NodePort
      ports: [{name: tcp, port: 53}, {name: udp, port: 53, protocol: UDP}, {name: t, port: 54, nodePort: 30100},
              {name: u, port: 54, protocol: UDP, nodePort: 30100}]
";

    #[test]
    fn addresses_are_decided_in_file_order_around_the_fixed_ones() {
        let t = checked_of(&format!("{BASE}{SERVICES}")).expect("valid");
        let ip = |i: usize| t.services[i]["spec"]["clusterIP"].as_str().unwrap().to_string();
        assert_eq!([ip(0), ip(1), ip(2)], ["10.96.0.3", "10.96.0.2", "10.96.0.4"]);
        let ports = &t.services[2]["spec"]["ports"];
        assert_eq!((ports[0]["nodePort"].as_i64(), ports[1]["nodePort"].as_i64()), (Some(30000), Some(30001)));
        assert_eq!(t.services[0]["metadata"]["namespace"], "default");
        // One number over TCP and UDP: one node port, allocated or given.
        let dns: Vec<Option<i64>> = (0..4).map(|j| t.services[3]["spec"]["ports"][j]["nodePort"].as_i64()).collect();
        assert_eq!(dns, [Some(30002), Some(30002), Some(30100), Some(30100)]);
    }

    #[test]
    fn the_service_cidr_is_defaulted_and_may_overlap_nothing() {
        let t = checked_of(BASE).expect("valid");
        assert_eq!(t.cluster.service_cidr.to_string(), "10.96.0.0/12");
        let cases = [
            ("cluster: {service_cidr: 10.244.0.0/20}\n", "overlaps cluster.pod_cidr"),
            ("cluster: {service_cidr: 192.168.50.0/25}\n", "overlaps network `underlay`"),
            ("cluster: {service_cidr: 10.96.0.0/30}\n", "too small"),
            ("cluster: {service_cidr: nonsense}\n", ""),
        ];
        for (text, message) in cases {
            match checked_of(&format!("{BASE}{text}")) {
                Err(TopologyError::Invalid { line, field, message: m, .. }) => {
                    assert_eq!((line, field.as_str()), (BASE.lines().count() + 1, "cluster.service_cidr"), "{m}");
                    assert!(m.contains(message), "{text}: {m}");
                }
                other => panic!("{text}: expected an error, got {:?}", other.map(|t| t.cluster.service_cidr)),
            }
        }
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let base_lines = BASE.lines().count();
        let cases = [
            (
                SERVICES.replace("clusterIP: 10.96.0.2", "clusterIP: 10.0.0.2"),
                8,
                "services[1].spec.clusterIP",
                "not in cluster.service_cidr",
            ),
            (
                SERVICES.replace("clusterIP: 10.96.0.2", "clusterIP: 10.96.0.2\n      type: LoadBalancer"),
                9,
                "services[1].spec.type",
                "Unsupported value",
            ),
            (
                SERVICES.replace("nodePort: 30000", "nodePort: 80"),
                14,
                "services[2].spec.ports[0].nodePort",
                "outside the node port range",
            ),
            (
                SERVICES.replace("{name: b, port: 81}", "{name: b, port: 81, nodePort: 30000}"),
                14,
                "services[2].spec.ports[1].nodePort",
                "another Service",
            ),
            (
                SERVICES.replace("port: 80, targetPort", "port: 0, targetPort"),
                5,
                "services[0].spec.ports[0].port",
                "between 1 and 65535",
            ),
        ];
        for (text, line, field, message) in cases {
            match checked_of(&format!("{BASE}{text}")) {
                Err(TopologyError::Invalid { line: at, field: f, message: m, .. }) => {
                    assert_eq!(f, field, "{m}");
                    assert!(m.contains(message), "{field}: {m}");
                    assert_eq!(at, base_lines + line, "{field}: {m}");
                }
                other => panic!("{field}: expected an error, got {:?}", other.map(|t| t.services)),
            }
        }
    }
}
