//! `metadata.generateName`: Kubernetes' alphabet, a retry when the generated name is taken, and 422 on
//! `metadata.name` when neither is given; a body in a media type the server does not decode.

use axum::http::StatusCode;
use serde_json::json;

use super::{pod, pods, request, server};

#[tokio::test]
async fn generate_name_completes_the_prefix_and_retries_a_taken_name() {
    let s = server().await;
    let mut obj = pod("");
    obj["metadata"] = json!({"generateName": "web-"});
    let (created, _) = s.create(&pods("default"), obj.clone(), None).await.expect("create");
    let name = created["metadata"]["name"].as_str().expect("name");
    let suffix = name.strip_prefix("web-").expect("the prefix");
    assert!(suffix.len() == 5 && suffix.bytes().all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)), "{name}");
    assert_eq!(created["metadata"]["generateName"], "web-");

    s.create(&pods("default"), pod("web-taken"), None).await.expect("create");
    let mut names = ["web-taken", "web-free"].into_iter();
    let (created, _) = s
        .create_named(&pods("default"), obj.clone(), None, |p| {
            assert_eq!(p, "web-");
            names.next().expect("asked at most twice").to_string()
        })
        .await
        .expect("a second name");
    assert_eq!(created["metadata"]["name"], "web-free");
    let err = s.create_named(&pods("default"), obj, None, |_| "web-taken".into()).await.expect_err("always taken");
    assert_eq!(err.reason, "AlreadyExists");

    let mut long = pod("");
    long["metadata"] = json!({"generateName": "a".repeat(70)});
    let (created, _) = s.create(&pods("default"), long, None).await.expect("a long prefix is cut");
    assert_eq!(created["metadata"]["name"].as_str().map(str::len), Some(63));
}

#[tokio::test]
async fn neither_name_nor_generate_name_is_invalid() {
    let s = server().await;
    let mut obj = pod("");
    obj["metadata"] = json!({});
    let err = s.create(&pods("default"), obj.clone(), None).await.expect_err("no name");
    assert_eq!(
        (err.code, err.details.as_ref().map(|d| d.causes[0].field.as_str())),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("metadata.name"))
    );
    assert!(err.message.contains("name or generateName is required"), "{}", err.message);
    obj["metadata"] = json!({"generateName": "Web-"});
    let err = s.create(&pods("default"), obj, None).await.expect_err("bad prefix");
    assert_eq!(err.details.as_ref().map(|d| d.causes[0].field.as_str()), Some("metadata.generateName"));
}

/// What `kubectl create namespace x` sends (protobuf, from client-go's typed client) is refused with 415 and
/// what to do instead, and nothing is stored; the same object in JSON is created.
#[tokio::test]
async fn a_protobuf_body_is_unsupported_media_type_naming_the_way_around() {
    let s = server().await;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
    let (code, status) =
        request(&s, "POST", "/api/v1/namespaces", "application/vnd.kubernetes.protobuf", Some(ns.clone())).await;
    assert_eq!((code, status["reason"].as_str()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("UnsupportedMediaType")));
    assert!(status["message"].as_str().is_some_and(|m| m.contains("kubectl create -f")), "{status}");
    let (code, _) = request(&s, "GET", "/api/v1/namespaces/x", "", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = request(&s, "POST", "/api/v1/namespaces", "application/json; charset=utf-8", Some(ns)).await;
    assert_eq!(code, StatusCode::CREATED);
}
