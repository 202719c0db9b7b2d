//! The container state machine and pod phase, as the kubelet computes them (pkg/kubelet/kubelet_pods.go
//! getPhase), reduced to what testbed pods can be in.

use testbed_api::{ContainerState, PodPhase, RestartPolicy};

/// The waiting reason of a container whose restart the crash back-off holds back.
pub const CRASH_LOOP_BACK_OFF: &str = "CrashLoopBackOff";
/// The waiting reason of a container whose image the node does not have (nothing is pulled): the kubelet's
/// under `imagePullPolicy: Never`.
pub const ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";

/// Reason of a terminated container: OOMKilled wins (the kernel killed it for memory.max), then Completed
/// for exit 0, else Error.
pub fn terminated_reason(exit_code: i32, oom_killed: bool) -> &'static str {
    if oom_killed {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

/// Whether a container that exited with `exit_code` is started again under `policy`.
pub fn should_restart(policy: RestartPolicy, exit_code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit_code != 0,
        RestartPolicy::Never => false,
    }
}

/// Pending while a container has not started yet; Succeeded/Failed once every container has terminated for
/// good (all exit 0 / at least one failure); Running otherwise (including containers waiting to restart).
pub fn pod_phase<'a>(policy: RestartPolicy, states: impl IntoIterator<Item = &'a ContainerState>) -> PodPhase {
    let mut all_final = true;
    let mut any_failed = false;
    for state in states {
        match state {
            // The kubelet counts a waiting container that has run before as stopped, not waiting: under a
            // policy that restarts it the pod stays Running.
            ContainerState::Waiting { reason } if reason == CRASH_LOOP_BACK_OFF => all_final = false,
            ContainerState::Waiting { .. } => return PodPhase::Pending,
            ContainerState::Running { .. } => all_final = false,
            ContainerState::Terminated { exit_code, .. } => {
                if should_restart(policy, *exit_code) {
                    all_final = false;
                }
                any_failed |= *exit_code != 0;
            }
        }
    }
    match (all_final, any_failed) {
        (false, _) => PodPhase::Running,
        (true, false) => PodPhase::Succeeded,
        (true, true) => PodPhase::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting() -> ContainerState {
        ContainerState::Waiting { reason: "ContainerCreating".into() }
    }
    fn running() -> ContainerState {
        ContainerState::Running { pid: 7 }
    }
    fn exited(code: i32) -> ContainerState {
        ContainerState::Terminated { exit_code: code, reason: terminated_reason(code, false).into() }
    }

    #[test]
    fn reasons() {
        assert_eq!(terminated_reason(0, false), "Completed");
        assert_eq!(terminated_reason(1, false), "Error");
        assert_eq!(terminated_reason(137, true), "OOMKilled");
        assert_eq!(terminated_reason(137, false), "Error");
    }

    #[test]
    fn phases_follow_restart_policy() {
        use RestartPolicy::*;
        assert_eq!(pod_phase(Always, &[waiting(), running()]), PodPhase::Pending);
        assert_eq!(pod_phase(Never, &[running(), exited(0)]), PodPhase::Running);
        assert_eq!(pod_phase(Never, &[exited(0), exited(0)]), PodPhase::Succeeded);
        assert_eq!(pod_phase(Never, &[exited(0), exited(2)]), PodPhase::Failed);
        assert_eq!(pod_phase(OnFailure, &[exited(0)]), PodPhase::Succeeded);
        // A failed container under OnFailure is restarted: the pod keeps running.
        assert_eq!(pod_phase(OnFailure, &[exited(1)]), PodPhase::Running);
        assert_eq!(pod_phase(Always, &[exited(0)]), PodPhase::Running);
        assert_eq!(pod_phase(Always, &[exited(1)]), PodPhase::Running);
    }

    #[test]
    fn restart_decisions() {
        assert!(should_restart(RestartPolicy::Always, 0));
        assert!(!should_restart(RestartPolicy::OnFailure, 0));
        assert!(should_restart(RestartPolicy::OnFailure, 137));
        assert!(!should_restart(RestartPolicy::Never, 1));
    }
}
