//! The columns kubectl prints for each kind, and each object's cells: Kubernetes' printers
//! (pkg/printers/internalversion), kept once for both sides. The API server answers a request that accepts
//! `as=Table` with a `meta.k8s.io/v1 Table` of these (so the real kubectl prints its usual tables), and
//! `testbed get` prints the same rows. Cells are computed from the object's JSON, so any version of an
//! object (and one that does not decode) still prints.

use serde_json::Value;

use crate::resources::Kind;

mod rows;

/// One column: kubectl shows those of priority 0, and the others too under `-o wide`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// As Kubernetes' Table names it (`Ready`, `Cluster-IP`); kubectl prints it upper-cased.
    pub name: &'static str,
    /// The Table's column type: `string`, `integer` or `date`.
    pub type_: &'static str,
    pub priority: u8,
    pub description: &'static str,
}

const fn col(name: &'static str, description: &'static str) -> Column {
    Column { name, type_: "string", priority: 0, description }
}

const fn wide(name: &'static str, description: &'static str) -> Column {
    Column { name, type_: "string", priority: 1, description }
}

const NAME: Column = Column {
    name: "Name",
    type_: "string",
    priority: 0,
    description: "Name must be unique within a namespace; it is the object's key.",
};
const AGE: Column = Column {
    name: "Age",
    type_: "date",
    priority: 0,
    description: "CreationTimestamp: when the server created the object.",
};

/// The `-o wide` columns of a ReplicaSet's or Deployment's pod template.
const TEMPLATE_COLUMNS: [Column; 3] = [
    wide("Containers", "The pod template's container names."),
    wide("Images", "The pod template's images."),
    wide("Selector", "The label selector."),
];

/// `kind`'s columns, in order (NAME first, except for Events, which kubectl lists by when they were seen).
pub fn columns(kind: Kind) -> Vec<Column> {
    match kind {
        Kind::Namespace => vec![NAME, col("Status", "The namespace's phase."), AGE],
        Kind::Node => vec![
            NAME,
            col("Status", "Whether the node is Ready."),
            col("Roles", "The node's node-role.kubernetes.io/ labels."),
            AGE,
            col("Version", "The kubelet's version."),
            wide("Internal-IP", "The node's InternalIP address."),
            wide("Pod-CIDR", "The node's pod subnet."),
            wide("Kernel-Version", "The node's kernel version."),
        ],
        Kind::Pod => vec![
            NAME,
            col("Ready", "Ready containers of all containers."),
            col("Status", "The pod's phase, or the reason it is not running."),
            Column { type_: "integer", ..col("Restarts", "Container restarts, summed.") },
            AGE,
            wide("IP", "The pod's address."),
            wide("Node", "The node the pod is bound to."),
        ],
        Kind::Lease => vec![NAME, col("Holder", "The lease's holder identity."), AGE],
        Kind::Event => vec![
            Column { name: "Last Seen", type_: "string", priority: 0, description: "When the event last happened." },
            col("Type", "Normal or Warning."),
            col("Reason", "Why the event happened, in a word."),
            col("Object", "The object the event is about."),
            col("Message", "What happened."),
        ],
        Kind::ReplicaSet => [
            NAME,
            Column { type_: "integer", ..col("Desired", "spec.replicas.") },
            Column { type_: "integer", ..col("Current", "status.replicas.") },
            Column { type_: "integer", ..col("Ready", "status.readyReplicas.") },
            AGE,
        ]
        .into_iter()
        .chain(TEMPLATE_COLUMNS)
        .collect(),
        Kind::Deployment => [
            NAME,
            col("Ready", "Ready replicas of those wanted."),
            Column { type_: "integer", ..col("Up-to-date", "Replicas of the current template.") },
            Column { type_: "integer", ..col("Available", "Replicas available for minReadySeconds.") },
            AGE,
        ]
        .into_iter()
        .chain(TEMPLATE_COLUMNS)
        .collect(),
        Kind::Service => vec![
            NAME,
            col("Type", "ClusterIP or NodePort."),
            col("Cluster-IP", "The Service's virtual address."),
            col("External-IP", "None: testbed serves no load balancers."),
            col("Port(s)", "port[:nodePort]/protocol of each port."),
            AGE,
            wide("Selector", "The pods the Service picks."),
        ],
        Kind::NetworkPolicy => vec![NAME, col("Pod-Selector", "The pods the policy applies to."), AGE],
        Kind::EndpointSlice => vec![
            NAME,
            col("AddressType", "IPv4."),
            col("Ports", "The slice's ports."),
            col("Endpoints", "The first endpoints' addresses."),
            AGE,
        ],
    }
}

