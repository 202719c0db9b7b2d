//! Decoding and checking an object before anything is stored: the JSON must fit the kind's schema (the typed
//! objects of `testbed_api::objects`), fields outside it are reported by path (the server refuses them under
//! strict field validation), and the values must pass the kind's checks, with the same code the CLI and the
//! agent run for pods (`testbed_api::validate::validate_pod`). Every error names the field.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use testbed_api::objects::{Event, LabelSelector, Lease, Namespace, NetworkPolicy, Node, Pod};
use testbed_api::validate::{is_dns_label, label_error, validate_pod};

use crate::resources::Kind;

mod network_policies;
mod services;
mod workloads;

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

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
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
    check_labels(&object)?;
    match kind {
        Kind::Namespace => typed::<Namespace>(object, |ns| name("metadata.name", &ns.metadata.name)),
        Kind::Node => typed(object, check_node),
        Kind::Pod => typed(object, check_pod),
        Kind::Lease => typed(object, check_lease),
        Kind::Event => typed(object, check_event),
        Kind::ReplicaSet => typed(object, workloads::check_replica_set),
        Kind::Deployment => typed(object, workloads::check_deployment),
        Kind::Service => typed(object, services::check_service),
        Kind::EndpointSlice => typed(object, services::check_endpoint_slice),
        Kind::NetworkPolicy => typed::<NetworkPolicy>(object, network_policies::check_network_policy),
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

/// `metadata.labels` of any kind, with Kubernetes' syntax (selectors match on them, so a label the
/// selector syntax cannot express is refused here, as the API server does).
fn check_labels(object: &Value) -> Result<(), ValidationError> {
    let Some(labels) = object.pointer("/metadata/labels").and_then(Value::as_object) else { return Ok(()) };
    for (key, value) in labels {
        if let Some(message) = value.as_str().and_then(|v| label_error(key, v)) {
            return Err(invalid(format!("metadata.labels.{key}"), message));
        }
    }
    Ok(())
}

pub(crate) fn name(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        let what = if field == "metadata.name" { "name or generateName" } else { "name" };
        return Err(invalid(field, format!("Required value: {what} is required")));
    }
    if !is_dns_label(value, 63) {
        return Err(invalid(
            field,
            format!("Invalid value: \"{value}\": must be a DNS label (a-z, 0-9, '-', at most 63)"),
        ));
    }
    Ok(())
}

/// The operators and values of a label selector's `matchExpressions`, as Kubernetes'
/// `ValidateLabelSelector` (`field` is the selector's path: `spec.selector`).
pub(crate) fn label_selector(field: &str, selector: &LabelSelector) -> Result<(), ValidationError> {
    for (i, r) in selector.match_expressions.iter().enumerate() {
        let field = format!("{field}.matchExpressions[{i}]");
        match (r.operator.as_str(), r.values.is_empty()) {
            ("In" | "NotIn", false) | ("Exists" | "DoesNotExist", true) => {}
            ("In" | "NotIn", true) => {
                return Err(invalid(format!("{field}.values"), "must be specified when `operator` is 'In' or 'NotIn'"))
            }
            ("Exists" | "DoesNotExist", false) => {
                return Err(invalid(
                    format!("{field}.values"),
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                ))
            }
            (other, _) => {
                return Err(invalid(
                    format!("{field}.operator"),
                    format!("Unsupported value: \"{other}\": not a valid selector operator"),
                ))
            }
        }
    }
    Ok(())
}

fn check_pod(pod: &Pod) -> Result<(), ValidationError> {
    name("metadata.name", &pod.metadata.name)?;
    check_pod_spec(pod, "spec")
}

/// The checks of a pod's spec, with field paths under `at` (`spec`, or `spec.template.spec` for a template).
pub(crate) fn check_pod_spec(pod: &Pod, at: &str) -> Result<(), ValidationError> {
    // The agent's own checks, with their field paths moved under the Kubernetes object's layout.
    validate_pod(&pod.to_agent_spec()).map_err(|e| {
        let field = match e.field.as_deref() {
            Some("name") | None => "metadata.name".to_string(),
            Some(f) => format!("{at}.{f}"),
        };
        invalid(field, e.message)
    })?;
    for (i, c) in pod.spec.containers.iter().enumerate() {
        for (j, env) in c.env.iter().enumerate() {
            if env.name.is_empty() || env.name.contains('=') {
                return Err(invalid(
                    format!("{at}.containers[{i}].env[{j}].name"),
                    "must be a non-empty name without '='",
                ));
            }
        }
        for (kind, amounts) in c.resources.iter().flat_map(|r| [("requests", &r.requests), ("limits", &r.limits)]) {
            for (resource, quantity) in amounts {
                let field = || format!("{at}.containers[{i}].resources.{kind}.{resource}");
                let parsed = match resource.as_str() {
                    "cpu" => testbed_api::quantity::cpu_millis(quantity).map(drop),
                    "memory" => testbed_api::quantity::memory_bytes(quantity).map(drop),
                    _ => Err("Unsupported value: only cpu and memory are supported".to_string()),
                };
                parsed.map_err(|m| invalid(field(), m))?;
            }
        }
        for (j, port) in c.ports.iter().enumerate() {
            if !(1..=65535).contains(&port.container_port) {
                return Err(invalid(format!("{at}.containers[{i}].ports[{j}].containerPort"), "must be 1-65535"));
            }
        }
    }
    if let Some(node) = &pod.spec.node_name {
        name(&format!("{at}.nodeName"), node)?;
    }
    if matches!(pod.spec.termination_grace_period_seconds, Some(s) if s < 0) {
        return Err(invalid(format!("{at}.terminationGracePeriodSeconds"), "must be greater than or equal to 0"));
    }
    Ok(())
}

