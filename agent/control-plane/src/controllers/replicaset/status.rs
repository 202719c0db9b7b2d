//! A ReplicaSet's status from its pods (replica_set_utils.go `calculateStatus`): counted, fully labeled,
//! Ready and available pods, and the `ReplicaFailure` condition while creating or deleting pods fails.

use testbed_api::objects::{Condition, Pod, ReplicaSet, ReplicaSetStatus};

use crate::client::now_rfc3339;
use crate::controllers::podutil::{is_available, is_ready};

/// Zero is left out of the wire form, as Kubernetes' `omitempty` does.
fn nonzero(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

/// The status of `rs` owning the active `pods` at `now`, after managing its replicas failed with
/// `manage_error` (or not).
pub fn calculate(rs: &ReplicaSet, pods: &[Pod], manage_error: Option<&str>, now: f64) -> ReplicaSetStatus {
    let template = &rs.spec.template.metadata.labels;
    let min_ready = rs.spec.min_ready_seconds.unwrap_or(0);
    let fully_labeled =
        pods.iter().filter(|p| template.iter().all(|(k, v)| p.metadata.labels.get(k) == Some(v))).count();
    let ready = pods.iter().filter(|p| is_ready(p)).count();
    let available = pods.iter().filter(|p| is_available(p, min_ready, now)).count();
    let mut conditions = rs.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let failure = conditions.iter().position(|c| c.type_ == "ReplicaFailure");
    match (manage_error, failure) {
        (Some(message), None) => {
            let wanted = rs.spec.replicas.unwrap_or(1) as usize;
            let reason = if pods.len() < wanted { "FailedCreate" } else { "FailedDelete" };
            conditions.push(Condition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                last_transition_time: Some(now_rfc3339()),
                reason: Some(reason.into()),
                message: Some(message.into()),
                ..Default::default()
            });
        }
        (None, Some(at)) => {
            conditions.remove(at);
        }
        _ => {}
    }
    ReplicaSetStatus {
        replicas: pods.len() as i32,
        fully_labeled_replicas: nonzero(fully_labeled as i32),
        ready_replicas: nonzero(ready as i32),
        available_replicas: nonzero(available as i32),
        observed_generation: rs.metadata.generation,
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use testbed_api::objects::PodStatus;

    use super::*;

    #[test]
    fn counts_and_failure_condition() {
        let mut rs = ReplicaSet::default();
        rs.spec.replicas = Some(3);
        rs.spec.min_ready_seconds = Some(10);
        rs.metadata.generation = Some(4);
        rs.spec.template.metadata.labels = BTreeMap::from([("app".into(), "web".into()), ("v".into(), "2".into())]);
        let ready_at = "2026-11-29T10:00:00Z";
        let now = crate::client::parse_rfc3339(ready_at).unwrap_or_default() + 5.0;
        let mut ready = Pod::default();
        ready.metadata.labels = rs.spec.template.metadata.labels.clone();
        ready.status = Some(PodStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(ready_at.into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        let mut partial = Pod::default();
        partial.metadata.labels = BTreeMap::from([("app".into(), "web".into())]);
        let s = calculate(&rs, &[ready.clone(), partial.clone()], Some("quota"), now);
        assert_eq!((s.replicas, s.fully_labeled_replicas, s.ready_replicas), (2, Some(1), Some(1)));
        assert_eq!((s.available_replicas, s.observed_generation), (None, Some(4)), "ready 5 s of 10");
        assert_eq!(s.conditions[0].reason.as_deref(), Some("FailedCreate"));
        rs.status = Some(s);
        let s = calculate(&rs, &[ready, partial], None, now + 6.0);
        assert_eq!(s.available_replicas, Some(1));
        assert!(s.conditions.is_empty(), "the failure is over");
    }
}
