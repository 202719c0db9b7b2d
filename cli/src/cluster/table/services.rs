//! The rows of Services and EndpointSlices, as kubectl prints them.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::or_none;

/// TYPE, CLUSTER-IP, EXTERNAL-IP, PORT(S), AGE (and SELECTOR with `-o wide`).
pub(super) fn service_row(svc: &Service, age: String, wide: bool) -> Vec<String> {
    let spec = svc.spec.as_ref();
    let type_ = spec.and_then(|s| s.type_.clone()).unwrap_or_else(|| "ClusterIP".into());
    let ip = spec.and_then(|s| s.cluster_ip.clone()).unwrap_or_default();
    let ports: Vec<String> = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .map(|p| {
            let protocol = p.protocol.as_deref().unwrap_or("TCP");
            match p.node_port {
                Some(node_port) => format!("{}:{node_port}/{protocol}", p.port),
                None => format!("{}/{protocol}", p.port),
            }
        })
        .collect();
    let mut cells = vec![type_, or_none(ip), "<none>".into(), or_none(ports.join(",")), age];
    if wide {
        let selector = spec.and_then(|s| s.selector.as_ref());
        let selector: Vec<String> = selector.into_iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
        cells.push(or_none(selector.join(",")));
    }
    cells
}

/// ADDRESSTYPE, PORTS, ENDPOINTS (the first three addresses, then how many more), AGE.
pub(super) fn endpoint_slice_row(slice: &EndpointSlice, age: String) -> Vec<String> {
    let ports: Vec<String> = slice.ports.iter().flatten().filter_map(|p| p.port).map(|p| p.to_string()).collect();
    let addresses: Vec<&str> = slice.endpoints.iter().flat_map(|e| e.addresses.iter()).map(String::as_str).collect();
    let mut endpoints = addresses.iter().take(3).copied().collect::<Vec<_>>().join(",");
    if addresses.len() > 3 {
        endpoints += &format!(" + {} more...", addresses.len() - 3);
    }
    let ports = if ports.is_empty() { "<unset>".to_string() } else { ports.join(",") };
    let endpoints = if endpoints.is_empty() { "<unset>".to_string() } else { endpoints };
    vec![slice.address_type.clone(), ports, endpoints, age]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_read_as_kubectl_prints_them() {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {
            "type": "NodePort", "clusterIP": "10.96.0.2", "selector": {"app": "web"},
            "ports": [{"port": 80, "nodePort": 30000, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}}))
        .unwrap();
        assert_eq!(
            service_row(&svc, "5s".into(), true),
            ["NodePort", "10.96.0.2", "<none>", "80:30000/TCP,53/UDP", "5s", "app=web"]
        );
        let slice: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "web-0"}, "addressType": "IPv4",
            "endpoints": (1..=5).map(|i| json!({"addresses": [format!("10.244.1.{i}")]})).collect::<Vec<_>>(),
            "ports": [{"port": 8080}]}))
        .unwrap();
        assert_eq!(
            endpoint_slice_row(&slice, "1m".into()),
            ["IPv4", "8080", "10.244.1.1,10.244.1.2,10.244.1.3 + 2 more...", "1m"]
        );
    }
}
