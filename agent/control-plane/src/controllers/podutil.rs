//! What the controllers ask of pods (pkg/api/v1/pod and controller_utils.go): active, Ready, available
//! after `minReadySeconds`, whose controller, and the order surplus pods are deleted in.

use std::cmp::Ordering;
use std::collections::HashMap;

use testbed_api::objects::{ObjectMeta, OwnerReference, Pod};
use testbed_api::PodPhase;

use crate::client::parse_rfc3339;

/// Neither finished nor terminating (Kubernetes' `IsPodActive`): the pods a ReplicaSet counts. A
/// terminating pod is not counted, so its replacement is created at once.
pub fn is_active(pod: &Pod) -> bool {
    !is_finished(pod) && !is_terminating(pod)
}

/// `Succeeded` or `Failed`.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(phase(pod), Some(PodPhase::Succeeded | PodPhase::Failed))
}

/// Deleted gracefully and not yet gone: it has a `deletionTimestamp`.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn phase(pod: &Pod) -> Option<PodPhase> {
    pod.status.as_ref().and_then(|s| s.phase)
}

/// The time (seconds since the epoch) the pod's `Ready` condition became `True`, if it is `True`.
fn ready_since(pod: &Pod) -> Option<Option<f64>> {
    let cond = pod.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(cond.last_transition_time.as_deref().and_then(parse_rfc3339))
}

/// The pod's `Ready` condition is `True`.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now` (Kubernetes' `IsPodAvailable`).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: f64) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(since) => since.is_some_and(|t| t + f64::from(min_ready_seconds) < now),
    }
}

/// The `controller: true` owner reference.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().find(|r| r.controller == Some(true))
}

/// The owner reference a controller puts on what it makes (`apps/v1`, `ReplicaSet`).
pub fn controller_ref(kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        name: owner.name.clone(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The `count` pods to delete first, in Kubernetes' order (`ActivePodsWithRanks`): unassigned before
/// assigned, Pending before Unknown before Running, not Ready before Ready, more pods of the set on the same
/// node before fewer, Ready more recently before longer, more restarts before fewer, newer before older.
pub fn pods_to_delete(mut pods: Vec<Pod>, count: usize) -> Vec<Pod> {
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for p in &pods {
        if let Some(node) = &p.spec.node_name {
            *per_node.entry(node.clone()).or_default() += 1;
        }
    }
    let rank = |p: &Pod| p.spec.node_name.as_ref().map_or(0, |n| per_node[n]);
    pods.sort_by(|a, b| deletion_order(a, b, rank(a), rank(b)));
    pods.truncate(count);
    pods
}

fn deletion_order(a: &Pod, b: &Pod, rank_a: usize, rank_b: usize) -> Ordering {
    let assigned = |p: &Pod| p.spec.node_name.as_deref().is_some_and(|n| !n.is_empty());
    let phase_rank = |p: &Pod| match phase(p) {
        None | Some(PodPhase::Pending) => 0,
        Some(PodPhase::Running) => 2,
        _ => 1,
    };
    let restarts =
        |p: &Pod| p.status.as_ref().map_or(0, |s| s.container_statuses.iter().map(|c| c.restart_count).sum::<u32>());
    let created = |p: &Pod| p.metadata.creation_timestamp.as_deref().and_then(parse_rfc3339);
    let newer_first = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        // An unknown time sorts first, as Kubernetes' empty timestamps do.
        (x, y) => x.is_some().cmp(&y.is_some()),
    };
    assigned(a)
        .cmp(&assigned(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(is_ready(a).cmp(&is_ready(b)))
        .then(rank_b.cmp(&rank_a))
        .then_with(|| match (ready_since(a), ready_since(b)) {
            (Some(x), Some(y)) => newer_first(x, y),
            _ => Ordering::Equal,
        })
        .then(restarts(b).cmp(&restarts(a)))
        .then_with(|| newer_first(created(a), created(b)))
}

#[cfg(test)]
mod tests {
    use testbed_api::objects::{Condition, PodStatus};

    use super::*;

    fn pod(name: &str, node: Option<&str>, phase: PodPhase, ready_at: Option<&str>, created: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = name.into();
        p.metadata.creation_timestamp = Some(created.into());
        p.spec.node_name = node.map(Into::into);
        let conditions = ready_at
            .map(|t| Condition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(t.into()),
                ..Default::default()
            })
            .into_iter()
            .collect();
        p.status = Some(PodStatus { phase: Some(phase), conditions, ..Default::default() });
        p
    }

    #[test]
    fn surplus_pods_go_in_kubernetes_order() {
        let t = |s: u32| format!("2026-11-29T10:00:{s:02}Z");
        let pods = vec![
            pod("ready-old", Some("n1"), PodPhase::Running, Some(&t(1)), &t(0)),
            pod("ready-new", Some("n2"), PodPhase::Running, Some(&t(9)), &t(0)),
            pod("running", Some("n3"), PodPhase::Running, None, &t(0)),
            pod("pending", Some("n4"), PodPhase::Pending, None, &t(0)),
            pod("unassigned", None, PodPhase::Pending, None, &t(0)),
        ];
        let names = |n| pods_to_delete(pods.clone(), n).into_iter().map(|p| p.metadata.name).collect::<Vec<_>>();
        assert_eq!(names(5), ["unassigned", "pending", "running", "ready-new", "ready-old"]);
        assert_eq!(names(1), ["unassigned"]);

        // Doubled up on a node before alone; then newer before older.
        let pods = vec![
            pod("alone", Some("n1"), PodPhase::Running, None, &t(5)),
            pod("pair-old", Some("n2"), PodPhase::Running, None, &t(1)),
            pod("pair-new", Some("n2"), PodPhase::Running, None, &t(2)),
        ];
        let order: Vec<_> = pods_to_delete(pods, 3).into_iter().map(|p| p.metadata.name).collect();
        assert_eq!(order, ["pair-new", "pair-old", "alone"]);
    }

    #[test]
    fn available_after_min_ready_seconds() {
        let p = pod("p", Some("n1"), PodPhase::Running, Some("2026-11-29T10:00:00Z"), "2026-11-29T10:00:00Z");
        let ready = parse_rfc3339("2026-11-29T10:00:00Z").unwrap_or_default();
        assert!(is_available(&p, 0, ready));
        assert!(!is_available(&p, 5, ready + 4.0));
        assert!(is_available(&p, 5, ready + 5.5));
        let mut failed = p.clone();
        assert!(is_active(&failed));
        if let Some(s) = failed.status.as_mut() {
            s.phase = Some(PodPhase::Failed);
        }
        assert!(!is_active(&failed));
        let mut terminating = p.clone();
        terminating.metadata.deletion_timestamp = Some("2026-11-29T10:00:30Z".into());
        assert!(!is_active(&terminating) && !is_finished(&terminating), "terminating: neither active nor finished");
        let unready = pod("u", Some("n1"), PodPhase::Running, None, "2026-11-29T10:00:00Z");
        assert!(!is_available(&unready, 0, ready));
    }
}
