//! A pod's API `status` from what the node's runtime reports, without I/O: phase, podIP, hostIP, the
//! kubelet's four conditions and one containerStatus per container. Times carry over from the status last
//! written while nothing they date changes, so an unchanged pod computes an equal status and is not written.

use testbed_api::objects::{
    Condition, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    Pod, PodStatus,
};
use testbed_api::PodPhase;

/// Why a pod the loop does not run has the status it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The runtime refused the spec: the pod is Failed for good.
    Rejected(String),
    /// The name is taken on the node: the pod stays Pending.
    Blocked(String),
}

/// The status to write for `pod`: from the runtime's view of it (`node`), or from a `note`; None when
/// there is nothing to say yet (the create has not begun).
pub fn compute(
    pod: &Pod,
    node: Option<&testbed_api::PodStatus>,
    note: Option<&Note>,
    host_ip: Option<&str>,
    prev: Option<&PodStatus>,
    now: &str,
) -> Option<PodStatus> {
    let host_ip = host_ip.map(str::to_string);
    let mut status = match (node, note) {
        (Some(node), _) => running_status(pod, node, prev, now),
        (None, Some(Note::Rejected(m))) => {
            PodStatus { phase: Some(PodPhase::Failed), message: Some(m.clone()), ..Default::default() }
        }
        (None, Some(Note::Blocked(m))) => {
            PodStatus { phase: Some(PodPhase::Pending), message: Some(m.clone()), ..Default::default() }
        }
        (None, None) => return None,
    };
    status.host_ip = host_ip;
    let ready = status.phase == Some(PodPhase::Running)
        && !status.container_statuses.is_empty()
        && status.container_statuses.iter().all(|c| c.ready);
    let started = node.is_some_and(|n| n.infra_pid.is_some());
    status.conditions =
        [("PodScheduled", true), ("Initialized", started), ("ContainersReady", ready), ("Ready", ready)]
            .into_iter()
            .map(|(kind, ok)| condition(kind, ok, prev, now))
            .collect();
    Some(status)
}

fn running_status(pod: &Pod, node: &testbed_api::PodStatus, prev: Option<&PodStatus>, now: &str) -> PodStatus {
    let container_statuses = node
        .containers
        .iter()
        .map(|c| {
            let image = pod.spec.containers.iter().find(|s| s.name == c.name).and_then(|s| s.image.clone());
            let before = prev.and_then(|p| p.container_statuses.iter().find(|x| x.name == c.name));
            let state = match &c.state {
                testbed_api::ContainerState::Waiting { reason } => ContainerState {
                    waiting: Some(ContainerStateWaiting { reason: Some(reason.clone()) }),
                    ..Default::default()
                },
                testbed_api::ContainerState::Running { .. } => {
                    // The same run as before (no restart since) keeps the time it was first seen running.
                    let started_at = before
                        .filter(|b| b.restart_count == c.restart_count)
                        .and_then(|b| b.state.running.as_ref())
                        .and_then(|r| r.started_at.clone())
                        .unwrap_or_else(|| now.to_string());
                    ContainerState {
                        running: Some(ContainerStateRunning { started_at: Some(started_at) }),
                        ..Default::default()
                    }
                }
                testbed_api::ContainerState::Terminated { exit_code, reason } => ContainerState {
                    terminated: Some(ContainerStateTerminated { exit_code: *exit_code, reason: Some(reason.clone()) }),
                    ..Default::default()
                },
            };
            let last_state = match &c.last_state {
                Some(testbed_api::ContainerState::Terminated { exit_code, reason }) => ContainerState {
                    terminated: Some(ContainerStateTerminated { exit_code: *exit_code, reason: Some(reason.clone()) }),
                    ..Default::default()
                },
                _ => ContainerState::default(),
            };
            ContainerStatus {
                name: c.name.clone(),
                ready: c.ready && state.running.is_some(),
                started: Some(c.started && state.running.is_some()),
                restart_count: c.restart_count,
                image,
                state,
                last_state,
            }
        })
        .collect();
    PodStatus {
        phase: Some(node.phase),
        pod_ip: node.ip.map(|ip| ip.to_string()),
        container_statuses,
        ..Default::default()
    }
}

fn condition(kind: &str, ok: bool, prev: Option<&PodStatus>, now: &str) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = prev
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == kind && c.status == status))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    Condition { type_: kind.into(), status: status.into(), last_transition_time: Some(since), ..Default::default() }
}

