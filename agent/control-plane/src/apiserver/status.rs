//! Error answers as Kubernetes `Status` objects: kubectl and client-go read `reason` and `code` from them
//! (`Error from server (Conflict): ...`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use testbed_api::objects::{Status, StatusCause, StatusDetails};

use crate::resources::Resource;
use crate::store::StoreError;
use crate::validation::ValidationError;

/// An error answer: HTTP code, Kubernetes reason and message, and the field to blame when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub code: StatusCode,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`, `Expired`, ...
    pub reason: &'static str,
    /// For people.
    pub message: String,
    /// Object name and resource, and the fields to blame.
    pub details: Option<StatusDetails>,
}

impl ApiError {
    /// An error without details.
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 404 for a missing object, worded as Kubernetes: `pods "web" not found`.
    pub fn not_found(res: &Resource, name: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", res.plural)).on(res, name)
    }

    /// 409 for a stale resourceVersion (or precondition), worded as Kubernetes so clients recognize it.
    pub fn conflict(res: &Resource, name: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your \
             changes to the latest version and try again",
            res.plural
        );
        Self::new(StatusCode::CONFLICT, "Conflict", message).on(res, name)
    }

    /// 410 Expired: the revision a watch asked to resume from was compacted.
    pub fn expired(revision: i64) -> Self {
        Self::new(StatusCode::GONE, "Expired", format!("too old resource version: {revision}"))
    }

    /// A validation failure: 422 Invalid with the field as a cause, or 400 for undecodable JSON.
    pub fn invalid(res: &Resource, name: &str, err: ValidationError) -> Self {
        match err {
            ValidationError::Malformed(m) => Self::bad_request(format!(
                "{kind} in version \"{v}\" cannot be handled as a {kind}: {m}",
                kind = res.kind_name,
                v = res.version
            )),
            ValidationError::Invalid { field, message } => {
                let msg = format!("{} \"{name}\" is invalid: {field}: {message}", res.kind_name);
                let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", msg).on(res, name);
                if let Some(d) = e.details.as_mut() {
                    d.causes.push(StatusCause { reason: "FieldValueInvalid".into(), message, field });
                }
                e
            }
        }
    }

    /// Fills `details` with the object this error is about.
    pub fn on(mut self, res: &Resource, name: &str) -> Self {
        let d = self.details.get_or_insert_with(StatusDetails::default);
        d.name = name.to_string();
        d.kind = res.plural.to_string();
        self
    }

    /// The error as the `Status` object sent in the body (and in a watch's ERROR event).
    pub fn status(&self) -> Status {
        Status {
            api_version: "v1".into(),
            kind: "Status".into(),
            status: "Failure".into(),
            message: self.message.clone(),
            reason: self.reason.into(),
            details: self.details.clone(),
            code: self.code.as_u16(),
        }
    }

    /// A store failure on object `name`.
    pub fn from_store(res: &Resource, name: &str, err: StoreError) -> Self {
        match err {
            StoreError::NotFound(_) => Self::not_found(res, name),
            StoreError::Conflict { .. } => Self::conflict(res, name),
            StoreError::AlreadyExists(_) => {
                Self::new(StatusCode::CONFLICT, "AlreadyExists", format!("{} \"{name}\" already exists", res.plural))
                    .on(res, name)
            }
            StoreError::Compacted(rev) => Self::expired(rev),
            StoreError::Backend(m) => {
                tracing::warn!(error = %m, "store");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", format!("storage: {m}"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code, axum::Json(self.status())).into_response()
    }
}
