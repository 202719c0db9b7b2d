//! The server's rules on the in-memory store: 409 on a stale write, 410 for a compacted revision, validation
//! naming the field with nothing stored, watch resume, paths and authentication; by topic in the submodules.

mod create;
mod delete;
mod network_policies;
mod patch;
mod services;
mod workloads;

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{router, Server, Target, DEFAULT_SERVICE_CIDR};
use crate::resources::{Resource, RESOURCES};
use crate::store::memory::Memory;

pub(super) const TOKEN: &str = "t0ken";

pub(super) async fn server() -> Arc<Server<Memory>> {
    let s = Server::new(Memory::default(), TOKEN.into(), DEFAULT_SERVICE_CIDR.parse().expect("cidr"));
    s.bootstrap().await.expect("bootstrap");
    s
}

pub(super) fn pods(ns: &str) -> Target {
    Target::collection(&RESOURCES[2], Some(ns))
}

pub(super) fn pod_target(name: &str) -> Target {
    Target { name: Some(name.into()), ..pods("default") }
}

pub(super) fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "srv", "command": ["sleep", "1"]}]}})
}

pub(super) fn rv(obj: &Value) -> i64 {
    obj["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).expect("resourceVersion")
}

pub(super) fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub(super) async fn watch_events(
    s: &Server<Memory>,
    target: &Target,
    q: &[(&str, &str)],
) -> Result<Vec<(String, String)>, super::ApiError> {
    let resp = s.watch(target, &query(q), false).await?;
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("event");
            (v["type"].as_str().unwrap_or("").into(), v["object"]["metadata"]["name"].as_str().unwrap_or("").into())
        })
        .collect())
}

