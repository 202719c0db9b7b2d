//! The EndpointSlices a Service should have, from the pods of its namespace (pure: the controller compares
//! this with what the API holds). As Kubernetes' reconciler: every pod the selector picks that has an IP and
//! has not finished is an endpoint, Ready or not, terminating or not (its conditions say which; proxies
//! send only to ready ones); a Service port's `targetPort` is resolved on each pod (a name through the pod's container
//! ports, so pods may serve it on different numbers), pods that resolve the ports alike share slices, and a
//! slice holds at most 100 endpoints. A Service whose selector picks nothing gets one empty slice, so a
//! proxy can tell "no endpoints" from "not computed yet".

use std::collections::BTreeMap;

use testbed_api::objects::{
    Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IntOrString, ObjectMeta, ObjectReference,
    OwnerReference, Pod, Service, MANAGED_BY_LABEL, SERVICE_NAME_LABEL,
};

use super::super::podutil::{is_finished, is_ready, is_terminating};

/// The `managed-by` label's value on the slices this controller makes (Kubernetes' own).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Endpoints in one slice (Kubernetes' `--max-endpoints-per-slice` default).
pub const MAX_PER_SLICE: usize = 100;
/// Room for the name's suffix (`-` and 8 hex digits) within a DNS label.
const NAME_PREFIX_MAX: usize = 63 - 9;

/// The selector picks the pod: every label of the selector, with its value.
pub fn selects(svc: &Service, pod: &Pod) -> bool {
    !svc.spec.selector.is_empty() && svc.spec.selector.iter().all(|(k, v)| pod.metadata.labels.get(k) == Some(v))
}

/// The Service's ports as served by `pod`: a port whose named targetPort the pod does not have is left out.
fn resolved_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    svc.spec
        .ports
        .iter()
        .filter_map(|p| {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let number = match &p.target_port {
                None => p.port,
                Some(IntOrString::Int(n)) => *n,
                Some(IntOrString::String(name)) => {
                    pod.spec.containers.iter().flat_map(|c| &c.ports).find_map(|cp| {
                        let cp_protocol = cp.protocol.as_deref().unwrap_or("TCP");
                        (cp.name.as_deref() == Some(name.as_str()) && cp_protocol == protocol)
                            .then_some(cp.container_port)
                    })?
                }
            };
            Some(EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                protocol: Some(protocol),
                port: Some(number),
            })
        })
        .collect()
}

/// As Kubernetes' `podToEndpoint`: `serving` is the pod's readiness, `terminating` its deletion, and `ready`
/// is serving and not terminating (so proxies send no new connections to a terminating pod).
fn endpoint(pod: &Pod, ip: &str) -> Endpoint {
    let serving = is_ready(pod);
    let terminating = is_terminating(pod);
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: EndpointConditions {
            ready: Some(serving && !terminating),
            serving: Some(serving),
            terminating: Some(terminating),
        },
        node_name: pod.spec.node_name.clone(),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: Some(pod.metadata.name.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
    }
}

