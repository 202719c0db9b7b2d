//! Create, get, update (PUT and JSON merge patch) and delete of one object, with Kubernetes' rules:
//! server-set metadata, `resourceVersion` as the etcd `mod_revision` with compare-and-swap writes, the status
//! subresource, and validation before anything is stored.

use axum::http::StatusCode;
use serde_json::{json, Map, Value};

use super::patch::PatchType;
use super::services;
use super::{ApiError, Server, Target};
use crate::resources::{Kind, Resource};
use crate::store::{KeyValue, Store};
use crate::validation::check;

/// Attempts of a write without a resourceVersion precondition (an unconditional PUT, a merge patch, a delete)
/// that lost a race with another writer: each retry reads the object again, as the Kubernetes API server does.
pub(super) const RETRIES: usize = 5;

/// An object and the `Warning`s for its answer.
pub type WithWarnings = (Value, Vec<String>);

impl<S: Store> Server<S> {
    pub(super) async fn get(&self, target: &Target) -> Result<Value, ApiError> {
        object_from(&self.current(target).await?)
    }

    pub(super) async fn update(
        &self,
        target: &Target,
        obj: Value,
        field_validation: Option<&str>,
    ) -> Result<WithWarnings, ApiError> {
        let explicit = !meta_str(&obj, "resourceVersion").is_empty();
        self.update_with(target, field_validation, explicit, |_| Ok(obj.clone())).await
    }

    /// A PATCH in any of the [`PatchType`]s, applied to the current object (read again on a lost race when the
    /// patch carries no resourceVersion of its own).
    pub(super) async fn patch(
        &self,
        target: &Target,
        content_type: &str,
        patch: Value,
        field_validation: Option<&str>,
    ) -> Result<WithWarnings, ApiError> {
        let kind = PatchType::from_content_type(content_type)?;
        let explicit = kind.sets_resource_version(&patch);
        self.update_with(target, field_validation, explicit, |old| kind.apply(old.clone(), &patch)).await
    }

    pub(super) async fn current(&self, target: &Target) -> Result<KeyValue, ApiError> {
        let (res, name) = (target.resource, target.name.as_deref().unwrap_or(""));
        let key = res.key(target.namespace.as_deref(), name);
        self.store
            .get(&key)
            .await
            .map_err(|e| ApiError::from_store(res, name, e))?
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// Reads the object, builds its new version with `make`, and writes it if the object did not change in
    /// between; retried when it did and the caller gave no resourceVersion of its own.
    pub(super) async fn update_with(
        &self,
        target: &Target,
        field_validation: Option<&str>,
        explicit_version: bool,
        make: impl Fn(&Value) -> Result<Value, ApiError>,
    ) -> Result<WithWarnings, ApiError> {
        let (res, name) = (target.resource, target.name.as_deref().unwrap_or(""));
        for attempt in 0.. {
            let kv = self.current(target).await?;
            let old = object_from(&kv)?;
            let new = make(&old)?;
            match self.replace(target, &kv, old, new, field_validation).await {
                Err(e) if e.code == StatusCode::CONFLICT && !explicit_version && attempt < RETRIES => {}
                other => return other,
            }
        }
        Err(ApiError::conflict(res, name))
    }

    async fn replace(
        &self,
        target: &Target,
        current: &KeyValue,
        old: Value,
        new: Value,
        field_validation: Option<&str>,
    ) -> Result<WithWarnings, ApiError> {
        let (res, name) = (target.resource, target.name.as_deref().unwrap_or(""));
        let mut new = prepare(target, new)?;
        let service = res.kind == Kind::Service && target.subresource.is_none();
        if service {
            super::services::default_service(&mut new);
        }
        if res.kind == Kind::NetworkPolicy {
            super::network_policies::default_network_policy(&mut new);
        }
        let given = meta_str(&new, "resourceVersion");
        if !given.is_empty() {
            let given: i64 = given.parse().map_err(|_| {
                ApiError::bad_request(format!("metadata.resourceVersion: \"{given}\" is not a resource version"))
            })?;
            if given != current.mod_revision && !cfg!(feature = "fault-ignore-resource-version") {
                return Err(ApiError::conflict(res, name));
            }
        }
        let (mut new, warnings) = validated(res, name, new, field_validation)?;
        if res.kind == Kind::Pod && target.subresource.is_none() {
            super::binding::check_pod_update(target, &old, &new)?;
        }
        let taken = match service {
            true => self.take_service_addresses(&mut new, Some(&old)).await?,
            false => Default::default(),
        };
        let mut merged = carry_server_fields(res, &old, new, target.subresource.as_deref());
        let mut unchanged = old.clone();
        metadata(&mut unchanged).remove("resourceVersion");
        if merged == unchanged {
            // A no-op write keeps the resourceVersion, as in Kubernetes: watchers see nothing.
            return Ok((old, warnings));
        }
        let written = self.store.update(&current.key, encode(&merged)?, current.mod_revision).await;
        match (&written, service) {
            (Err(_), _) => self.release_service_addresses(&taken).await,
            (Ok(_), true) => {
                let freed = services::Held::of(&old).minus(&services::Held::of(&merged));
                self.release_service_addresses(&freed).await;
            }
            (Ok(_), false) => {}
        }
        let rev = written.map_err(|e| ApiError::from_store(res, name, e))?;
        set_resource_version(&mut merged, rev);
        Ok((merged, warnings))
    }
}

/// A stored object as served: its JSON with `metadata.resourceVersion` = the key's `mod_revision`.
pub(super) fn object_from(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("stored object {}: {e}", kv.key))
    })?;
    set_resource_version(&mut obj, kv.mod_revision);
    Ok(obj)
}