#[tokio::test]
async fn create_sets_server_metadata_and_refuses_duplicates() {
    let s = server().await;
    let (created, _) = s.create(&pods("default"), pod("web"), None).await.expect("create");
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["metadata"]["namespace"], "default");
    assert_eq!(created["status"]["phase"], "Pending");
    assert_eq!(s.get(&pod_target("web")).await.expect("get"), created);
    let dup = s.create(&pods("default"), pod("web"), None).await.expect_err("duplicate");
    assert_eq!((dup.code, dup.reason), (StatusCode::CONFLICT, "AlreadyExists"));
    let no_ns = s.create(&pods("nope"), pod("web"), None).await.expect_err("missing namespace");
    assert_eq!(no_ns.code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_stale_update_is_a_conflict_and_changes_nothing() {
    let s = server().await;
    let (v1, _) = s.create(&pods("default"), pod("web"), None).await.expect("create");
    let mut edit = v1.clone();
    edit["metadata"]["labels"] = json!({"app": "a"});
    let (v2, _) = s.update(&pod_target("web"), edit.clone(), None).await.expect("update");
    assert!(rv(&v2) > rv(&v1));
    edit["metadata"]["labels"] = json!({"app": "b"});
    let stale = s.update(&pod_target("web"), edit, None).await.expect_err("stale");
    assert_eq!((stale.code, stale.reason), (StatusCode::CONFLICT, "Conflict"));
    assert_eq!(s.get(&pod_target("web")).await.expect("get"), v2);
    // A status written through the main resource is ignored; through /status it is taken.
    let mut with_status = v2.clone();
    with_status["status"] = json!({"phase": "Running"});
    let (v3, _) = s.update(&pod_target("web"), with_status.clone(), None).await.expect("update");
    assert_eq!((v3["status"]["phase"].as_str(), rv(&v3)), (Some("Pending"), rv(&v2)), "a no-op write");
    let status = Target { subresource: Some("status".into()), ..pod_target("web") };
    let (v4, _) = s.update(&status, with_status, None).await.expect("status");
    assert_eq!(v4["status"]["phase"], "Running");
    // A delete with a stale precondition is refused too.
    let del = s
        .delete(&pod_target("web"), &json!({"preconditions": {"resourceVersion": v1["metadata"]["resourceVersion"]}}))
        .await;
    assert_eq!(del.expect_err("stale delete").code, StatusCode::CONFLICT);
}

#[tokio::test]
async fn validation_names_the_field_and_stores_nothing() {
    let s = server().await;
    let mut bad = pod("web");
    bad["spec"]["containers"][0]["command"] = json!([]);
    let err = s.create(&pods("default"), bad, None).await.expect_err("invalid");
    assert_eq!((err.code, err.reason), (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"));
    let cause = &err.details.as_ref().expect("details").causes[0];
    assert_eq!(cause.field, "spec.containers[0].command");
    let mut unknown = pod("web");
    unknown["spec"]["dnsPolicy"] = json!("None");
    let err = s.create(&pods("default"), unknown.clone(), Some("Strict")).await.expect_err("strict");
    assert!(err.message.contains("unknown field \"spec.dnsPolicy\""), "{}", err.message);
    let list = s.list(&pods("default"), &HashMap::new()).await.expect("list");
    assert_eq!(list["items"], json!([]), "nothing stored");
    let (_, warnings) = s.create(&pods("default"), unknown, None).await.expect("warn mode");
    assert_eq!(warnings, ["unknown field \"spec.dnsPolicy\""]);
}

#[tokio::test(start_paused = true)]
async fn a_watch_resumes_from_a_revision_and_a_compacted_one_is_gone() {
    let s = server().await;
    let start = rv(&s.list(&pods("default"), &HashMap::new()).await.expect("list"));
    let (a, _) = s.create(&pods("default"), pod("a"), None).await.expect("create");
    s.create(&pods("other"), pod("elsewhere"), None).await.expect_err("no such namespace");
    let patch = json!({"metadata": {"labels": {"x": "y"}}});
    s.patch(&pod_target("a"), "application/merge-patch+json", patch, None).await.expect("patch");
    s.create(&pods("default"), pod("b"), None).await.expect("create");
    s.delete(&pod_target("a"), &Value::Null).await.expect("delete");
    let all = [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]
        .map(|(k, n)| (k.to_string(), n.to_string()));
    let from_start = start.to_string();
    assert_eq!(watch_events(&s, &pods("default"), &[("resourceVersion", &from_start)]).await.expect("watch"), all);
    let from_a = rv(&a).to_string();
    assert_eq!(watch_events(&s, &pods("default"), &[("resourceVersion", &from_a)]).await.expect("watch"), all[1..]);
    let selected =
        [("resourceVersion", from_start.as_str()), ("labelSelector", "app!=x"), ("fieldSelector", "metadata.name=b")];
    assert_eq!(watch_events(&s, &pods("default"), &selected).await.expect("watch"), all[2..3]);
    // "0": the current objects as ADDED, then changes.
    assert_eq!(
        watch_events(&s, &pods("default"), &[("resourceVersion", "0")]).await.expect("watch"),
        [("ADDED".into(), "b".into())]
    );

    s.store.compact(rv(&a) + 1);
    let gone = watch_events(&s, &pods("default"), &[("resourceVersion", &from_start)]).await.expect_err("compacted");
    assert_eq!((gone.code, gone.reason), (StatusCode::GONE, "Expired"));
    assert!(gone.message.contains("too old resource version"));
}

#[tokio::test]
async fn server_side_apply_is_refused() {
    let s = server().await;
    s.create(&pods("default"), pod("web"), None).await.expect("create");
    let err = s.patch(&pod_target("web"), "application/apply-patch+yaml", json!({}), None).await;
    assert_eq!(err.expect_err("server-side apply").code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[test]
fn paths_tell_objects_from_collections() {
    let ns = Target::parse("", "v1", &["namespaces", "kube-system"]).expect("parse").expect("target");
    assert_eq!((ns.resource.plural, ns.name.as_deref(), ns.namespace), ("namespaces", Some("kube-system"), None));
    let pods = Target::parse("", "v1", &["namespaces", "a", "pods"]).expect("parse").expect("target");
    assert_eq!((pods.resource.plural, pods.name, pods.namespace.as_deref()), ("pods", None, Some("a")));
    let status = Target::parse("", "v1", &["nodes", "n1", "status"]).expect("parse").expect("target");
    assert_eq!(status.subresource.as_deref(), Some("status"));
    let lease = Target::parse("coordination.k8s.io", "v1", &["namespaces", "kube-node-lease", "leases", "n1"]);
    assert_eq!(
        lease.expect("parse").expect("target").resource,
        Resource::find("coordination.k8s.io", "v1", "leases").expect("leases")
    );
    assert!(Target::parse("", "v1", &["pods", "web"]).is_err(), "a pod needs its namespace");
    assert!(Target::parse("", "v1", &["leases"]).is_err(), "leases are not in the core group");
    assert!(Target::parse("", "v1", &[]).expect("parse").is_none(), "the group version's discovery");
}

#[tokio::test]
async fn every_request_needs_the_token() {
    let app = router(server().await);
    let get = |auth: Option<&str>| {
        let mut req = Request::get("/api/v1/namespaces");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.body(axum::body::Body::empty()).expect("request")
    };
    for auth in [None, Some("Bearer wrong"), Some("Basic t0ken"), Some("Bearer t0ken0")] {
        let resp = app.clone().oneshot(get(auth)).await.expect("response");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    let resp = app.clone().oneshot(get(Some("Bearer t0ken"))).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
    let list: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!((list["kind"].as_str(), list["items"].as_array().map(Vec::len)), (Some("NamespaceList"), Some(3)));
}

/// The collection (or, with a name, the object) of `plural` in namespace `default`.
pub(super) fn target(plural: &str, name: Option<&str>) -> Target {
    let res = RESOURCES.iter().find(|r| r.plural == plural).expect("served");
    Target { name: name.map(str::to_string), ..Target::collection(res, Some("default")) }
}

/// A Deployment (or, with `kind` ReplicaSet, a ReplicaSet) of `replicas` pods labelled `app: NAME`.
pub(super) fn workload(kind: &str, name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "srv", "command": ["sleep", "1d"]}]}}}})
}

/// A request through the router with the token: the status and the JSON answer.
pub(super) async fn request(
    s: &Arc<Server<Memory>>,
    method: &str,
    path: &str,
    content_type: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", content_type)
        .body(body.map_or_else(axum::body::Body::empty, |b| axum::body::Body::from(b.to_string())))
        .expect("request");
    let resp = router(Arc::clone(s)).oneshot(req).await.expect("response");
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}