/// One cell per column of `kind`, for the object `obj`, with ages measured to `now` (seconds since the
/// epoch).
pub fn cells(kind: Kind, obj: &Value, now: f64) -> Vec<String> {
    let age = age(obj.pointer("/metadata/creationTimestamp").and_then(Value::as_str), now);
    let name = || text(obj, "/metadata/name");
    let mut cells = if kind == Kind::Event { vec![] } else { vec![name()] };
    cells.extend(match kind {
        Kind::Namespace => vec![or(text(obj, "/status/phase"), "Active"), age],
        Kind::Node => rows::node(obj, age),
        Kind::Pod => rows::pod(obj, age),
        Kind::Lease => vec![text(obj, "/spec/holderIdentity"), age],
        Kind::Event => rows::event(obj, now),
        Kind::ReplicaSet => rows::replica_set(obj, age),
        Kind::Deployment => rows::deployment(obj, age),
        Kind::Service => rows::service(obj, age),
        Kind::EndpointSlice => rows::endpoint_slice(obj, age),
        Kind::NetworkPolicy => vec![format_selector(obj.pointer("/spec/podSelector").unwrap_or(&Value::Null)), age],
    });
    cells
}

/// kubectl's short age (`45s`, `3m20s`, `17m`, `5h3m`, `20h`, `3d4h`, `12d`) of an RFC 3339 time.
pub fn age(created: Option<&str>, now: f64) -> String {
    let Some(created) = created.and_then(crate::meta::parse_rfc3339) else { return "<unknown>".into() };
    let secs = ((now - created) as i64).max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{m}m{}s", s % 60),
        s if s < 3 * 3600 => format!("{m}m"),
        s if s < 8 * 3600 => format!("{h}h{}m", m % 60),
        s if s < 2 * 86400 => format!("{h}h"),
        s if s < 8 * 86400 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

/// A `meta.k8s.io/v1 Table` of `objects` of `kind`, as the API server answers `Accept: ...;as=Table`: the
/// column definitions (kubectl shows priority 0, and the rest under `-o wide`) and a row per object with
/// its metadata (kubectl's NAMESPACE column under `-A` comes from there).
pub fn table(kind: Kind, objects: &[Value], resource_version: Option<&str>, now: f64) -> Value {
    let definitions: Vec<Value> = columns(kind)
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "type": c.type_,
                "format": if c.name == "Name" { "name" } else { "" },
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            serde_json::json!({
                "cells": cells(kind, obj, now),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj.get("metadata").cloned().unwrap_or_default(),
                },
            })
        })
        .collect();
    let mut metadata = serde_json::Map::new();
    if let Some(rv) = resource_version {
        metadata.insert("resourceVersion".into(), rv.into());
    }
    serde_json::json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// kubectl's `metav1.FormatLabelSelector` of a LabelSelector's JSON: `app=web,tier in (a,b),!canary`,
/// `<none>` when it selects everything.
pub fn format_selector(selector: &Value) -> String {
    let labels = selector.get("matchLabels").and_then(Value::as_object);
    let mut parts: Vec<String> =
        labels.into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
    for r in selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let key = text(r, "/key");
        let values: Vec<&str> =
            r.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let values = values.join(",");
        parts.push(match text(r, "/operator").as_str() {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "Exists" => key,
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other} ({values})"),
        });
    }
    or_none(parts.join(","))
}

/// Whether a request's `Accept` header asks for a Table (kubectl's `get` sends
/// `application/json;as=Table;v=v1;g=meta.k8s.io,application/json`).
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io") && params.contains(&"v=v1")
    })
}

/// The string at `pointer`, or "".
fn text(obj: &Value, pointer: &str) -> String {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn or(s: String, default: &str) -> String {
    if s.is_empty() {
        default.to_string()
    } else {
        s
    }
}

fn or_none(s: String) -> String {
    or(s, "<none>")
}

#[cfg(test)]
mod tests;