/// The status as a merge patch body: fields that are now absent are sent as null, so that the patch
/// clears them (a pod that lost its podIP, a message that no longer applies).
pub fn patch_body(status: &PodStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        for field in ["podIP", "hostIP", "message", "containerStatuses", "conditions"] {
            map.entry(field).or_insert(serde_json::Value::Null);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed_api::{ContainerState as Cs, QosClass};

    fn node_pod(states: Vec<(Cs, u32)>, infra: Option<u32>) -> testbed_api::PodStatus {
        testbed_api::PodStatus {
            name: "web".into(),
            phase: testbed_api::PodPhase::Running,
            qos_class: QosClass::BestEffort,
            ip: infra.map(|_| "10.244.1.5".parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST)),
            infra_pid: infra,
            host_veth: None,
            cgroup: String::new(),
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, (state, restart_count))| testbed_api::ContainerStatus {
                    name: format!("c{i}"),
                    ready: matches!(state, Cs::Running { .. }),
                    started: matches!(state, Cs::Running { .. }),
                    state,
                    restart_count,
                    last_state: None,
                    cgroup: String::new(),
                })
                .collect(),
        }
    }
    fn conds(s: &PodStatus) -> Vec<(String, String)> {
        s.conditions.iter().map(|c| (c.type_.clone(), c.status.clone())).collect()
    }

    #[test]
    fn running_pod_is_ready_with_ip_and_container_states() {
        let mut node = node_pod(vec![(Cs::Running { pid: 7 }, 0), (Cs::Running { pid: 8 }, 2)], Some(5));
        let s = compute(&Pod::default(), Some(&node), None, Some("10.0.0.11"), None, "T1").expect("status");
        assert_eq!(
            (s.phase, s.pod_ip.as_deref(), s.host_ip.as_deref()),
            (Some(PodPhase::Running), Some("10.244.1.5"), Some("10.0.0.11"))
        );
        assert!(conds(&s).iter().all(|(_, v)| v == "True"), "{:?}", conds(&s));
        assert_eq!(s.container_statuses[1].restart_count, 2);
        assert_eq!(s.container_statuses[0].state.running.as_ref().and_then(|r| r.started_at.as_deref()), Some("T1"));

        // Nothing changed: the same status, times included, so the loop writes nothing.
        let again = compute(&Pod::default(), Some(&node), None, Some("10.0.0.11"), Some(&s), "T2");
        assert_eq!(again.as_ref(), Some(&s));

        // A restart of c1: it waits, the pod is not ready since now, c0 keeps its start time.
        node.containers[1].state = Cs::Waiting { reason: "CrashLoopBackOff".into() };
        node.containers[1].restart_count = 3;
        let later = compute(&Pod::default(), Some(&node), None, Some("10.0.0.11"), Some(&s), "T3").expect("status");
        let ready = later.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready");
        assert_eq!((ready.status.as_str(), ready.last_transition_time.as_deref()), ("False", Some("T3")));
        assert_eq!(
            later.container_statuses[0].state.running.as_ref().and_then(|r| r.started_at.as_deref()),
            Some("T1")
        );
        assert_eq!(
            later.container_statuses[1].state.waiting.as_ref().and_then(|w| w.reason.as_deref()),
            Some("CrashLoopBackOff")
        );
    }

    #[test]
    fn finished_pending_rejected_and_unknown_pods() {
        let mut node = node_pod(vec![(Cs::Terminated { exit_code: 1, reason: "Error".into() }, 0)], Some(5));
        node.phase = testbed_api::PodPhase::Failed;
        let s = compute(&Pod::default(), Some(&node), None, None, None, "T").expect("status");
        assert_eq!(s.phase, Some(PodPhase::Failed));
        assert_eq!(s.container_statuses[0].state.terminated.as_ref().map(|t| t.exit_code), Some(1));
        assert_eq!(conds(&s)[3], ("Ready".to_string(), "False".to_string()));

        let creating = node_pod(vec![(Cs::Waiting { reason: "ContainerCreating".into() }, 0)], None);
        let s = compute(&Pod::default(), Some(&creating), None, None, None, "T").expect("status");
        assert_eq!(conds(&s)[1], ("Initialized".to_string(), "False".to_string()));

        let rejected = Note::Rejected("spec.containers[0].command: empty".into());
        let s = compute(&Pod::default(), None, Some(&rejected), None, None, "T").expect("status");
        assert_eq!(
            (s.phase, s.message.as_deref()),
            (Some(PodPhase::Failed), Some("spec.containers[0].command: empty"))
        );
        assert_eq!(compute(&Pod::default(), None, None, None, None, "T"), None);
        // The patch clears what the new status does not have.
        assert_eq!(patch_body(&s)["podIP"], serde_json::Value::Null);
    }
}
