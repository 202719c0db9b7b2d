//! `testbed get networkpolicies`: NAME, POD-SELECTOR, AGE, as kubectl prints them.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// kubectl's `metav1.FormatLabelSelector`: `app=web,tier in (a,b)`, `<none>` for the empty selector.
pub fn format_selector(selector: Option<&LabelSelector>) -> String {
    let Some(s) = selector else { return "<none>".into() };
    let mut parts: Vec<String> = s.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for r in s.match_expressions.iter().flatten() {
        let values = r.values.clone().unwrap_or_default().join(",");
        parts.push(match r.operator.as_str() {
            "In" => format!("{} in ({values})", r.key),
            "NotIn" => format!("{} notin ({values})", r.key),
            "Exists" => r.key.clone(),
            "DoesNotExist" => format!("!{}", r.key),
            other => format!("{} {other} ({values})", r.key),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

pub(super) fn network_policy_row(policy: &NetworkPolicy, age: String) -> Vec<String> {
    let selector = policy.spec.as_ref().map(|s| &s.pod_selector);
    vec![format_selector(selector.and_then(Option::as_ref)), age]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_read_as_kubectl_prints_them() {
        let policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                     {"key": "canary", "operator": "DoesNotExist"}]}}
        }))
        .unwrap();
        assert_eq!(network_policy_row(&policy, "5s".into()), ["app=db,tier in (a,b),!canary", "5s"]);
        let all: NetworkPolicy =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}}))
                .unwrap();
        assert_eq!(network_policy_row(&all, "1m".into()), ["<none>", "1m"]);
    }
}
