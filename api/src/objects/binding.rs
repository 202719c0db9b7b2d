//! `v1 Binding`: what the scheduler posts to a pod's `binding` subresource to place it on a node.

use serde::{Deserialize, Serialize};

use super::{ObjectMeta, ObjectReference};

/// `v1 Binding`: binds the pod named in `metadata.name` to the `target` node. Posted to
/// `/api/v1/namespaces/NS/pods/NAME/binding`; the API server sets the pod's `spec.nodeName` once, as the
/// Kubernetes API server does (a pod already bound is a 409 Conflict).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    /// `v1`.
    #[serde(default)]
    pub api_version: String,
    /// `Binding`.
    #[serde(default)]
    pub kind: String,
    /// The pod's name (and namespace).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The node: `kind` is `Node` (or left out), `name` the node's name.
    #[serde(default)]
    pub target: ObjectReference,
}

impl Binding {
    /// The binding of pod `name` in `namespace` to `node`.
    pub fn to_node(namespace: &str, name: &str, node: &str) -> Self {
        Self {
            api_version: "v1".into(),
            kind: "Binding".into(),
            metadata: ObjectMeta { name: name.into(), namespace: Some(namespace.into()), ..ObjectMeta::default() },
            target: ObjectReference {
                kind: Some("Node".into()),
                name: Some(node.into()),
                ..ObjectReference::default()
            },
        }
    }
}
