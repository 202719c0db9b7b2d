//! What kube-apiserver defaults in a NetworkPolicy (`SetDefaults_NetworkPolicy` and
//! `SetDefaults_NetworkPolicyPort`): `policyTypes` (`Ingress`, plus `Egress` when egress rules are given) and
//! each port's protocol `TCP`.

use serde_json::{json, Value};

/// Fills in Kubernetes' defaults, before the object is checked.
pub(super) fn default_network_policy(obj: &mut Value) {
    let Some(obj) = obj.as_object_mut() else { return };
    let Some(spec) = obj.entry("spec").or_insert(json!({})).as_object_mut() else { return };
    for direction in ["ingress", "egress"] {
        let Some(rules) = spec.get_mut(direction).and_then(Value::as_array_mut) else { continue };
        for ports in rules.iter_mut().filter_map(|r| r.get_mut("ports")).filter_map(Value::as_array_mut) {
            for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                port.entry("protocol").or_insert(json!("TCP"));
            }
        }
    }
    let given = spec.get("policyTypes").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
    if !given {
        let egress = spec.get("egress").and_then(Value::as_array).is_some_and(|e| !e.is_empty());
        let types = if egress { json!(["Ingress", "Egress"]) } else { json!(["Ingress"]) };
        spec.insert("policyTypes".into(), types);
    }
}