pub(super) fn set_resource_version(obj: &mut Value, rev: i64) {
    metadata(obj).insert("resourceVersion".into(), json!(rev.to_string()));
}

/// Checks the request's object against the URL (kind, name, namespace) and fills what the URL implies.
pub(super) fn prepare(target: &Target, mut obj: Value) -> Result<Value, ApiError> {
    let res = target.resource;
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    for (field, expected) in [("apiVersion", res.api_version()), ("kind", res.kind_name.to_string())] {
        match obj.get(field).and_then(Value::as_str) {
            Some(given) if given != expected => {
                return Err(ApiError::bad_request(format!(
                    "the {field} in the data ({given}) does not match the expected {field} ({expected})"
                )));
            }
            _ => set(&mut obj, field, json!(expected)),
        }
    }
    let name = meta_str(&obj, "name").to_string();
    if let Some(url_name) = &target.name {
        if name.is_empty() {
            metadata(&mut obj).insert("name".into(), json!(url_name));
        } else if &name != url_name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({url_name})"
            )));
        }
    }
    let ns = meta_str(&obj, "namespace").to_string();
    match (&target.namespace, res.namespaced) {
        (Some(url_ns), true) if ns.is_empty() => {
            metadata(&mut obj).insert("namespace".into(), json!(url_ns));
        }
        (Some(url_ns), true) if &ns != url_ns => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        (None, true) => return Err(ApiError::bad_request("a namespaced object must be created in a namespace")),
        (_, false) => {
            metadata(&mut obj).remove("namespace");
        }
        _ => {}
    }
    Ok(obj)
}

/// Decodes and checks the object; unknown fields fail under `fieldValidation=Strict` (kubectl's default),
/// are dropped silently under `Ignore`, and are dropped with a warning otherwise.
pub(super) fn validated(
    res: &Resource,
    name: &str,
    obj: Value,
    field_validation: Option<&str>,
) -> Result<WithWarnings, ApiError> {
    let checked = check(res.kind, obj).map_err(|e| ApiError::invalid(res, name, e))?;
    let unknown: Vec<String> = checked.unknown_fields.iter().map(|f| format!("unknown field \"{f}\"")).collect();
    match field_validation {
        Some("Strict") if !unknown.is_empty() => {
            Err(ApiError::bad_request(format!("strict decoding error: {}", unknown.join(", "))).on(res, name))
        }
        Some("Ignore") => Ok((checked.object, Vec::new())),
        _ => Ok((checked.object, unknown)),
    }
}

/// What the client cannot change through a write: uid, creation time, the deletion timestamp and grace
/// (only a DELETE sets them, as Kubernetes' `BeforeUpdate` keeps the old ones), generation (bumped when
/// the spec changes) and, through the main resource, the status (through `/status`, only the status
/// changes).
fn carry_server_fields(res: &Resource, old: &Value, new: Value, subresource: Option<&str>) -> Value {
    let mut out = if subresource == Some("status") {
        let mut out = old.clone();
        match new.get("status") {
            Some(status) => set(&mut out, "status", status.clone()),
            None => remove(&mut out, "status"),
        }
        out
    } else {
        let mut out = new;
        if res.has_status {
            match old.get("status") {
                Some(status) => set(&mut out, "status", status.clone()),
                None => remove(&mut out, "status"),
            }
        }
        out
    };
    let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
    let spec_changed = old.get("spec") != out.get("spec");
    let meta = metadata(&mut out);
    for field in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"] {
        match old.pointer(&format!("/metadata/{field}")) {
            Some(v) => meta.insert(field.into(), v.clone()),
            None => meta.remove(field),
        };
    }
    meta.insert("generation".into(), json!(generation + i64::from(spec_changed)));
    meta.remove("resourceVersion");
    out
}

pub(super) fn encode(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let mut obj = obj.clone();
    metadata(&mut obj).remove("resourceVersion");
    serde_json::to_vec(&obj)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))
}

pub(super) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or("")
}

/// `obj.metadata` as a map, created when missing (callers have checked `obj` is an object).
pub(super) fn metadata(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        set(obj, "metadata", json!({}));
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

pub(super) fn set(obj: &mut Value, field: &str, value: Value) {
    if let Value::Object(m) = obj {
        m.insert(field.into(), value);
    }
}

pub(super) fn remove(obj: &mut Value, field: &str) {
    if let Value::Object(m) = obj {
        m.remove(field);
    }
}
