//! Checks of ReplicaSets and Deployments: the selector must be set and match the template's labels (or the
//! controller would make pods it does not own), counts are not negative, the rollout limits are well formed,
//! and the template is a valid pod that restarts `Always`, as Kubernetes requires of both.

use testbed_api::objects::{Deployment, IntOrString, LabelSelector, Pod, PodTemplateSpec, ReplicaSet};
use testbed_api::RestartPolicy;

use super::{check_pod_spec, invalid, name, ValidationError};

pub(super) fn check_replica_set(rs: &ReplicaSet) -> Result<(), ValidationError> {
    name("metadata.name", &rs.metadata.name)?;
    not_negative("spec.replicas", rs.spec.replicas)?;
    not_negative("spec.minReadySeconds", rs.spec.min_ready_seconds)?;
    check_template(&rs.metadata.name, &rs.spec.selector, &rs.spec.template)
}

pub(super) fn check_deployment(d: &Deployment) -> Result<(), ValidationError> {
    name("metadata.name", &d.metadata.name)?;
    let spec = &d.spec;
    not_negative("spec.replicas", spec.replicas)?;
    not_negative("spec.minReadySeconds", spec.min_ready_seconds)?;
    not_negative("spec.revisionHistoryLimit", spec.revision_history_limit)?;
    if let Some(deadline) = spec.progress_deadline_seconds {
        if deadline <= spec.min_ready_seconds.unwrap_or(0) {
            return Err(invalid("spec.progressDeadlineSeconds", "must be greater than minReadySeconds"));
        }
    }
    if let Some(strategy) = &spec.strategy {
        match strategy.type_.as_deref() {
            None | Some("RollingUpdate") => {}
            Some("Recreate") if strategy.rolling_update.is_some() => {
                return Err(invalid(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
            Some("Recreate") => {}
            Some(other) => {
                return Err(invalid(
                    "spec.strategy.type",
                    format!("Unsupported value: \"{other}\": supported values: \"Recreate\", \"RollingUpdate\""),
                ))
            }
        }
        if let Some(ru) = &strategy.rolling_update {
            let surge = count_or_percent("spec.strategy.rollingUpdate.maxSurge", ru.max_surge.as_ref())?;
            let unavailable =
                count_or_percent("spec.strategy.rollingUpdate.maxUnavailable", ru.max_unavailable.as_ref())?;
            if surge == Some(0) && unavailable == Some(0) {
                return Err(invalid("spec.strategy.rollingUpdate.maxUnavailable", "may not be 0 when `maxSurge` is 0"));
            }
            if matches!(&ru.max_unavailable, Some(IntOrString::String(p)) if percent(p).is_some_and(|p| p > 100)) {
                return Err(invalid("spec.strategy.rollingUpdate.maxUnavailable", "must not be greater than 100%"));
            }
        }
    }
    check_template(&d.metadata.name, &spec.selector, &spec.template)
}

fn not_negative(field: &str, value: Option<i32>) -> Result<(), ValidationError> {
    match value {
        Some(v) if v < 0 => Err(invalid(field, "must be greater than or equal to 0")),
        _ => Ok(()),
    }
}

/// A count or a percentage, as its number (the percentage's, for `25%`); `None` when absent.
fn count_or_percent(field: &str, value: Option<&IntOrString>) -> Result<Option<i64>, ValidationError> {
    match value {
        None => Ok(None),
        Some(IntOrString::Int(n)) if *n < 0 => Err(invalid(field, "must be greater than or equal to 0")),
        Some(IntOrString::Int(n)) => Ok(Some(i64::from(*n))),
        Some(IntOrString::String(s)) => percent(s).map(Some).ok_or_else(|| {
            invalid(
                field,
                format!(
                    "Invalid value: \"{s}\": a valid percent string must be a numeric string followed by an ending '%'"
                ),
            )
        }),
    }
}

fn percent(s: &str) -> Option<i64> {
    s.strip_suffix('%').filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))?.parse().ok()
}

fn check_template(owner: &str, selector: &LabelSelector, template: &PodTemplateSpec) -> Result<(), ValidationError> {
    if selector.match_labels.is_empty() && selector.match_expressions.is_empty() {
        return Err(invalid("spec.selector", "Required value: empty selector is invalid for deployment"));
    }
    super::label_selector("spec.selector", selector)?;
    if !selector.matches(&template.metadata.labels) {
        return Err(invalid(
            "spec.template.metadata.labels",
            "Invalid value: `selector` does not match template `labels`",
        ));
    }
    if !matches!(template.spec.restart_policy, None | Some(RestartPolicy::Always)) {
        return Err(invalid("spec.template.spec.restartPolicy", "Unsupported value: supported values: \"Always\""));
    }
    // The template is checked as the pods made from it will be, which are named after their owner.
    let mut pod = Pod { metadata: template.metadata.clone(), spec: template.spec.clone(), ..Pod::default() };
    pod.metadata.name = owner.to_string();
    check_pod_spec(&pod, "spec.template.spec")
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::resources::Kind;
    use crate::validation::{check, ValidationError};

    fn deployment(spec: Value) -> Value {
        let mut base = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "srv", "command": ["sleep", "1d"],
                                           "resources": {"requests": {"cpu": "100m", "memory": "16Mi"}}}]}}}
        });
        merge(&mut base["spec"], spec);
        base
    }

    /// RFC 7386 merge of `patch` into `target`, enough for these cases.
    fn merge(target: &mut Value, patch: Value) {
        match patch {
            Value::Object(fields) => {
                for (k, v) in fields {
                    if v.is_null() {
                        target.as_object_mut().map(|o| o.remove(&k));
                    } else {
                        merge(&mut target[&k], v);
                    }
                }
            }
            other => *target = other,
        }
    }

    fn field_of(kind: Kind, obj: Value) -> String {
        match check(kind, obj) {
            Err(ValidationError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_deployment_and_replica_set_pass() {
        check(Kind::Deployment, deployment(json!({}))).expect("valid deployment");
        let mut rs = deployment(json!({}));
        rs["kind"] = "ReplicaSet".into();
        let c = check(Kind::ReplicaSet, rs).expect("valid replica set");
        assert!(c.unknown_fields.is_empty(), "{:?}", c.unknown_fields);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"replicas": -1}), "spec.replicas"),
            (json!({"selector": {"matchLabels": {"app": "db"}}}), "spec.template.metadata.labels"),
            (json!({"selector": {"matchLabels": null}}), "spec.selector"),
            (json!({"strategy": {"type": "BlueGreen"}}), "spec.strategy.type"),
            (
                json!({"strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}}),
                "spec.strategy.rollingUpdate",
            ),
            (json!({"strategy": {"rollingUpdate": {"maxSurge": "x%"}}}), "spec.strategy.rollingUpdate.maxSurge"),
            (
                json!({"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}}),
                "spec.strategy.rollingUpdate.maxUnavailable",
            ),
            (json!({"minReadySeconds": 10, "progressDeadlineSeconds": 10}), "spec.progressDeadlineSeconds"),
            (json!({"template": {"spec": {"restartPolicy": "Never"}}}), "spec.template.spec.restartPolicy"),
            (
                json!({"template": {"spec": {"containers": [{"name": "srv", "command": ["x"], "resources": {"limits": {"cpu": "lots"}}}]}}}),
                "spec.template.spec.containers[0].resources.limits.cpu",
            ),
        ];
        for (patch, field) in cases {
            assert_eq!(field_of(Kind::Deployment, deployment(patch)), field);
        }
    }
}
