//! The patch formats of PATCH requests, chosen by `Content-Type` as in Kubernetes: JSON merge patch
//! (RFC 7386, `kubectl patch --type=merge`), JSON patch (RFC 6902, `--type=json`, `kubectl rollout undo`) and
//! strategic merge patch (`kubectl patch`'s default, `rollout pause/resume/restart`, `apply`, `edit`).
//! Server-side apply (`application/apply-patch+yaml`) needs managed fields: refused with 415.

mod json;
mod strategic;

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::ApiError;

/// A PATCH body's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

impl PatchType {
    /// The format a `Content-Type` names; 415 for anything else.
    pub(super) fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            media => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format ({media}): accepted are \
                     application/merge-patch+json, application/json-patch+json and \
                     application/strategic-merge-patch+json (server-side apply is not served)"
                ),
            )),
        }
    }

    /// `patch` applied to `doc`.
    pub(super) fn apply(self, doc: Value, patch: &Value) -> Result<Value, ApiError> {
        match self {
            Self::Merge => Ok(merge_patch(doc, patch)),
            Self::Json => json::apply(doc, patch),
            Self::Strategic => strategic::apply(doc, patch),
        }
    }

    /// Whether the patch itself names a `metadata.resourceVersion`: then it is a precondition, and a write
    /// that lost a race is not retried with a fresh read.
    pub(super) fn sets_resource_version(self, patch: &Value) -> bool {
        match self {
            Self::Merge | Self::Strategic => {
                patch.pointer("/metadata/resourceVersion").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
            }
            Self::Json => patch.as_array().is_some_and(|ops| {
                ops.iter().any(|op| op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion"))
            }),
        }
    }
}

/// RFC 7386: objects merge key by key, `null` deletes, anything else replaces.
pub(super) fn merge_patch(mut target: Value, patch: &Value) -> Value {
    let Value::Object(fields) = patch else { return patch.clone() };
    if !target.is_object() {
        target = Value::Object(Map::new());
    }
    if let Value::Object(t) = &mut target {
        for (k, v) in fields {
            if v.is_null() {
                t.remove(k);
            } else {
                let merged = merge_patch(t.remove(k).unwrap_or(Value::Null), v);
                t.insert(k.clone(), merged);
            }
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::PatchType;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        let patch = json!({"a": "z", "c": {"f": null}, "l": [3]});
        assert_eq!(super::merge_patch(doc, &patch), json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn content_types() {
        let ct = PatchType::from_content_type;
        assert_eq!(ct("application/strategic-merge-patch+json").expect("smp"), PatchType::Strategic);
        assert_eq!(ct("application/json-patch+json; charset=utf-8").expect("json"), PatchType::Json);
        assert_eq!(ct("application/apply-patch+yaml").expect_err("apply").code.as_u16(), 415);
    }
}
