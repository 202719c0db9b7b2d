//! The policy enforcer follows the API with the real parts (`kubelet_lab`: etcd, the API server and the
//! agent in a network namespace of the test, joined as node n1): NetworkPolicies, Namespaces and Pods written
//! through the API (the pods bound to n1 and run by the agent) become the node's rules, proven with real
//! connections between the pods (`policy_pods`): a namespace and pod selector together with a named port, a
//! second policy's union, an egress deny, and deletion. Skipped unless root.

#![allow(clippy::unwrap_used)]

mod kubelet_lab;
mod policy_pods;

use serde_json::{json, Value};
use testbed_api::objects::{Namespace, NetworkPolicy, Pod as ApiPod};
use testbed_api::PodPhase;
use testbed_control_plane::client::{paths, Client};
use testbed_control_plane::resources::Kind;
use testbed_test_support::agent_http::request as http;

use kubelet_lab::{wait_for, Cluster, API_PORT, NODE};
use policy_pods::{expect_within, serve, Pod, TCP_PORTS};

/// An API pod on n1 labelled `app`, with container port `pg` 8080; once Running, its servers started.
fn api_pod(c: &Cluster, api: &Client, namespace: &str, name: &'static str, app: &str) -> Pod {
    let pod: ApiPod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "c", "command": ["sleep", "3600"],
                                 "ports": [{"name": "pg", "containerPort": TCP_PORTS[0]}]}]}}))
    .unwrap();
    c.rt.block_on(api.create(&paths::collection(Kind::Pod, Some(namespace)), &pod)).unwrap();
    let mut ip = None;
    wait_for(&format!("{namespace}/{name} Running with an IP"), 30, || {
        let p: ApiPod = c.rt.block_on(api.get(&paths::pod(namespace, name))).unwrap();
        ip = p.status.filter(|s| s.phase == Some(PodPhase::Running)).and_then(|s| s.pod_ip);
        ip.is_some()
    });
    let ip = ip.unwrap();
    let (code, pods) = http("GET", "/v1/pods", None);
    assert_eq!(code, 200, "{pods}");
    let on_node = pods.as_array().unwrap().iter().find(|p| p["ip"] == ip.as_str()).expect("the node pod");
    let pod = Pod { name, ip, infra_pid: on_node["infra_pid"].as_u64().unwrap() };
    serve(&pod);
    pod
}

/// Creates the policy; its resourceVersion.
fn create_policy(c: &Cluster, api: &Client, namespace: &str, name: &str, spec: Value) -> String {
    let policy: NetworkPolicy = serde_json::from_value(json!({"apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": namespace}, "spec": spec}))
    .unwrap();
    let created = c.rt.block_on(api.create(&paths::collection(Kind::NetworkPolicy, Some(namespace)), &policy));
    created.unwrap().metadata.resource_version.unwrap()
}

/// The status's `built_from`: the policies (and versions) the node's table is built from.
fn built_from() -> Value {
    let (code, body) = http("GET", "/v1/network-policies", None);
    assert_eq!(code, 200, "{body}");
    body.get("built_from").cloned().unwrap_or(json!({}))
}

#[test]
fn the_enforcer_follows_the_apis_network_policies() {
    testbed_test_support::require_root!();
    let c = Cluster::start("kbl-netpol");
    let api = c.client(API_PORT);
    let team_a: Namespace = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "team-a", "labels": {"team": "a"}}}))
    .unwrap();
    c.rt.block_on(api.create(&paths::collection(Kind::Namespace, None), &team_a)).unwrap();
    let db = api_pod(&c, &api, "default", "db", "db");
    let web = api_pod(&c, &api, "default", "web", "web");
    let client = api_pod(&c, &api, "team-a", "client", "web");
    let other = api_pod(&c, &api, "default", "other", "other");
    let [p1, p2] = TCP_PORTS;

    let first = create_policy(
        &c,
        &api,
        "default",
        "db-from-team-a-web",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                                      "podSelector": {"matchLabels": {"app": "web"}}}],
                            "ports": [{"port": "pg"}]}]}),
    );
    let created = std::time::Instant::now();
    wait_for("db in the kernel's ingress map", 10, || {
        let (code, body) = http("GET", "/v1/network-policies", None);
        code == 200 && body["ingress_pods"] == json!([db.ip])
    });
    println!("API create -> db's ingress map entry in the kernel: {:?}", created.elapsed());
    assert_eq!(built_from(), json!({"default/db-from-team-a-web": first}), "the status names what is enforced");
    // A policy that selects no pod of the node changes no rule, and is still listed once followed: a client
    // waiting on the status learns that this node is done with it.
    let idle =
        create_policy(&c, &api, "default", "selects-nothing", json!({"podSelector": {"matchLabels": {"app": "none"}}}));
    wait_for("the rule-less policy listed", 10, || built_from()["default/selects-nothing"] == json!(idle));
    c.rt.block_on(api.delete(&paths::object(Kind::NetworkPolicy, "default", "selects-nothing"))).unwrap();
    wait_for("the deleted policy no longer listed", 10, || built_from().get("default/selects-nothing").is_none());
    expect_within(
        10,
        "db admits app=web pods of team=a namespaces on its port named pg only",
        &[(&client, &db, p1, true), (&client, &db, p2, false), (&web, &db, p1, false), (&other, &db, p1, false)],
    );

    create_policy(
        &c,
        &api,
        "default",
        "db-from-web",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}),
    );
    expect_within(
        10,
        "a second policy adds its peers (union): default's web on any port",
        &[(&web, &db, p1, true), (&web, &db, p2, true), (&client, &db, p2, false), (&other, &db, p1, false)],
    );

    create_policy(
        &c,
        &api,
        "default",
        "other-no-egress",
        json!({"podSelector": {"matchLabels": {"app": "other"}},
        "policyTypes": ["Egress"]}),
    );
    expect_within(10, "other may send nothing", &[(&other, &web, p1, false), (&web, &other, p1, true)]);

    for name in ["db-from-team-a-web", "db-from-web", "other-no-egress"] {
        c.rt.block_on(api.delete(&paths::object(Kind::NetworkPolicy, "default", name))).unwrap();
    }
    expect_within(10, "no policy left: all open", &[(&other, &db, p1, true), (&web, &db, p2, true)]);
    assert_eq!(built_from(), json!({}), "no policy is enforced");
    assert!(c.agent_log().contains("network policy follows the API"), "{}", c.agent_log());
}
