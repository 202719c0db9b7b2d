//! The service proxy follows the API with the real parts (`kubelet_lab`: etcd, the API server and the agent
//! in a network namespace of the test, joined as a kubelet): a Service and an EndpointSlice written through
//! the API become the node's nftables rules (read back through `GET /v1/services`), a slice's change and
//! the Service's deletion follow. The endpoint data path itself is `proxy_real.rs`'s. Skipped unless root.

#![allow(clippy::unwrap_used)]

mod kubelet_lab;

use serde_json::{json, Value};
use testbed_api::objects::{EndpointSlice, Service};
use testbed_control_plane::client::paths;
use testbed_control_plane::resources::Kind;
use testbed_test_support::agent_http::request as http;

use kubelet_lab::{wait_for, Cluster, API_PORT};

/// The endpoints the kernel's map entry `key` leads to, if the entry exists.
fn kernel_endpoints(key: &str) -> Option<Vec<String>> {
    let (code, body) = http("GET", "/v1/services", None);
    assert_eq!(code, 200, "{body}");
    let destinations = body["destinations"].as_array()?;
    let found = destinations.iter().find(|d| d["key"] == key)?;
    let mut endpoints: Vec<String> =
        found["endpoints"].as_array()?.iter().filter_map(Value::as_str).map(str::to_string).collect();
    endpoints.sort();
    Some(endpoints)
}

fn slice(ready_second: bool) -> EndpointSlice {
    serde_json::from_value(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "node1"},
                      {"addresses": ["10.244.1.6"], "conditions": {"ready": ready_second}, "nodeName": "node1"}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}))
    .unwrap()
}

#[test]
fn the_service_proxy_follows_the_apis_services_and_slices() {
    testbed_test_support::require_root!();
    let c = Cluster::start("kbl-svc");
    let api = c.client(API_PORT);
    let svc: Service = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
    .unwrap();
    let svc: Service = c.rt.block_on(api.create(&paths::collection(Kind::Service, Some("default")), &svc)).unwrap();
    let key = format!("{} . tcp . 80", svc.spec.cluster_ip.unwrap());
    // No controller manager here: the slice is written as the EndpointSlice controller would.
    let slices = paths::collection(Kind::EndpointSlice, Some("default"));
    let written: EndpointSlice = c.rt.block_on(api.create(&slices, &slice(false))).unwrap();

    let mut seen = None;
    wait_for("the Service in the kernel with its ready endpoint", 10, || {
        seen = kernel_endpoints(&key);
        seen.as_deref() == Some(&["10.244.1.5:8080".to_string()][..])
    });

    let mut ready = slice(true);
    ready.metadata.resource_version = written.metadata.resource_version;
    c.rt.block_on(api.update(&paths::object(Kind::EndpointSlice, "default", "web-1"), &ready)).unwrap();
    let updated = std::time::Instant::now();
    wait_for("the second endpoint once ready", 10, || {
        kernel_endpoints(&key).as_deref() == Some(&["10.244.1.5:8080".to_string(), "10.244.1.6:8080".to_string()][..])
    });
    // The agent's half of the 2 s endpoint-follow target (watch, 50 ms gather, nft), on this host's CPU.
    eprintln!("EndpointSlice update -> the kernel's map: {} ms", updated.elapsed().as_millis());

    c.rt.block_on(api.delete(&paths::object(Kind::Service, "default", "web"))).unwrap();
    wait_for("the Service gone from the kernel", 10, || kernel_endpoints(&key).is_none());
    assert!(c.agent_log().contains("service proxy follows the API"), "{}", c.agent_log());
}
