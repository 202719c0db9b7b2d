//! NetworkPolicies: served in `networking.k8s.io/v1`, Kubernetes' defaults on create and update, a refusal
//! naming the field that stores nothing.

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::{request, server};

const COLLECTION: &str = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies";

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn network_policies_are_served_in_their_group_with_kubernetes_defaults() {
    let s = server().await;
    let (code, body) = request(&s, "GET", "/apis/networking.k8s.io/v1", "", None).await;
    assert_eq!(code, StatusCode::OK);
    let resources = body["resources"].as_array().expect("resources");
    let netpol = resources.iter().find(|r| r["name"] == "networkpolicies").expect("networkpolicies in discovery");
    assert_eq!((netpol["kind"].as_str(), netpol["namespaced"].as_bool()), (Some("NetworkPolicy"), Some(true)));
    assert_eq!(netpol["shortNames"], json!(["netpol"]));

    let deny = policy("deny-all", json!({"podSelector": {}}));
    let (code, body) = request(&s, "POST", COLLECTION, "application/json", Some(deny)).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(body["spec"]["policyTypes"], json!(["Ingress"]), "Ingress only without egress rules: {body}");

    let egress = policy(
        "egress-dns",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "egress": [{"ports": [{"port": 53}]}]}),
    );
    let (code, body) = request(&s, "POST", COLLECTION, "application/json", Some(egress)).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(body["spec"]["policyTypes"], json!(["Ingress", "Egress"]), "Egress too with egress rules: {body}");
    assert_eq!(body["spec"]["egress"][0]["ports"][0]["protocol"], "TCP", "the port's protocol defaults: {body}");

    // An update is defaulted too (a replace of a hand-written file lacks policyTypes).
    let mut updated = body.clone();
    updated["spec"] = json!({"podSelector": {}, "egress": [{}]});
    let (code, body) = request(&s, "PUT", &format!("{COLLECTION}/egress-dns"), "application/json", Some(updated)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["spec"]["policyTypes"], json!(["Ingress", "Egress"]), "{body}");

    let (code, body) = request(&s, "GET", COLLECTION, "", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["kind"], "NetworkPolicyList");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(2), "{body}");
}

#[tokio::test]
async fn a_refused_policy_names_the_field_and_stores_nothing() {
    let s = server().await;
    let bad = policy(
        "bad",
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}),
    );
    let (code, body) = request(&s, "POST", COLLECTION, "application/json", Some(bad)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("spec.ingress[0].from[0].ipBlock.except[0]"), "{message}");
    assert!(message.contains("must be a strict subset of `cidr`"), "{message}");
    let (_, body) = request(&s, "GET", COLLECTION, "", None).await;
    assert_eq!(body["items"].as_array().map(Vec::len), Some(0), "nothing stored: {body}");
}
