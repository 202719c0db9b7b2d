//! Deployments and ReplicaSets: the scale subresource, generation, status only through `/status`, discovery,
//! a namespace that still holds them, and the watch `kubectl rollout status` makes.

use axum::http::StatusCode;
use serde_json::json;
use testbed_api::objects::{LabelSelector, LabelSelectorRequirement};

use super::{request, rv, server, target, watch_events, workload};
use crate::apiserver::scale::selector_string;

const SCALE: &str = "/apis/apps/v1/namespaces/default/deployments/web/scale";

#[tokio::test]
async fn scale_reads_the_object_and_writes_only_its_replicas() {
    let s = server().await;
    s.create(&target("deployments", None), workload("Deployment", "web", 2), None).await.expect("create");
    let status = super::Target { subresource: Some("status".into()), ..target("deployments", Some("web")) };
    let mut d = s.get(&target("deployments", Some("web"))).await.expect("get");
    d["status"] = json!({"replicas": 2, "observedGeneration": 1});
    let (d, _) = s.update(&status, d, None).await.expect("status");

    let (code, scale) = request(&s, "GET", SCALE, "", None).await;
    assert_eq!(code, StatusCode::OK, "{scale}");
    assert_eq!((scale["apiVersion"].as_str(), scale["kind"].as_str()), (Some("autoscaling/v1"), Some("Scale")));
    assert_eq!(scale["metadata"]["resourceVersion"], d["metadata"]["resourceVersion"]);
    assert_eq!(scale["metadata"]["uid"], d["metadata"]["uid"]);
    assert_eq!((scale["spec"]["replicas"].as_i64(), scale["status"]["replicas"].as_i64()), (Some(2), Some(2)));
    assert_eq!(scale["status"]["selector"], "app=web");

    // PUT with the current resourceVersion: only spec.replicas changes (and the generation, with the spec).
    let mut put = scale.clone();
    put["spec"]["replicas"] = json!(5);
    let (code, answer) = request(&s, "PUT", SCALE, "application/json", Some(put.clone())).await;
    assert_eq!((code, answer["spec"]["replicas"].as_i64()), (StatusCode::OK, Some(5)), "{answer}");
    let after = s.get(&target("deployments", Some("web"))).await.expect("get");
    assert_eq!(after["spec"]["replicas"], 5);
    assert_eq!(after["metadata"]["generation"], 2);
    assert_eq!((&after["status"], &after["spec"]["template"]), (&d["status"], &d["spec"]["template"]));
    // The same PUT again carries a stale resourceVersion.
    let (code, answer) = request(&s, "PUT", SCALE, "application/json", Some(put)).await;
    assert_eq!((code, answer["reason"].as_str()), (StatusCode::CONFLICT, Some("Conflict")));

    // PATCH, as kubectl scale sends it; a negative count is refused naming the field.
    let patch = json!({"spec": {"replicas": 3}});
    let (code, answer) = request(&s, "PATCH", SCALE, "application/merge-patch+json", Some(patch)).await;
    assert_eq!((code, answer["spec"]["replicas"].as_i64()), (StatusCode::OK, Some(3)), "{answer}");
    let negative = json!({"spec": {"replicas": -1}});
    let (code, answer) = request(&s, "PATCH", SCALE, "application/strategic-merge-patch+json", Some(negative)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["details"]["causes"][0]["field"], "spec.replicas");
    assert_eq!(s.get(&target("deployments", Some("web"))).await.expect("get")["spec"]["replicas"], 3);

    s.create(&target("replicasets", None), workload("ReplicaSet", "rs1", 1), None).await.expect("create");
    let rs_scale = "/apis/apps/v1/namespaces/default/replicasets/rs1/scale";
    let (code, answer) =
        request(&s, "PATCH", rs_scale, "application/merge-patch+json", Some(json!({"spec": {"replicas": 0}}))).await;
    assert_eq!((code, answer["spec"]["replicas"].as_i64()), (StatusCode::OK, Some(0)), "{answer}");
    let (code, _) = request(&s, "GET", "/api/v1/namespaces/default/pods/web/scale", "", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "pods have no scale");
}

