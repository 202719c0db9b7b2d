//! Discovery documents (the legacy, unaggregated form every client falls back to: `/api`, `/apis`, a group
//! version's `APIResourceList`), `/version`, and the part of OpenAPI v3 kubectl reads before `create` and
//! `replace`: whether PATCH of the kind takes `fieldValidation`, which makes kubectl leave the validation to
//! the server instead of downloading the full schemas. `kubectl explain` needs those schemas: not served.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::resources::{Resource, RESOURCES};

const VERBS: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];

fn ok(v: Value) -> Option<Response> {
    Some((StatusCode::OK, axum::Json(v)).into_response())
}

/// The API groups (other than the core group), each with its versions.
fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

fn group_json(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv], "preferredVersion": gv})
}

/// Documents outside `/api/VERSION` and `/apis/GROUP/VERSION`.
pub(super) fn serve(path: &str) -> Option<Response> {
    match path.trim_end_matches('/') {
        "/api" => ok(json!({"kind": "APIVersions", "versions": ["v1"],
                            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})),
        "/apis" => ok(json!({"kind": "APIGroupList", "apiVersion": "v1",
                             "groups": groups().iter().map(|(g, v)| group_json(g, v)).collect::<Vec<_>>()})),
        "/version" => ok(json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-testbed",
                                "platform": "linux/amd64"})),
        "/openapi/v3" => {
            let mut paths = serde_json::Map::new();
            for (prefix, _, _) in group_versions() {
                paths.insert(
                    prefix.trim_start_matches('/').to_string(),
                    json!({"serverRelativeURL": format!("/openapi/v3{prefix}")}),
                );
            }
            ok(json!({"paths": paths}))
        }
        p if p.starts_with("/apis/") => {
            let (g, v) = groups().into_iter().find(|(g, _)| p == format!("/apis/{g}"))?;
            let mut doc = group_json(g, v);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            ok(doc)
        }
        p => {
            let gv = p.strip_prefix("/openapi/v3")?;
            let (_, group, version) = group_versions().into_iter().find(|(prefix, _, _)| prefix == gv)?;
            ok(openapi(group, version))
        }
    }
}

/// (`/api/v1` or `/apis/GROUP/VERSION`, group, version) of everything served.
fn group_versions() -> Vec<(String, &'static str, &'static str)> {
    let core = std::iter::once(("/api/v1".to_string(), "", "v1"));
    core.chain(groups().into_iter().map(|(g, v)| (format!("/apis/{g}/{v}"), g, v))).collect()
}

/// `/apis/GROUP` and `/apis/GROUP/VERSION` (`/api/v1` for the core group): the resources served there.
pub(super) fn group_version(group: &str, version: &str) -> Option<Response> {
    let resources: Vec<&Resource> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    if resources.is_empty() {
        return None;
    }
    let gv = resources[0].api_version();
    let mut list = Vec::new();
    for r in resources {
        list.push(json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                         "kind": r.kind_name, "verbs": VERBS, "shortNames": r.short_names}));
        if r.has_status {
            list.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                             "kind": r.kind_name, "verbs": ["get", "patch", "update"]}));
        }
        if super::scale::scalable(r) {
            list.push(json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced,
                             "group": "autoscaling", "version": "v1", "kind": "Scale",
                             "verbs": ["get", "patch", "update"]}));
        }
        if r.kind == crate::resources::Kind::Pod {
            list.push(json!({"name": "pods/binding", "singularName": "", "namespaced": true, "kind": "Binding",
                             "verbs": ["create"]}));
        }
    }
    ok(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}))
}

/// An OpenAPI v3 document with one PATCH operation per kind, tagged with its group-version-kind and
/// declaring the `fieldValidation` parameter: all kubectl's field-validation probe looks for.
fn openapi(group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        let base = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
        let path = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{base}/{}/{{name}}", r.plural)
        };
        let op = json!({
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": r.kind_name},
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(path, json!({"patch": op}));
    }
    json!({"openapi": "3.0.0", "info": {"title": "testbed control plane", "version": version}, "paths": paths})
}
