//! What the agent knows about a pod: the record persisted in state_dir/pods/<name>.json and the live `Pod`
//! around it, and the kubelet's rule for a pod whose sandbox is gone.

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use testbed_api::{ContainerState, PodPhase, PodSpec, QosClass, RestartPolicy};

use super::phase::pod_phase;
use crate::qos::qos_class;

/// What is persisted per pod in state_dir/pods/<name>.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PodRecord {
    pub(super) spec: PodSpec,
    pub(super) infra_pid: Option<u32>,
    pub(super) ip: Option<Ipv4Addr>,
    pub(super) host_veth: Option<String>,
    pub(super) containers: Vec<ContainerRecord>,
    /// The sandbox is gone and the pod stays in its final phase (see `settle_after_lost_sandbox`).
    #[serde(default)]
    pub(super) sandbox_lost: bool,
}

impl PodRecord {
    /// A record of `spec` alone: no sandbox, no containers (what `teardown` needs to undo a sandbox).
    pub(super) fn without_sandbox(spec: &PodSpec) -> PodRecord {
        PodRecord {
            spec: spec.clone(),
            infra_pid: None,
            ip: None,
            host_veth: None,
            containers: vec![],
            sandbox_lost: false,
        }
    }

    /// The kubelet's rule for a pod whose sandbox is gone (computePodActions): a pod that has finished, or a
    /// restartPolicy Never pod whose containers have run, is not started again. Its containers that were
    /// running end as Terminated (137, Error) and the pod keeps its final phase. Returns the launchers still
    /// recorded (container, PID), to be stopped, or None when the pod is to be recreated instead.
    pub(super) fn settle_after_lost_sandbox(&mut self) -> Option<Vec<(String, u32)>> {
        let policy = self.spec.restart_policy;
        let finished = matches!(
            pod_phase(policy, self.containers.iter().map(|c| &c.state)),
            PodPhase::Succeeded | PodPhase::Failed
        );
        let ran =
            self.containers.iter().any(|c| c.restart_count > 0 || !matches!(c.state, ContainerState::Waiting { .. }));
        if !(finished || policy == RestartPolicy::Never && ran) {
            return None;
        }
        let mut launchers = Vec::new();
        for c in &mut self.containers {
            if matches!(c.state, ContainerState::Running { .. }) {
                c.state = ContainerState::Terminated { exit_code: 137, reason: "Error".into() };
            }
            if let Some(pid) = c.launcher_pid.take() {
                launchers.push((c.name.clone(), pid));
            }
        }
        self.sandbox_lost = true;
        Some(launchers)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ContainerRecord {
    pub(super) name: String,
    pub(super) state: ContainerState,
    pub(super) restart_count: u32,
    pub(super) launcher_pid: Option<u32>,
    /// memory OOM-kill counter of the container cgroup when it last started.
    #[serde(default)]
    pub(super) oom_baseline: u64,
    /// How the previous run ended, once the container was restarted (Kubernetes' `lastState`).
    #[serde(default)]
    pub(super) last_terminated: Option<ContainerState>,
    /// This run's startup probe passed (or it has none). Not persisted: an adopted run is probed afresh.
    #[serde(skip)]
    pub(super) started: bool,
    /// This run's readiness probe passes (or it has none); not persisted either.
    #[serde(skip)]
    pub(super) ready: bool,
}

/// A pod the agent runs: its spec, its record (what changes) and its container supervisors.
pub(super) struct Pod {
    pub(super) spec: PodSpec,
    pub(super) qos: QosClass,
    pub(super) record: Mutex<PodRecord>,
    /// Set when a delete begins: supervisors stop restarting and nothing is persisted after the teardown.
    pub(super) deleting: AtomicBool,
    /// Cuts a supervisor's back-off sleep short (delete).
    pub(super) wake: tokio::sync::Notify,
    pub(super) tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Pod {
    /// A pod without a sandbox yet, its containers waiting with `reason`.
    pub(super) fn pending(spec: PodSpec, reason: &str) -> Arc<Pod> {
        let mut record = PodRecord::without_sandbox(&spec);
        record.containers = spec
            .containers
            .iter()
            .map(|c| ContainerRecord {
                name: c.name.clone(),
                state: ContainerState::Waiting { reason: reason.into() },
                restart_count: 0,
                launcher_pid: None,
                oom_baseline: 0,
                last_terminated: None,
                started: false,
                ready: false,
            })
            .collect();
        Pod::from_record(record)
    }

    /// A pod as `record` (read back from disk, or new) describes it.
    pub(super) fn from_record(record: PodRecord) -> Arc<Pod> {
        Arc::new(Pod {
            qos: qos_class(&record.spec),
            spec: record.spec.clone(),
            record: Mutex::new(record),
            deleting: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            tasks: Mutex::new(Vec::new()),
        })
    }
}

/// The container's main process while it runs.
pub(super) fn container_pid(state: &ContainerState) -> Option<u32> {
    match state {
        ContainerState::Running { pid } if *pid > 0 => Some(*pid),
        _ => None,
    }
}
