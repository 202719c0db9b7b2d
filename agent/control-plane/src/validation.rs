//! Decoding and checking an object before anything is stored: the JSON must fit the kind's schema (the typed
//! objects of `testbed_api::objects`), fields outside it are reported by path (the server refuses them under
//! strict field validation), and the values must pass the kind's checks, with the same code the CLI and the
//! agent run for pods (`testbed_api::validate::validate_pod`). Every error names the field.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use testbed_api::objects::{Lease, Namespace, Node, Pod};
use testbed_api::validate::{is_dns_label, validate_pod};

use crate::resources::Kind;

/// Why an object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The JSON does not fit the schema (a wrong type, a bad enum value): HTTP 400.
    #[error("{0}")]
    Malformed(String),
    /// A field value is not allowed: HTTP 422 naming the field.
    #[error("{field}: {message}")]
    Invalid {
        /// The field as a path: `spec.containers[0].command`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError::Invalid { field: field.into(), message: message.into() }
}

/// A decoded, checked object: the normalized JSON to store and the paths of fields the schema does not have.
#[derive(Debug)]
pub struct Checked {
    /// The object as the typed schema serializes it (unknown fields dropped).
    pub object: Value,
    /// Fields outside the schema, as paths (`spec.containers[0].ports`).
    pub unknown_fields: Vec<String>,
}

/// Decodes `object` as `kind`, reports the fields outside its schema, and checks its values.
pub fn check(kind: Kind, object: Value) -> Result<Checked, ValidationError> {
    match kind {
        Kind::Namespace => typed::<Namespace>(object, |ns| name("metadata.name", &ns.metadata.name)),
        Kind::Node => typed(object, check_node),
        Kind::Pod => typed(object, check_pod),
        Kind::Lease => typed(object, check_lease),
    }
}

fn typed<T: DeserializeOwned + Serialize>(
    object: Value,
    rules: impl FnOnce(&T) -> Result<(), ValidationError>,
) -> Result<Checked, ValidationError> {
    let mut unknown_fields = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown_fields.push(field_path(&path));
    let de = serde_ignored::Deserializer::new(object, &mut record);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ValidationError::Malformed(format!("{path}: {}", e.into_inner()))
    })?;
    rules(&value)?;
    let object = serde_json::to_value(&value).map_err(|e| ValidationError::Malformed(e.to_string()))?;
    Ok(Checked { object, unknown_fields })
}

/// serde_ignored's path in Kubernetes' notation: `spec.containers[0].ports`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let parent = field_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

fn name(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(invalid(field, "Required value: name is required"));
    }
    if !is_dns_label(value, 63) {
        return Err(invalid(
            field,
            format!("Invalid value: \"{value}\": must be a DNS label (a-z, 0-9, '-', at most 63)"),
        ));
    }
    Ok(())
}

fn check_pod(pod: &Pod) -> Result<(), ValidationError> {
    name("metadata.name", &pod.metadata.name)?;
    // The agent's own checks, with their field paths moved under the Kubernetes object's layout.
    validate_pod(&pod.to_agent_spec()).map_err(|e| {
        let field = match e.field.as_deref() {
            Some("name") | None => "metadata.name".to_string(),
            Some(f) => format!("spec.{f}"),
        };
        invalid(field, e.message)
    })?;
    for (i, c) in pod.spec.containers.iter().enumerate() {
        for (j, env) in c.env.iter().enumerate() {
            if env.name.is_empty() || env.name.contains('=') {
                return Err(invalid(
                    format!("spec.containers[{i}].env[{j}].name"),
                    "must be a non-empty name without '='",
                ));
            }
        }
    }
    if let Some(node) = &pod.spec.node_name {
        name("spec.nodeName", node)?;
    }
    if matches!(pod.spec.termination_grace_period_seconds, Some(s) if s < 0) {
        return Err(invalid("spec.terminationGracePeriodSeconds", "must be greater than or equal to 0"));
    }
    Ok(())
}

fn check_node(node: &Node) -> Result<(), ValidationError> {
    name("metadata.name", &node.metadata.name)?;
    let cidr = |field: String, s: &str| {
        s.parse::<ipnet::IpNet>().map(|_| ()).map_err(|_| invalid(field, format!("Invalid value: \"{s}\": not a CIDR")))
    };
    if let Some(c) = &node.spec.pod_cidr {
        cidr("spec.podCIDR".into(), c)?;
    }
    for (i, c) in node.spec.pod_cidrs.iter().enumerate() {
        cidr(format!("spec.podCIDRs[{i}]"), c)?;
    }
    if let (Some(one), Some(first)) = (&node.spec.pod_cidr, node.spec.pod_cidrs.first()) {
        if one != first {
            return Err(invalid("spec.podCIDRs[0]", format!("must match spec.podCIDR {one}")));
        }
    }
    Ok(())
}

fn check_lease(lease: &Lease) -> Result<(), ValidationError> {
    name("metadata.name", &lease.metadata.name)?;
    if matches!(lease.spec.lease_duration_seconds, Some(s) if s <= 0) {
        return Err(invalid("spec.leaseDurationSeconds", "must be greater than 0"));
    }
    if matches!(lease.spec.lease_transitions, Some(t) if t < 0) {
        return Err(invalid("spec.leaseTransitions", "must be greater than or equal to 0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn a_valid_pod_passes_and_unknown_fields_are_named() {
        let c = check(
            Kind::Pod,
            pod(json!({"containers": [{"name": "srv", "image": "busybox", "command": ["sleep", "1"],
                                      "ports": [{"containerPort": 80}]}], "dnsPolicy": "None"})),
        )
        .expect("valid");
        assert_eq!(c.unknown_fields, ["spec.containers[0].ports", "spec.dnsPolicy"]);
        assert_eq!(c.object.pointer("/spec/containers/0/ports"), None, "unknown fields are dropped");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (pod(json!({"containers": []})), "spec.containers"),
            (pod(json!({"containers": [{"name": "srv"}]})), "spec.containers[0].command"),
            (pod(json!({"containers": [{"name": "Srv", "command": ["x"]}]})), "spec.containers[0].name"),
            (
                pod(json!({"containers": [{"name": "a", "command": ["x"], "env": [{"name": ""}]}]})),
                "spec.containers[0].env[0].name",
            ),
        ];
        for (obj, field) in cases {
            match check(Kind::Pod, obj) {
                Err(ValidationError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let bad_type = pod(json!({"containers": [{"name": "a", "command": "sleep 1"}]}));
        match check(Kind::Pod, bad_type) {
            Err(ValidationError::Malformed(m)) => assert!(m.starts_with("spec.containers[0].command:"), "{m}"),
            other => panic!("{other:?}"),
        }
        let lease = json!({"metadata": {"name": "n1"}, "spec": {"leaseDurationSeconds": 0}});
        assert!(
            matches!(check(Kind::Lease, lease), Err(ValidationError::Invalid { field, .. }) if field == "spec.leaseDurationSeconds")
        );
        let node = json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/33"}});
        assert!(
            matches!(check(Kind::Node, node), Err(ValidationError::Invalid { field, .. }) if field == "spec.podCIDR")
        );
    }
}
