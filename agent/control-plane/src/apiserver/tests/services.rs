//! Services: Kubernetes' defaults, cluster IPs and node ports allocated lowest-free-first and held once,
//! kept through updates (the cluster IP cannot change), given back on delete; EndpointSlices in discovery.

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::{request, server, target};

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

fn web_spec() -> Value {
    json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]})
}

#[tokio::test]
async fn a_service_gets_defaults_and_the_lowest_free_cluster_ip() {
    let s = server().await;
    let (a, _) = s.create(&target("services", None), service("a", web_spec()), None).await.expect("create a");
    let spec = &a["spec"];
    assert_eq!(spec["clusterIP"], "10.96.0.2", "the first address after the API's own: {spec}");
    assert_eq!(spec["clusterIPs"], json!(["10.96.0.2"]));
    assert_eq!((spec["type"].as_str(), spec["sessionAffinity"].as_str()), (Some("ClusterIP"), Some("None")));
    assert_eq!(spec["internalTrafficPolicy"], "Cluster");
    assert_eq!(spec["ports"][0]["protocol"], "TCP");
    assert_eq!(spec["ports"][0]["targetPort"], "http");
    let (b, _) = s
        .create(&target("services", None), service("b", json!({"ports": [{"port": 53, "protocol": "UDP"}]})), None)
        .await
        .expect("create b");
    assert_eq!(b["spec"]["clusterIP"], "10.96.0.3");
    assert_eq!(b["spec"]["ports"][0]["targetPort"], 53, "targetPort defaults to the port");

    // A fixed address: taken once, refused when held or out of range, and free again after a delete.
    let fixed = |name: &str, ip: &str| service(name, json!({"clusterIP": ip, "ports": [{"port": 80}]}));
    s.create(&target("services", None), fixed("c", "10.96.0.10"), None).await.expect("fixed");
    let held = s.create(&target("services", None), fixed("d", "10.96.0.10"), None).await.expect_err("held");
    assert_eq!(held.code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(held.message.contains("spec.clusterIP") && held.message.contains("already allocated"), "{}", held.message);
    let outside = s.create(&target("services", None), fixed("d", "10.0.0.10"), None).await.expect_err("outside");
    assert!(
        outside.message.contains("not in the valid range. The range of valid IPs is 10.96.0.0/12"),
        "{}",
        outside.message
    );
    s.delete(&target("services", Some("c")), &json!({})).await.expect("delete");
    s.create(&target("services", None), fixed("d", "10.96.0.10"), None).await.expect("free again");

    // A failed create holds nothing: `a` exists, so its address is not lost to the duplicate.
    let dup = s.create(&target("services", None), service("a", web_spec()), None).await.expect_err("duplicate");
    assert_eq!(dup.code, StatusCode::CONFLICT);
    let (e, _) = s.create(&target("services", None), service("e", web_spec()), None).await.expect("create e");
    assert_eq!(e["spec"]["clusterIP"], "10.96.0.4");
}

#[tokio::test]
async fn updates_keep_the_addresses_and_the_cluster_ip_is_immutable() {
    let s = server().await;
    let spec = json!({"type": "NodePort", "selector": {"app": "web"},
                      "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]});
    let (svc, _) = s.create(&target("services", None), service("np", spec), None).await.expect("create");
    let ports = &svc["spec"]["ports"];
    assert_eq!((ports[0]["nodePort"].as_i64(), ports[1]["nodePort"].as_i64()), (Some(30000), Some(30053)));
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Cluster");

    // A replace without clusterIP and nodePorts (as a hand-written file) keeps them.
    let bare = service(
        "np",
        json!({"type": "NodePort", "selector": {"app": "web2"},
                                    "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
    );
    let (kept, _) = s.update(&target("services", Some("np")), bare, None).await.expect("replace");
    assert_eq!(kept["spec"]["clusterIP"], svc["spec"]["clusterIP"]);
    assert_eq!(kept["spec"]["ports"], svc["spec"]["ports"]);
    assert_eq!(kept["spec"]["selector"]["app"], "web2");

    let mut moved = kept.clone();
    moved["spec"]["clusterIP"] = json!("10.96.0.99");
    moved["spec"]["clusterIPs"] = json!(["10.96.0.99"]);
    let err = s.update(&target("services", Some("np")), moved, None).await.expect_err("immutable");
    assert!(err.message.contains("spec.clusterIP") && err.message.contains("field is immutable"), "{}", err.message);

    // Back to ClusterIP: the node ports are given back and another Service can take them.
    let (path, ctype) = ("/api/v1/namespaces/default/services/np", "application/json-patch+json");
    let patch = json!([{"op": "replace", "path": "/spec/type", "value": "ClusterIP"},
                       {"op": "remove", "path": "/spec/externalTrafficPolicy"},
                       {"op": "remove", "path": "/spec/ports/0/nodePort"}, {"op": "remove", "path": "/spec/ports/1/nodePort"}]);
    let (code, body) = request(&s, "PATCH", path, ctype, Some(patch)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let again =
        service("np2", json!({"type": "NodePort", "ports": [{"port": 53, "protocol": "UDP", "nodePort": 30053}]}));
    s.create(&target("services", None), again, None).await.expect("the node port is free again");
}

#[tokio::test]
async fn tcp_and_udp_ports_of_one_number_share_a_node_port_as_kubernetes_allocates_them() {
    let s = server().await;
    let both = |name: &str, node_port: Option<i64>| {
        let mut ports = json!([{"name": "tcp", "port": 5210}, {"name": "udp", "port": 5210, "protocol": "UDP"}]);
        if let Some(n) = node_port {
            ports[0]["nodePort"] = json!(n);
            ports[1]["nodePort"] = json!(n);
        }
        service(name, json!({"type": "NodePort", "ports": ports}))
    };
    let (auto, _) = s.create(&target("services", None), both("auto", None), None).await.expect("allocated");
    let ports = &auto["spec"]["ports"];
    assert_eq!((ports[0]["nodePort"].as_i64(), ports[1]["nodePort"].as_i64()), (Some(30000), Some(30000)));
    let (given, _) = s.create(&target("services", None), both("given", Some(30100)), None).await.expect("given");
    assert_eq!(given["spec"]["ports"][1]["nodePort"], 30100);
    // Shared within a Service only: another Service cannot take it for either protocol.
    let err = s.create(&target("services", None), both("other", Some(30100)), None).await.expect_err("held");
    assert!(err.message.contains("provided port is already allocated"), "{}", err.message);
    // Two ports of one protocol on one node port stay refused.
    let twice = service(
        "twice",
        json!({"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 30200},
                                              {"name": "b", "port": 81, "nodePort": 30200}]}),
    );
    let err = s.create(&target("services", None), twice, None).await.expect_err("same protocol");
    assert!(err.message.contains("spec.ports[1].nodePort"), "{}", err.message);
    // Deleting the Service gives the shared port back once.
    s.delete(&target("services", Some("given")), &json!({})).await.expect("delete");
    s.create(&target("services", None), both("again", Some(30100)), None).await.expect("free again");
}

#[tokio::test]
async fn endpoint_slices_are_served_in_their_group() {
    let s = server().await;
    let (code, body) = request(&s, "GET", "/apis/discovery.k8s.io/v1", "", None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(body["resources"].as_array().expect("resources").iter().any(|r| r["name"] == "endpointslices"), "{body}");
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
                       "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}],
                       "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]});
    let (code, body) = request(
        &s,
        "POST",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        "application/json",
        Some(slice),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
}
