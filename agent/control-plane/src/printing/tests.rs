use serde_json::json;

use super::*;

fn now() -> f64 {
    crate::meta::parse_rfc3339("2026-11-29T12:00:00Z").unwrap()
}

#[test]
fn ages_round_as_kubectl_rounds_them() {
    assert_eq!(age(Some("2026-11-29T11:59:15Z"), now()), "45s");
    assert_eq!(age(Some("2026-11-29T11:56:40Z"), now()), "3m20s");
    assert_eq!(age(Some("2026-11-29T11:43:00Z"), now()), "17m");
    assert_eq!(age(Some("2026-11-29T06:57:00Z"), now()), "5h3m");
    assert_eq!(age(Some("2026-11-26T08:00:00Z"), now()), "3d4h");
    assert_eq!(age(None, now()), "<unknown>");
}

#[test]
fn every_kind_has_a_cell_per_column() {
    for r in crate::resources::RESOURCES {
        let cells = cells(r.kind, &json!({"metadata": {"name": "x"}}), now());
        assert_eq!(cells.len(), columns(r.kind).len(), "{:?}", r.kind);
    }
}

#[test]
fn a_pod_row_counts_ready_containers_and_restarts() {
    let pod = json!({
        "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2026-11-29T11:59:00Z"},
        "spec": {"nodeName": "node2", "containers": [{"name": "a"}, {"name": "b"}]},
        "status": {"phase": "Running", "podIP": "10.244.1.2", "containerStatuses": [
            {"name": "a", "ready": true, "restartCount": 2},
            {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
    });
    assert_eq!(cells(Kind::Pod, &pod, now()), ["web", "1/2", "CrashLoopBackOff", "3", "60s", "10.244.1.2", "node2"]);
}

#[test]
fn a_node_row_shows_readiness_roles_and_its_underlay_address() {
    let node = json!({
        "metadata": {"name": "node1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"conditions": [{"type": "Ready", "status": "False"}],
                   "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}
    });
    assert_eq!(
        cells(Kind::Node, &node, now()),
        ["node1", "NotReady", "control-plane", "<unknown>", "<none>", "10.0.0.1", "10.244.0.0/24", "<none>"]
    );
}

#[test]
fn service_and_endpoint_slice_rows_read_as_kubectl_prints_them() {
    let svc = json!({"metadata": {"name": "web"}, "spec": {
        "type": "NodePort", "clusterIP": "10.96.0.2", "selector": {"app": "web"},
        "ports": [{"port": 80, "nodePort": 30000, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
    assert_eq!(
        cells(Kind::Service, &svc, now()),
        ["web", "NodePort", "10.96.0.2", "<none>", "80:30000/TCP,53/UDP", "<unknown>", "app=web"]
    );
    let slice = json!({"metadata": {"name": "web-0"}, "addressType": "IPv4",
        "endpoints": (1..=5).map(|i| json!({"addresses": [format!("10.244.1.{i}")]})).collect::<Vec<_>>(),
        "ports": [{"port": 8080}]});
    assert_eq!(
        cells(Kind::EndpointSlice, &slice, now()),
        ["web-0", "IPv4", "8080", "10.244.1.1,10.244.1.2,10.244.1.3 + 2 more...", "<unknown>"]
    );
}

#[test]
fn the_table_names_columns_as_kubernetes_does_and_carries_each_rows_metadata() {
    let pod = json!({"metadata": {"name": "web", "namespace": "team-a"}, "spec": {"containers": [{"name": "a"}]}});
    let t = table(Kind::Pod, &[pod], Some("42"), now());
    assert_eq!((t["kind"].as_str(), t["apiVersion"].as_str()), (Some("Table"), Some("meta.k8s.io/v1")));
    let names: Vec<&str> =
        t["columnDefinitions"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node"]);
    assert_eq!(t["columnDefinitions"][0]["format"], "name");
    assert_eq!(t["columnDefinitions"][5]["priority"], 1);
    assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "team-a");
    assert_eq!(t["rows"][0]["cells"][1], "0/1");
    assert_eq!(t["metadata"]["resourceVersion"], "42");
}

#[test]
fn only_a_table_of_meta_v1_is_a_table_request() {
    assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
    assert!(!wants_table("application/json"));
    assert!(!wants_table("application/json;as=Table;v=v1beta1;g=meta.k8s.io"));
}

#[test]
fn a_network_policy_shows_its_pod_selector_as_kubectl_formats_it() {
    let policy = json!({"metadata": {"name": "db"}, "spec": {"podSelector": {"matchLabels": {"app": "db"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                             {"key": "canary", "operator": "DoesNotExist"}]}}});
    assert_eq!(cells(Kind::NetworkPolicy, &policy, now()), ["db", "app=db,tier in (a,b),!canary", "<unknown>"]);
    let all = json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}});
    assert_eq!(cells(Kind::NetworkPolicy, &all, now())[1], "<none>");
}
