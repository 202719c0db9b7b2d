//! The patch formats through the server: strategic merge patch (kubectl's default) merging containers by
//! name, JSON patch as `kubectl rollout undo` sends it, and the resourceVersion a JSON patch can carry.

use axum::http::StatusCode;
use serde_json::json;

use super::{rv, server, target, workload};

const SMP: &str = "application/strategic-merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";

#[tokio::test]
async fn strategic_merge_patch_merges_containers_by_name() {
    let s = server().await;
    s.create(&target("deployments", None), workload("Deployment", "web", 1), None).await.expect("create");
    let web = target("deployments", Some("web"));
    let restart = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}},
        "spec": {"containers": [{"name": "srv", "env": [{"name": "A", "value": "1"}]},
                                {"name": "side", "command": ["sleep", "2"]}]}}}});
    let (d, _) = s.patch(&web, SMP, restart, None).await.expect("patch");
    let containers = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["command"], json!(["sleep", "1d"]), "the named container is merged, not replaced");
    assert_eq!(containers[0]["env"], json!([{"name": "A", "value": "1"}]));
    assert_eq!(containers[1]["name"], "side");
    assert_eq!(d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"], "now");
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["app"], "web");
    let delete = json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}});
    let (d, _) = s.patch(&web, SMP, delete, None).await.expect("patch");
    assert_eq!(d["spec"]["template"]["spec"]["containers"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn json_patch_as_rollout_undo_sends_it() {
    let s = server().await;
    s.create(&target("deployments", None), workload("Deployment", "web", 1), None).await.expect("create");
    let web = target("deployments", Some("web"));
    let mut template = workload("Deployment", "web", 1)["spec"]["template"].clone();
    template["spec"]["containers"][0]["command"] = json!(["sleep", "2d"]);
    let undo = json!([
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": {"deployment.kubernetes.io/revision": "1"}},
    ]);
    // /metadata/annotations does not exist yet: replace needs it, so the whole patch fails and changes nothing.
    let err = s.patch(&web, JSON_PATCH, undo.clone(), None).await.expect_err("missing path");
    assert_eq!(err.code, StatusCode::UNPROCESSABLE_ENTITY);
    let (d, _) = s
        .patch(&web, "application/merge-patch+json", json!({"metadata": {"annotations": {"a": "b"}}}), None)
        .await
        .expect("merge");
    let (d2, _) = s.patch(&web, JSON_PATCH, undo, None).await.expect("undo");
    assert_eq!(d2["spec"]["template"]["spec"]["containers"][0]["command"], json!(["sleep", "2d"]));
    assert_eq!(d2["metadata"]["annotations"], json!({"deployment.kubernetes.io/revision": "1"}));
    assert_eq!(d2["metadata"]["generation"], 2);

    // A test op guards the patch; a stale resourceVersion in it is a conflict.
    let failing =
        json!([{"op": "test", "path": "/spec/replicas", "value": 4}, {"op": "remove", "path": "/spec/paused"}]);
    assert_eq!(
        s.patch(&web, JSON_PATCH, failing, None).await.expect_err("test fails").code,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let stale = json!([{"op": "replace", "path": "/metadata/resourceVersion", "value": rv(&d).to_string()},
                       {"op": "replace", "path": "/spec/replicas", "value": 4}]);
    assert_eq!(s.patch(&web, JSON_PATCH, stale, None).await.expect_err("stale").code, StatusCode::CONFLICT);
    assert_eq!(s.get(&web).await.expect("get"), d2, "nothing changed");
}