fn check_event(event: &Event) -> Result<(), ValidationError> {
    if event.metadata.name.is_empty() {
        return Err(invalid("metadata.name", "Required value: name or generateName is required"));
    }
    let ns = event.metadata.namespace.as_deref();
    if event.involved_object.namespace.is_some() && event.involved_object.namespace.as_deref() != ns {
        return Err(invalid("involvedObject.namespace", "does not match event.namespace"));
    }
    if !matches!(event.type_.as_deref(), None | Some("Normal" | "Warning")) {
        return Err(invalid("type", "Unsupported value: supported values: \"Normal\", \"Warning\""));
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

    /// A digest-pinned image: the only kind testbed runs, and so the only kind that may mount volumes.
    const IMAGE: &str = "busybox@sha256:0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f";

    fn pod(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn a_valid_pod_passes_and_unknown_fields_are_named() {
        let c = check(
            Kind::Pod,
            pod(json!({"containers": [{"name": "srv", "image": "busybox", "command": ["sleep", "1"],
                                      "tty": true}], "dnsPolicy": "None"})),
        )
        .expect("valid");
        assert_eq!(c.unknown_fields, ["spec.containers[0].tty", "spec.dnsPolicy"]);
        assert_eq!(c.object.pointer("/spec/containers/0/tty"), None, "unknown fields are dropped");
    }

    #[test]
    fn labels_of_any_kind_follow_kubernetes_syntax() {
        let labelled = |labels: Value| json!({"metadata": {"name": "team-a", "labels": labels}});
        let ok = labelled(json!({"team": "a", "app.kubernetes.io/name": "web", "empty": ""}));
        assert!(check(Kind::Namespace, ok).is_ok());
        for (labels, field) in [
            (json!({"team": "-a"}), "metadata.labels.team"),
            (json!({"bad key": "a"}), "metadata.labels.bad key"),
            (json!({"Not_A.Domain/x": "a"}), "metadata.labels.Not_A.Domain/x"),
            (json!({"long": "x".repeat(64)}), "metadata.labels.long"),
        ] {
            match check(Kind::Namespace, labelled(labels)) {
                Err(ValidationError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
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
            (
                pod(json!({"volumes": [{"name": "d", "emptyDir": {}}], "containers": [{"name": "a",
                    "image": IMAGE, "volumeMounts": [{"name": "nope", "mountPath": "/d"}]}]})),
                "spec.containers[0].volumeMounts[0].name",
            ),
            (
                pod(json!({"volumes": [{"name": "d", "emptyDir": {}}, {"name": "d", "hostPath": {"path": "/x"}}],
                    "containers": [{"name": "a", "image": IMAGE}]})),
                "spec.volumes[1].name",
            ),
            (
                pod(json!({"volumes": [{"name": "d", "emptyDir": {}}], "containers": [{"name": "a",
                    "image": IMAGE, "volumeMounts": [{"name": "d", "mountPath": "d"}]}]})),
                "spec.containers[0].volumeMounts[0].mountPath",
            ),
            (
                pod(json!({"volumes": [{"name": "d", "emptyDir": {}}], "containers": [{"name": "a",
                    "image": "busybox:1.36", "command": ["x"], "volumeMounts": [{"name": "d", "mountPath": "/d"}]}]})),
                "spec.containers[0].volumeMounts",
            ),
            // The probe checks the topology's `validate` runs too (testbed_api::probe::validate_probe).
            (
                pod(json!({"containers": [{"name": "a", "command": ["x"], "readinessProbe": {"periodSeconds": 1}}]})),
                "spec.containers[0].readinessProbe",
            ),
            (
                pod(
                    json!({"containers": [{"name": "a", "command": ["x"], "ports": [{"name": "web", "containerPort": 80}],
                                           "livenessProbe": {"httpGet": {"port": "http"}}}]}),
                ),
                "spec.containers[0].livenessProbe.httpGet.port",
            ),
            (
                pod(json!({"containers": [{"name": "a", "command": ["x"],
                                           "startupProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}}}]})),
                "spec.containers[0].startupProbe",
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
