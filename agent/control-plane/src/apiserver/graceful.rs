//! Graceful deletion of pods, as Kubernetes' `rest.BeforeDelete` with the pod strategy's
//! `CheckGracefulDelete` (pkg/registry/core/pod/strategy.go): a DELETE of a pod bound to a node with a grace
//! period above 0 does not remove it but sets `metadata.deletionTimestamp` (now + grace) and
//! `metadata.deletionGracePeriodSeconds`; the pod's kubelet stops it (SIGTERM, SIGKILL after the grace)
//! and then deletes it with grace 0. The grace is `DeleteOptions.gracePeriodSeconds`, else the pod's
//! `spec.terminationGracePeriodSeconds`, else 30 (Kubernetes defaults the spec field to 30 at creation).
//! An unbound pod or one that has finished (`Succeeded`, `Failed`) goes at once, as does grace 0
//! (`kubectl delete --grace-period=0 --force`). A pod already terminating may only have its grace
//! shortened, its timestamp moving by as much.

use serde_json::{json, Value};

use crate::meta::{now_seconds, parse_rfc3339, rfc3339_at};

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

/// What a DELETE does to a stored pod.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum PodDeletion {
    /// Remove it from the store now.
    Now,
    /// Write this version of it (deletion timestamp and grace set or shortened) and leave it.
    Mark(Value),
    /// It is terminating already with no shorter grace asked: answer it unchanged.
    Pending,
}

/// The grace period of a DELETE: `gracePeriodSeconds` of the options (negative counts as 1, as in
/// Kubernetes), if given.
fn requested_grace(options: &Value) -> Option<i64> {
    options.get("gracePeriodSeconds").and_then(Value::as_i64).map(|g| if g < 0 { 1 } else { g })
}

/// What a DELETE with `options` does to `pod` (as stored, at `now` seconds since the epoch).
pub(super) fn pod_deletion(pod: &Value, options: &Value, now: f64) -> PodDeletion {
    let requested = requested_grace(options);
    if let Some(since) = pod.pointer("/metadata/deletionTimestamp").and_then(Value::as_str) {
        let current = pod.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0);
        return match requested {
            // A deletion whose grace ran to 0 (or was never set) but is still stored: finish it.
            _ if current <= 0 => PodDeletion::Now,
            Some(0) => PodDeletion::Now,
            Some(shorter) if shorter < current => {
                let at = parse_rfc3339(since).unwrap_or(now) - current as f64 + shorter as f64;
                PodDeletion::Mark(marked(pod, at, shorter))
            }
            _ => PodDeletion::Pending,
        };
    }
    let bound = pod.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
    let finished = matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
    let grace = requested.unwrap_or_else(|| {
        pod.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(DEFAULT_GRACE_SECONDS)
    });
    if !bound || finished || grace <= 0 {
        return PodDeletion::Now;
    }
    PodDeletion::Mark(marked(pod, now + grace as f64, grace))
}

/// `pod` with its deletion timestamp at `at` (seconds since the epoch) and its grace `grace`.
fn marked(pod: &Value, at: f64, grace: i64) -> Value {
    let mut pod = pod.clone();
    pod["metadata"]["deletionTimestamp"] = json!(rfc3339_at(at.max(0.0) as u64));
    pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    pod
}

/// [`pod_deletion`] now.
pub(super) fn pod_deletion_now(pod: &Value, options: &Value) -> PodDeletion {
    pod_deletion(pod, options, now_seconds().floor())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{pod_deletion, PodDeletion};

    const NOW: f64 = 1_800_000_000.0;

    fn pod(node: Option<&str>, phase: &str, spec_grace: Option<i64>) -> serde_json::Value {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": []}, "status": {"phase": phase}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        if let Some(g) = spec_grace {
            p["spec"]["terminationGracePeriodSeconds"] = json!(g);
        }
        p
    }

    fn mark(d: PodDeletion) -> (String, i64) {
        match d {
            PodDeletion::Mark(p) => (
                p["metadata"]["deletionTimestamp"].as_str().expect("timestamp").to_string(),
                p["metadata"]["deletionGracePeriodSeconds"].as_i64().expect("grace"),
            ),
            other => panic!("not marked: {other:?}"),
        }
    }

    #[test]
    fn a_bound_running_pod_is_marked_with_its_grace() {
        let running = pod(Some("n1"), "Running", None);
        // 1_800_000_030 s is 2027-01-15T08:00:30Z.
        assert_eq!(mark(pod_deletion(&running, &json!({}), NOW)), ("2027-01-15T08:00:30Z".into(), 30));
        let own = pod(Some("n1"), "Running", Some(5));
        assert_eq!(mark(pod_deletion(&own, &json!({}), NOW)).1, 5, "the spec's grace");
        assert_eq!(mark(pod_deletion(&own, &json!({"gracePeriodSeconds": 2}), NOW)).1, 2, "the options' grace");
        assert_eq!(mark(pod_deletion(&own, &json!({"gracePeriodSeconds": -3}), NOW)).1, 1, "negative is 1 s");
    }

    #[test]
    fn grace_zero_unbound_and_finished_pods_go_at_once() {
        let running = pod(Some("n1"), "Running", None);
        assert_eq!(pod_deletion(&running, &json!({"gracePeriodSeconds": 0}), NOW), PodDeletion::Now);
        assert_eq!(pod_deletion(&pod(Some("n1"), "Running", Some(0)), &json!({}), NOW), PodDeletion::Now);
        assert_eq!(pod_deletion(&pod(None, "Pending", None), &json!({}), NOW), PodDeletion::Now);
        for phase in ["Succeeded", "Failed"] {
            assert_eq!(pod_deletion(&pod(Some("n1"), phase, None), &json!({}), NOW), PodDeletion::Now);
        }
    }

    #[test]
    fn a_terminating_pod_only_has_its_grace_shortened() {
        let PodDeletion::Mark(terminating) = pod_deletion(&pod(Some("n1"), "Running", None), &json!({}), NOW) else {
            panic!("not marked")
        };
        assert_eq!(pod_deletion(&terminating, &json!({}), NOW + 5.0), PodDeletion::Pending);
        assert_eq!(pod_deletion(&terminating, &json!({"gracePeriodSeconds": 60}), NOW), PodDeletion::Pending);
        // 30 s shortened to 10 s: the timestamp moves 20 s earlier.
        let shortened = pod_deletion(&terminating, &json!({"gracePeriodSeconds": 10}), NOW + 5.0);
        assert_eq!(mark(shortened), ("2027-01-15T08:00:10Z".into(), 10));
        assert_eq!(pod_deletion(&terminating, &json!({"gracePeriodSeconds": 0}), NOW), PodDeletion::Now);
    }
}
