//! The `scale` subresource of Deployments and ReplicaSets (`kubectl scale`, autoscalers): an
//! `autoscaling/v1 Scale` read from the object (`spec.replicas`, `status.replicas`, and `status.selector`, the
//! object's selector as a label query), and written back by changing only the object's `spec.replicas`, with
//! the Scale's `metadata.resourceVersion` (the object's) as a precondition.

use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use testbed_api::objects::{LabelSelector, Scale};

use super::objects::{meta_str, WithWarnings};
use super::patch::PatchType;
use super::{parse_body, with_warnings, ApiError, Server, Target};
use crate::resources::{Kind, Resource};
use crate::store::Store;
use crate::validation::invalid;

/// Whether the resource has a `scale` subresource.
pub(super) fn scalable(res: &Resource) -> bool {
    matches!(res.kind, Kind::Deployment | Kind::ReplicaSet)
}

impl<S: Store> Server<S> {
    /// GET, PUT and PATCH of `.../NAME/scale`.
    pub(super) async fn scale(
        &self,
        method: &Method,
        target: &Target,
        headers: &HeaderMap,
        body: &[u8],
        field_validation: Option<&str>,
    ) -> Result<Response, ApiError> {
        let (obj, warnings) = match *method {
            Method::GET => (self.get(target).await?, Vec::new()),
            Method::PUT => {
                let scale = parse_body(body)?;
                let explicit = !meta_str(&scale, "resourceVersion").is_empty();
                self.write_scale(target, field_validation, explicit, |_| Ok(scale.clone())).await?
            }
            Method::PATCH => {
                let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
                let kind = PatchType::from_content_type(content_type)?;
                let patch = parse_body(body)?;
                let explicit = kind.sets_resource_version(&patch);
                self.write_scale(target, field_validation, explicit, |old| kind.apply(scale_of(old), &patch)).await?
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    format!("the server does not allow this method on the requested resource: {method}"),
                ))
            }
        };
        Ok(with_warnings((StatusCode::OK, axum::Json(scale_of(&obj))).into_response(), &warnings))
    }

    /// Writes the `spec.replicas` of the Scale `make` builds from the current object into the object.
    async fn write_scale(
        &self,
        target: &Target,
        field_validation: Option<&str>,
        explicit_version: bool,
        make: impl Fn(&Value) -> Result<Value, ApiError>,
    ) -> Result<WithWarnings, ApiError> {
        let (res, name) = (target.resource, target.name.as_deref().unwrap_or(""));
        self.update_with(target, field_validation, explicit_version, |old| {
            let scale: Scale = serde_json::from_value(make(old)?).map_err(|e| {
                ApiError::bad_request(format!("Scale in version \"v1\" cannot be handled as a Scale: {e}"))
            })?;
            for (field, given, expected) in
                [("apiVersion", &scale.api_version, "autoscaling/v1"), ("kind", &scale.kind, "Scale")]
            {
                if !given.is_empty() && given != expected {
                    return Err(ApiError::bad_request(format!(
                        "the {field} of a scale must be {expected}, not {given}"
                    )));
                }
            }
            if !scale.metadata.name.is_empty() && scale.metadata.name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    scale.metadata.name
                )));
            }
            // As in Kubernetes, where the field is a plain int32: absent is 0.
            let replicas = scale.spec.replicas.unwrap_or(0);
            if replicas < 0 {
                return Err(ApiError::invalid(
                    res,
                    name,
                    invalid("spec.replicas", "must be greater than or equal to 0"),
                ));
            }
            let mut new = old.clone();
            new["spec"]["replicas"] = json!(replicas);
            if let Some(rv) = scale.metadata.resource_version.filter(|rv| !rv.is_empty()) {
                new["metadata"]["resourceVersion"] = json!(rv);
            }
            Ok(new)
        })
        .await
    }
}

/// The Scale of a Deployment or ReplicaSet. `spec.replicas` unset means 1, the default its controller uses.
pub(super) fn scale_of(obj: &Value) -> Value {
    let selector: LabelSelector =
        obj.pointer("/spec/selector").and_then(|s| serde_json::from_value(s.clone()).ok()).unwrap_or_default();
    let mut metadata = serde_json::Map::new();
    for field in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = obj.pointer(&format!("/metadata/{field}")) {
            metadata.insert(field.into(), v.clone());
        }
    }
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": metadata,
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector_string(&selector),
        },
    })
}

/// A label selector as the label query Kubernetes prints for it (`LabelSelectorAsSelector(...).String()`):
/// requirements sorted by key, set values sorted, `k=v`, `k in (a,b)`, `k notin (a)`, `k`, `!k`.
pub(super) fn selector_string(selector: &LabelSelector) -> String {
    let mut terms: Vec<(String, String)> =
        selector.match_labels.iter().map(|(k, v)| (k.clone(), format!("{k}={v}"))).collect();
    for r in &selector.match_expressions {
        let mut values = r.values.clone();
        values.sort();
        let k = &r.key;
        let term = match r.operator.as_str() {
            "In" => format!("{k} in ({})", values.join(",")),
            "NotIn" => format!("{k} notin ({})", values.join(",")),
            "Exists" => k.clone(),
            _ => format!("!{k}"),
        };
        terms.push((k.clone(), term));
    }
    terms.sort();
    terms.into_iter().map(|(_, t)| t).collect::<Vec<_>>().join(",")
}
