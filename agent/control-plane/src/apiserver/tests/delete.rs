//! Deletion options: Orphan removes the owner from its dependents' ownerReferences; Background and
//! Foreground leave them to the garbage collector; bad options are 422.

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::{pod, pods, request, server, target, workload};

/// A Deployment `web`, a ReplicaSet owned by it and by another owner, and a pod owned by the ReplicaSet.
async fn family(s: &super::Server<crate::store::memory::Memory>) -> (String, String) {
    let (d, _) = s.create(&target("deployments", None), workload("Deployment", "web", 1), None).await.expect("create");
    let owner = |kind: &str, name: &str, uid: &Value| json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true});
    let mut rs = workload("ReplicaSet", "web-1", 1);
    rs["metadata"]["ownerReferences"] =
        json!([owner("Deployment", "web", &d["metadata"]["uid"]), owner("Deployment", "other", &json!("uid-other"))]);
    rs["metadata"]["ownerReferences"][1]["controller"] = json!(false);
    let (rs, _) = s.create(&target("replicasets", None), rs, None).await.expect("create");
    let mut p = pod("web-1-abcde");
    p["metadata"]["ownerReferences"] = json!([owner("ReplicaSet", "web-1", &rs["metadata"]["uid"])]);
    s.create(&pods("default"), p, None).await.expect("create");
    let uid = |v: &Value| v["metadata"]["uid"].as_str().expect("uid").to_string();
    (uid(&d), uid(&rs))
}

#[tokio::test]
async fn orphan_leaves_the_dependents_without_the_owner() {
    for options in [json!({"propagationPolicy": "Orphan"}), json!({"orphanDependents": true})] {
        let s = server().await;
        let (_, rs_uid) = family(&s).await;
        s.delete(&target("deployments", Some("web")), &options).await.expect("delete");
        let rs = s.get(&target("replicasets", Some("web-1"))).await.expect("the replica set stays");
        assert_eq!(rs["metadata"]["ownerReferences"].as_array().map(Vec::len), Some(1), "{options}");
        assert_eq!(rs["metadata"]["ownerReferences"][0]["uid"], "uid-other");
        let p = s.get(&target("pods", Some("web-1-abcde"))).await.expect("the pod stays");
        assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], rs_uid.as_str(), "not a dependent of web");
    }
}

#[tokio::test]
async fn background_and_foreground_delete_the_owner_only() {
    for policy in ["Background", "Foreground"] {
        let s = server().await;
        let (d_uid, _) = family(&s).await;
        let path = format!("/apis/apps/v1/namespaces/default/deployments/web?propagationPolicy={policy}");
        let (code, _) = request(&s, "DELETE", &path, "application/json", None).await;
        assert_eq!(code, StatusCode::OK);
        assert!(s.get(&target("deployments", Some("web"))).await.is_err(), "{policy}: the owner is gone");
        let rs = s.get(&target("replicasets", Some("web-1"))).await.expect("the garbage collector's job");
        assert_eq!(rs["metadata"]["ownerReferences"][0]["uid"], d_uid.as_str(), "{policy}");
    }
    let s = server().await;
    family(&s).await;
    for bad in
        [json!({"propagationPolicy": "Sideways"}), json!({"propagationPolicy": "Orphan", "orphanDependents": true})]
    {
        let err = s.delete(&target("deployments", Some("web")), &bad).await.expect_err("invalid");
        assert_eq!(err.code, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let path = "/apis/apps/v1/namespaces/default/deployments/web";
    let (code, _) = request(
        &s,
        "DELETE",
        path,
        "application/json",
        Some(json!({"kind": "DeleteOptions", "propagationPolicy": "Orphan"})),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let rs = s.get(&target("replicasets", Some("web-1"))).await.expect("stays");
    assert_eq!(rs["metadata"]["ownerReferences"].as_array().map(Vec::len), Some(1), "orphaned through the body");
}

#[tokio::test]
async fn a_bound_pod_is_marked_terminating_and_goes_at_grace_zero() {
    let s = server().await;
    let mut bound = pod("web");
    bound["spec"]["nodeName"] = json!("n1");
    let (created, _) = s.create(&pods("default"), bound, None).await.expect("create");
    let path = "/api/v1/namespaces/default/pods/web";
    let (code, marked) = request(&s, "DELETE", path, "application/json", None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30, "{marked}");
    assert!(marked["metadata"]["deletionTimestamp"].is_string(), "{marked}");
    let stored = s.get(&target("pods", Some("web"))).await.expect("still there while terminating");
    assert_eq!(stored["metadata"]["deletionTimestamp"], marked["metadata"]["deletionTimestamp"]);

    // An update cannot take the deletion back.
    let mut update = stored.clone();
    update["metadata"]["deletionTimestamp"] = Value::Null;
    update["metadata"]["labels"] = json!({"x": "y"});
    let (code, updated) = request(&s, "PUT", path, "application/json", Some(update)).await;
    assert_eq!(code, StatusCode::OK, "{updated}");
    assert_eq!(updated["metadata"]["deletionTimestamp"], marked["metadata"]["deletionTimestamp"]);

    // A longer grace changes nothing; the kubelet's grace 0 with the uid as precondition removes it.
    let (_, again) = request(&s, "DELETE", &format!("{path}?gracePeriodSeconds=60"), "application/json", None).await;
    assert_eq!(again["metadata"]["deletionGracePeriodSeconds"], 30);
    let wrong = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": "another"}});
    let (code, _) = request(&s, "DELETE", path, "application/json", Some(wrong)).await;
    assert_eq!(code, StatusCode::CONFLICT);
    let force = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": created["metadata"]["uid"]}});
    let (code, _) = request(&s, "DELETE", path, "application/json", Some(force)).await;
    assert_eq!(code, StatusCode::OK);
    assert!(s.get(&target("pods", Some("web"))).await.is_err(), "gone at grace 0");

    // An unbound pod goes at once.
    s.create(&pods("default"), pod("pending"), None).await.expect("create");
    s.delete(&target("pods", Some("pending")), &json!({})).await.expect("delete");
    assert!(s.get(&target("pods", Some("pending"))).await.is_err(), "an unbound pod goes at once");
}
