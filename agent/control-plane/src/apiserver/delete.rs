//! DELETE of one object with Kubernetes' `DeleteOptions`: `preconditions` (uid, resourceVersion) and what
//! becomes of the object's dependents (objects whose `metadata.ownerReferences` name it by uid).
//! `propagationPolicy: Orphan` (or the older `orphanDependents: true`, kubectl's `--cascade=orphan`) first
//! removes the owner from its dependents' references, so they outlive it. `Background` (the default) and
//! `Foreground` delete the owner at once and leave the dependents to the garbage collector. Foreground
//! therefore behaves as Background here: the owner does not wait, with a `deletionTimestamp` and the
//! `foregroundDeletion` finalizer, until its blocking dependents are gone. Pods are deleted gracefully
//! ([`super::graceful`]).

use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::graceful::{pod_deletion_now, PodDeletion};
use super::objects::{encode, meta_str, object_from, set_resource_version, RETRIES};
use super::{ApiError, Server, Target};
use crate::resources::{Kind, RESOURCES};
use crate::store::{Store, StoreError};
use crate::validation::invalid;

/// What the dependents of a deleted object become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Propagation {
    Orphan,
    Background,
    Foreground,
}

/// The request's `DeleteOptions`: the body (kubectl sends one) with `propagationPolicy`, `orphanDependents`
/// and `gracePeriodSeconds` also taken from the query, as the Kubernetes API server takes them.
pub(super) fn delete_options(body: &[u8], query: &HashMap<String, String>) -> Result<Value, ApiError> {
    let mut options = if body.is_empty() { json!({}) } else { super::parse_body(body)? };
    if !options.is_object() {
        return Err(ApiError::bad_request("DeleteOptions must be a JSON object"));
    }
    if let Some(p) = query.get("propagationPolicy") {
        options["propagationPolicy"] = json!(p);
    }
    if let Some(o) = query.get("orphanDependents") {
        options["orphanDependents"] = json!(o == "true");
    }
    if let Some(g) = query.get("gracePeriodSeconds") {
        let g: i64 =
            g.parse().map_err(|_| ApiError::bad_request(format!("gracePeriodSeconds: \"{g}\" is not an integer")))?;
        options["gracePeriodSeconds"] = json!(g);
    }
    Ok(options)
}

impl<S: Store> Server<S> {
    pub(super) async fn delete(&self, target: &Target, options: &Value) -> Result<Value, ApiError> {
        let (res, name) = (target.resource, target.name.as_deref().unwrap_or(""));
        let propagation = propagation(options).map_err(|e| ApiError::invalid(res, name, e))?;
        let precondition = |f: &str| options.pointer(&format!("/preconditions/{f}")).and_then(Value::as_str);
        for attempt in 0.. {
            let kv = self.current(target).await?;
            let obj = object_from(&kv)?;
            for (field, actual) in
                [("resourceVersion", meta_str(&obj, "resourceVersion")), ("uid", meta_str(&obj, "uid"))]
            {
                if let Some(wanted) = precondition(field) {
                    if wanted != actual {
                        return Err(ApiError::new(
                            StatusCode::CONFLICT,
                            "Conflict",
                            format!("Precondition failed: {field} in precondition: {wanted}, {field} in object meta: {actual}"),
                        )
                        .on(res, name));
                    }
                }
            }
            if res.kind == Kind::Namespace {
                self.check_namespace_empty(name).await?;
            }
            if propagation == Propagation::Orphan {
                self.orphan_dependents(target.namespace.as_deref(), meta_str(&obj, "uid")).await?;
            }
            if res.kind == Kind::Pod {
                match pod_deletion_now(&obj, options) {
                    PodDeletion::Now => {}
                    PodDeletion::Pending => return Ok(obj),
                    PodDeletion::Mark(mut marked) => {
                        match self.store.update(&kv.key, encode(&marked)?, kv.mod_revision).await {
                            Ok(rev) => {
                                set_resource_version(&mut marked, rev);
                                return Ok(marked);
                            }
                            Err(StoreError::Conflict { .. })
                                if precondition("resourceVersion").is_none() && attempt < RETRIES =>
                            {
                                continue
                            }
                            Err(e) => return Err(ApiError::from_store(res, name, e)),
                        }
                    }
                }
            }
            match self.store.delete(&kv.key, kv.mod_revision).await {
                Ok(_) => {
                    if res.kind == Kind::Service {
                        self.release_service_addresses(&super::services::Held::of(&obj)).await;
                    }
                    return Ok(obj);
                }
                Err(StoreError::Conflict { .. }) if precondition("resourceVersion").is_none() && attempt < RETRIES => {}
                Err(e) => return Err(ApiError::from_store(res, name, e)),
            }
        }
        Err(ApiError::conflict(res, name))
    }

    /// Removes the owner `uid` from the `ownerReferences` of every object in `namespace` (every namespace
    /// for a cluster-scoped owner).
    async fn orphan_dependents(&self, namespace: Option<&str>, uid: &str) -> Result<(), ApiError> {
        let owned_by = |obj: &Value| {
            obj.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| refs.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid)))
        };
        for res in RESOURCES.iter().filter(|r| r.namespaced) {
            let (kvs, _) =
                self.store.list(&res.prefix(namespace)).await.map_err(|e| ApiError::from_store(res, "", e))?;
            for kv in kvs {
                let obj = object_from(&kv)?;
                if !owned_by(&obj) {
                    continue;
                }
                let dependent = Target {
                    resource: res,
                    namespace: Some(meta_str(&obj, "namespace").to_string()),
                    name: Some(meta_str(&obj, "name").to_string()),
                    subresource: None,
                };
                let without_owner = |old: &Value| {
                    let mut new = old.clone();
                    if let Some(Value::Array(refs)) = new.pointer_mut("/metadata/ownerReferences") {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
                    }
                    Ok(new)
                };
                match self.update_with(&dependent, Some("Ignore"), false, without_owner).await {
                    Ok(_) => {}
                    Err(e) if e.code == StatusCode::NOT_FOUND => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Namespaces are deleted only once empty of every namespaced kind: deleting what is in them
    /// (Kubernetes' namespace controller) is not served, and leaving orphans behind would be worse than
    /// refusing.
    async fn check_namespace_empty(&self, ns: &str) -> Result<(), ApiError> {
        for res in RESOURCES.iter().filter(|r| r.namespaced) {
            let (items, _) =
                self.store.list(&res.prefix(Some(ns))).await.map_err(|e| ApiError::from_store(res, ns, e))?;
            if !items.is_empty() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("namespace \"{ns}\" still holds {} {}: delete them first", items.len(), res.plural),
                )
                .on(&RESOURCES[0], ns));
            }
        }
        Ok(())
    }
}

fn propagation(options: &Value) -> Result<Propagation, crate::validation::ValidationError> {
    let orphan = options.get("orphanDependents").and_then(Value::as_bool);
    match (options.get("propagationPolicy").and_then(Value::as_str), orphan) {
        (Some(_), Some(_)) => {
            Err(invalid("orphanDependents", "Invalid value: orphanDependents and propagationPolicy cannot both be set"))
        }
        (Some("Orphan"), None) | (None, Some(true)) => Ok(Propagation::Orphan),
        (Some("Background"), None) | (None, Some(false) | None) => Ok(Propagation::Background),
        (Some("Foreground"), None) => Ok(Propagation::Foreground),
        (Some(other), None) => Err(invalid(
            "propagationPolicy",
            format!("Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""),
        )),
    }
}
