//! `v1 Status`, the body of every error answer.

use serde::{Deserialize, Serialize};

/// `v1 Status`: the body of every error answer (and of some successes), as Kubernetes sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `v1`.
    pub api_version: String,
    /// `Status`.
    pub kind: String,
    /// `Success` or `Failure`.
    pub status: String,
    /// For people: what went wrong.
    pub message: String,
    /// One CamelCase word for machines: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `Expired`, ...
    pub reason: String,
    /// The object and, for `Invalid`, the fields to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    /// The HTTP status code.
    pub code: u16,
}

/// `details` of a Status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    /// The object's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The resource (`pods`), despite the field's name, as Kubernetes fills it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// One entry per field to blame.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

/// One field to blame in a Status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusCause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, ...
    pub reason: String,
    /// What is wrong with the field.
    pub message: String,
    /// The field as a path: `spec.containers[0].command`.
    pub field: String,
}