/// FNV-1a of `text`: a stable short suffix for a slice's name.
fn fnv(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

fn slice(svc: &Service, ports: Vec<EndpointPort>, endpoints: Vec<Endpoint>, chunk: usize) -> EndpointSlice {
    let name = &svc.metadata.name;
    let prefix: String = name.chars().take(NAME_PREFIX_MAX).collect();
    let suffix = fnv(&format!("{}/{chunk}", serde_json::to_string(&ports).unwrap_or_default()));
    let labels = BTreeMap::from([
        (SERVICE_NAME_LABEL.to_string(), name.clone()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ]);
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: name.clone(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    EndpointSlice {
        api_version: "discovery.k8s.io/v1".into(),
        kind: "EndpointSlice".into(),
        metadata: ObjectMeta {
            name: format!("{prefix}-{suffix:08x}"),
            namespace: svc.metadata.namespace.clone(),
            labels,
            owner_references: vec![owner],
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports,
    }
}

/// Pods that serve a Service's ports on the same numbers: those ports, and their endpoints by pod name.
type PortGroup = (Vec<EndpointPort>, Vec<(String, Endpoint)>);

/// The slices `svc` should have, given the pods of its namespace; none for a Service without a selector
/// (its slices are the user's to write, as in Kubernetes).
pub fn slices(svc: &Service, pods: &[Pod]) -> Vec<EndpointSlice> {
    if svc.spec.selector.is_empty() {
        return Vec::new();
    }
    let mut groups: BTreeMap<String, PortGroup> = BTreeMap::new();
    for pod in pods.iter().filter(|p| selects(svc, p) && !is_finished(p)) {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).filter(|ip| !ip.is_empty()) else {
            continue;
        };
        let ports = resolved_ports(svc, pod);
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let group = groups.entry(key).or_insert_with(|| (ports, Vec::new()));
        group.1.push((pod.metadata.name.clone(), endpoint(pod, ip)));
    }
    if groups.is_empty() {
        return vec![slice(svc, Vec::new(), Vec::new(), 0)];
    }
    let mut out = Vec::new();
    for (_, (ports, mut endpoints)) in groups {
        endpoints.sort_by(|a, b| a.0.cmp(&b.0));
        let endpoints: Vec<Endpoint> = endpoints.into_iter().map(|(_, e)| e).collect();
        for (chunk, part) in endpoints.chunks(MAX_PER_SLICE).enumerate() {
            out.push(slice(svc, ports.clone(), part.to_vec(), chunk));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"selector": {"app": "web"}, "ports": ports}}))
        .unwrap()
    }

    fn pod(name: &str, ip: Option<&str>, ready: bool, http_port: i32) -> Pod {
        let status = if ready { "True" } else { "False" };
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "node1", "containers": [{"name": "c", "command": ["x"],
                     "ports": [{"name": "http", "containerPort": http_port}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": status, "lastTransitionTime": "2026-11-29T12:00:00Z"}]}}))
        .unwrap()
    }

    #[test]
    fn pods_become_endpoints_with_their_ports_resolved() {
        let svc = service(
            json!([{"name": "web", "port": 80, "targetPort": "http"}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
        );
        let mut other = pod("x", Some("10.244.1.9"), true, 8080);
        other.metadata.labels.insert("app".into(), "db".into());
        let pods = [
            pod("b", Some("10.244.1.3"), false, 8080),
            pod("a", Some("10.244.1.2"), true, 8080),
            pod("c", None, true, 8080),
            other,
        ];
        let slices = slices(&svc, &pods);
        assert_eq!(slices.len(), 1);
        let s = &slices[0];
        assert_eq!(s.metadata.labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(s.metadata.owner_references[0].uid, "u1");
        let addresses: Vec<(&str, Option<bool>)> =
            s.endpoints.iter().map(|e| (e.addresses[0].as_str(), e.conditions.ready)).collect();
        assert_eq!(
            addresses,
            [("10.244.1.2", Some(true)), ("10.244.1.3", Some(false))],
            "sorted by pod, no IP left out"
        );
        let ports: Vec<(Option<&str>, Option<i32>)> = s.ports.iter().map(|p| (p.name.as_deref(), p.port)).collect();
        assert_eq!(ports, [(Some("web"), Some(8080)), (Some("dns"), Some(53))]);
    }

    #[test]
    fn a_terminating_pod_stays_as_a_terminating_endpoint_that_is_not_ready() {
        let svc = service(json!([{"port": 80}]));
        let mut going = pod("a", Some("10.244.1.2"), true, 8080);
        going.metadata.deletion_timestamp = Some("2026-11-29T12:00:30Z".into());
        let mut going_unready = pod("b", Some("10.244.1.3"), false, 8080);
        going_unready.metadata.deletion_timestamp = going.metadata.deletion_timestamp.clone();
        let slices = slices(&svc, &[going, going_unready]);
        let conditions: Vec<_> = slices[0]
            .endpoints
            .iter()
            .map(|e| (e.conditions.ready, e.conditions.serving, e.conditions.terminating))
            .collect();
        assert_eq!(conditions, [(Some(false), Some(true), Some(true)), (Some(false), Some(false), Some(true))]);
    }

    #[test]
    fn pods_that_resolve_a_named_port_differently_get_slices_of_their_own() {
        let svc = service(json!([{"port": 80, "targetPort": "http"}]));
        let slices =
            slices(&svc, &[pod("a", Some("10.244.1.2"), true, 8080), pod("b", Some("10.244.1.3"), true, 9090)]);
        assert_eq!(slices.len(), 2);
        assert_ne!(slices[0].metadata.name, slices[1].metadata.name);
    }

    #[test]
    fn a_slice_holds_at_most_100_endpoints_and_no_pods_is_one_empty_slice() {
        let svc = service(json!([{"port": 80}]));
        let pods: Vec<Pod> = (0..250)
            .map(|i| pod(&format!("p{i:03}"), Some(&format!("10.244.{}.{}", i / 200, i % 200 + 1)), true, 80))
            .collect();
        let sizes: Vec<usize> = slices(&svc, &pods).iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let empty = slices(&svc, &[]);
        assert_eq!((empty.len(), empty[0].endpoints.len()), (1, 0));
        let mut no_selector = svc.clone();
        no_selector.spec.selector.clear();
        assert!(slices(&no_selector, &pods).is_empty());
    }
}
