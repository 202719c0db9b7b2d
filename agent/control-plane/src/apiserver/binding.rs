//! The `pods/binding` subresource and the rule it exists for: a pod's spec cannot be changed by an update
//! (Kubernetes allows a container image and little else), so the only way to give a pod its node is to
//! POST a `v1 Binding`, which sets `spec.nodeName` once and marks the pod `PodScheduled`. A pod that is
//! already bound answers 409 Conflict, worded as the Kubernetes API server words it.

use axum::http::StatusCode;
use serde_json::{json, Value};
use testbed_api::objects::Binding;

use super::objects::{meta_str, object_from};
use super::{ApiError, Server, Target};
use crate::meta::now_rfc3339;
use crate::store::{Store, StoreError};
use crate::validation::ValidationError;

/// Attempts of a binding that lost a race with another writer of the pod (a status write).
const RETRIES: usize = 5;

/// What a pod update may change in the spec; the rest of the message Kubernetes gives.
const IMMUTABLE: &str = "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, \
`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing \
tolerations), `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

impl<S: Store> Server<S> {
    /// `POST .../pods/NAME/binding`: binds the pod to the Binding's target node; answers a Success Status.
    pub(super) async fn bind(&self, target: &Target, body: Value) -> Result<Value, ApiError> {
        let (res, name) = (target.resource, target.name.as_deref().unwrap_or(""));
        let binding: Binding = serde_json::from_value(body).map_err(|e| {
            ApiError::bad_request(format!("Binding in version \"v1\" cannot be handled as a Binding: {e}"))
        })?;
        if binding.metadata.name != name {
            return Err(ApiError::bad_request("name in URL does not match name in Binding object"));
        }
        if binding.metadata.namespace.as_ref().is_some_and(|ns| Some(ns) != target.namespace.as_ref()) {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let invalid = |field: &str, message: String| {
            let err = ValidationError::Invalid { field: field.into(), message };
            let mut e = ApiError::invalid(res, name, err);
            e.message = e.message.replacen("Pod ", "Binding ", 1);
            e
        };
        let node = binding.target.name.as_deref().unwrap_or("");
        if !matches!(binding.target.kind.as_deref(), None | Some("" | "Node")) {
            let kind = binding.target.kind.as_deref().unwrap_or("");
            return Err(invalid("target.kind", format!("Invalid value: \"{kind}\": must be empty or 'Node'")));
        }
        if node.is_empty() {
            return Err(invalid("target.name", "Required value".into()));
        }
        let key = res.key(target.namespace.as_deref(), name);
        for _ in 0..RETRIES {
            let kv = self
                .store
                .get(&key)
                .await
                .map_err(|e| ApiError::from_store(res, name, e))?
                .ok_or_else(|| ApiError::not_found(res, name))?;
            let mut pod = object_from(&kv)?;
            let bound = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
            if !bound.is_empty() {
                let message = format!(
                    "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{bound}\""
                );
                let mut e = ApiError::new(StatusCode::CONFLICT, "Conflict", message).on(res, name);
                if let Some(d) = e.details.as_mut() {
                    d.kind = "pods/binding".into();
                }
                return Err(e);
            }
            assign(&mut pod, node);
            let value = serde_json::to_vec(&pod)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))?;
            match self.store.update(&kv.key, value, kv.mod_revision).await {
                Ok(_) => {
                    return Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                     "code": 201}))
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(ApiError::from_store(res, name, e)),
            }
        }
        Err(ApiError::conflict(res, name))
    }
}

/// Sets the node, bumps the generation (the spec changed) and records `PodScheduled: True`, as the
/// Kubernetes API server does in the same write.
fn assign(pod: &mut Value, node: &str) {
    let generation = pod.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
    pod["metadata"]["generation"] = json!(generation + 1);
    if let Some(meta) = pod["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    pod["spec"]["nodeName"] = json!(node);
    if !pod.get("status").is_some_and(Value::is_object) {
        pod["status"] = json!({"phase": "Pending"});
    }
    let mut conditions: Vec<Value> = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
    conditions.retain(|c| c["type"] != "PodScheduled");
    conditions.insert(0, json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}));
    pod["status"]["conditions"] = json!(conditions);
}

/// Refuses an update of pod `old` to `new` (both decoded and checked) that changes the spec beyond the
/// containers' images: `spec.nodeName` in particular changes only through a Binding, once.
pub(super) fn check_pod_update(target: &Target, old: &Value, new: &Value) -> Result<(), ApiError> {
    let without_images = |obj: &Value| {
        let mut spec = obj.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
            containers.iter_mut().filter_map(Value::as_object_mut).for_each(|c| drop(c.remove("image")));
        }
        spec
    };
    if without_images(old) == without_images(new) {
        return Ok(());
    }
    let err = ValidationError::Invalid { field: "spec".into(), message: IMMUTABLE.into() };
    Err(ApiError::invalid(target.resource, meta_str(new, "name"), err))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn assign_sets_the_node_and_one_pod_scheduled_condition() {
        let mut pod = json!({"metadata": {"name": "web", "generation": 1, "resourceVersion": "7"},
            "spec": {"containers": []},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                            "reason": "Unschedulable"}]}});
        super::assign(&mut pod, "n2");
        assert_eq!(pod["spec"]["nodeName"], "n2");
        assert_eq!(pod["metadata"]["generation"], 2);
        assert_eq!(pod["metadata"].get("resourceVersion"), None, "never stored");
        let conditions = pod["status"]["conditions"].as_array().expect("conditions");
        assert_eq!(conditions.len(), 1);
        assert_eq!((&conditions[0]["status"], conditions[0].get("reason")), (&json!("True"), None));
    }
}