#[tokio::test]
async fn discovery_lists_the_subresources() {
    let s = server().await;
    let (code, doc) = request(&s, "GET", "/apis/apps/v1", "", None).await;
    assert_eq!(code, StatusCode::OK);
    let names: Vec<&str> =
        doc["resources"].as_array().expect("list").iter().filter_map(|r| r["name"].as_str()).collect();
    for want in ["deployments/scale", "replicasets/scale", "deployments/status", "replicasets/status"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let scale =
        doc["resources"].as_array().expect("list").iter().find(|r| r["name"] == "deployments/scale").expect("scale");
    assert_eq!(
        (&scale["kind"], &scale["group"], &scale["version"]),
        (&json!("Scale"), &json!("autoscaling"), &json!("v1"))
    );
    assert_eq!(scale["verbs"], json!(["get", "patch", "update"]));
}

#[tokio::test]
async fn generation_follows_the_spec_and_status_only_its_subresource() {
    let s = server().await;
    let mut with_status = workload("Deployment", "web", 1);
    with_status["status"] = json!({"replicas": 7});
    let (d, _) = s.create(&target("deployments", None), with_status, None).await.expect("create");
    assert_eq!((d["metadata"]["generation"].as_i64(), d.get("status")), (Some(1), None), "status starts empty");
    let web = target("deployments", Some("web"));
    let label = json!({"metadata": {"labels": {"x": "y"}}, "status": {"replicas": 7}});
    let (d, _) = s.patch(&web, "application/merge-patch+json", label, None).await.expect("patch");
    assert_eq!((d["metadata"]["generation"].as_i64(), d.get("status")), (Some(1), None), "metadata only");
    let paused = json!({"spec": {"paused": true}});
    let (d, _) = s.patch(&web, "application/strategic-merge-patch+json", paused, None).await.expect("patch");
    assert_eq!((d["metadata"]["generation"].as_i64(), d["spec"]["paused"].as_bool()), (Some(2), Some(true)));
    let status = super::Target { subresource: Some("status".into()), ..web };
    let observed = json!({"status": {"observedGeneration": 2}, "spec": {"replicas": 9}});
    let (d, _) = s.patch(&status, "application/merge-patch+json", observed, None).await.expect("status");
    assert_eq!((d["status"]["observedGeneration"].as_i64(), d["spec"]["replicas"].as_i64()), (Some(2), Some(1)));
    assert_eq!(d["metadata"]["generation"], 2);
}

#[tokio::test]
async fn a_namespace_holding_a_deployment_is_not_deleted() {
    let s = server().await;
    let ns = json!({"metadata": {"name": "team"}});
    s.create(&super::Target::collection(&crate::resources::RESOURCES[0], None), ns, None).await.expect("ns");
    let deployments = super::Target { namespace: Some("team".into()), ..target("deployments", None) };
    s.create(&deployments, workload("Deployment", "web", 1), None).await.expect("create");
    let team =
        super::Target { name: Some("team".into()), ..super::Target::collection(&crate::resources::RESOURCES[0], None) };
    let err = s.delete(&team, &json!({})).await.expect_err("not empty");
    assert!(err.code == StatusCode::CONFLICT && err.message.contains("deployments"), "{err}");
    s.delete(&super::Target { name: Some("web".into()), ..deployments }, &json!({})).await.expect("delete");
    s.delete(&team, &json!({})).await.expect("empty now");
}

#[tokio::test(start_paused = true)]
async fn a_deployment_is_watched_by_name() {
    let s = server().await;
    let start = rv(&s.list(&target("deployments", None), &Default::default()).await.expect("list")).to_string();
    for name in ["web", "db"] {
        s.create(&target("deployments", None), workload("Deployment", name, 1), None).await.expect("create");
    }
    let scale = json!({"spec": {"replicas": 2}});
    s.patch(&target("deployments", Some("db")), "application/merge-patch+json", scale.clone(), None).await.expect("db");
    s.patch(&target("deployments", Some("web")), "application/merge-patch+json", scale, None).await.expect("web");
    let q = [("resourceVersion", start.as_str()), ("fieldSelector", "metadata.name=web")];
    let seen = watch_events(&s, &target("deployments", None), &q).await.expect("watch");
    assert_eq!(seen, [("ADDED".into(), "web".into()), ("MODIFIED".into(), "web".into())]);
}

#[test]
fn selectors_print_as_label_queries() {
    let req = |key: &str, operator: &str, values: &[&str]| LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    let selector = LabelSelector {
        match_labels: [("app".to_string(), "web".to_string())].into(),
        match_expressions: vec![
            req("tier", "In", &["front", "back"]),
            req("canary", "DoesNotExist", &[]),
            req("env", "NotIn", &["dev"]),
            req("zone", "Exists", &[]),
        ],
    };
    assert_eq!(selector_string(&selector), "app=web,!canary,env notin (dev),tier in (back,front),zone");
}
