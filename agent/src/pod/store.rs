//! Persistence and re-adoption: the NodeSpec and the pod records on disk, and what a starting agent does with
//! them. Pods keep running across an agent restart (infra processes and launchers are not tied to the agent's
//! life); the new agent adopts every pod whose infra process is still alive and ours, watches adopted
//! launchers by polling /proc and reads their exit status from the exit file they write. A pod whose infra
//! process is gone is torn down and created again from its spec, unless it has finished.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;
use testbed_api::{ContainerState, NodeSpec};

use super::phase::should_restart;
use super::processes::PodProcess;
use super::record::{Pod, PodRecord};
use super::supervise::Start;
use super::{io, lock, Agent, AgentError, Result, RECONCILE_PERIOD};

pub(super) fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let data =
        serde_json::to_vec_pretty(value).map_err(|e| AgentError::Failed(format!("encode {}: {e}", path.display())))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, data).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("rename {}", path.display())))
}

impl Agent {
    pub(super) fn node_file(&self) -> PathBuf {
        self.cfg.state_dir.join("node.json")
    }
    pub(super) fn pod_file(&self, pod: &str) -> PathBuf {
        self.cfg.state_dir.join("pods").join(format!("{pod}.json"))
    }
    /// Logs and exit files of the pod's containers.
    pub(super) fn pod_dir(&self, pod: &str) -> PathBuf {
        self.cfg.state_dir.join("pods").join(pod)
    }

    /// Where a container's stdout and stderr go (the launcher appends) and `testbed logs` reads them.
    pub(super) fn log_path(&self, pod: &str, container: &str) -> PathBuf {
        self.pod_dir(pod).join(format!("{container}.log"))
    }
    /// The log of the container's instance before its last restart (`testbed logs --previous`). A container
    /// name is a DNS label, without dots, so no container's own log can be named so.
    pub(super) fn previous_log_path(&self, pod: &str, container: &str) -> PathBuf {
        self.pod_dir(pod).join(format!("{container}.previous.log"))
    }

    /// Re-applies the stored NodeSpec, re-adopts the stored pods and takes back the unfinished teardowns
    /// (agent start).
    pub async fn restore(self: &Arc<Self>) {
        match std::fs::read(self.node_file()) {
            Ok(data) => match serde_json::from_slice::<NodeSpec>(&data) {
                // On failure apply_node keeps the spec, so the periodic reconcile retries it.
                Ok(spec) => {
                    if let Err(e) = self.apply_node(spec).await {
                        tracing::error!("re-applying the stored NodeSpec: {e}");
                    }
                }
                Err(e) => tracing::error!("{}: {e}", self.node_file().display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!("{}: {e}", self.node_file().display()),
        }
        self.load_unfinished();
        let Ok(entries) = std::fs::read_dir(self.cfg.state_dir.join("pods")) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let record = match std::fs::read(&path).map(|d| serde_json::from_slice::<PodRecord>(&d)) {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::error!("{}: {e}; ignoring it", path.display());
                    continue;
                }
                Err(e) => {
                    tracing::error!("{}: {e}", path.display());
                    continue;
                }
            };
            self.readopt(record).await;
        }
    }

    /// Takes back a pod a previous agent ran, as its record says: adopts its live processes, or settles
    /// or recreates it when its infra process is gone.
    async fn readopt(self: &Arc<Self>, mut record: PodRecord) {
        let name = record.spec.name.clone();
        let alive = record.infra_pid.is_some_and(|pid| self.processes.is_ours(pid, PodProcess::Infra { pod: &name }));
        if !alive && !record.sandbox_lost {
            if let Some(launchers) = record.settle_after_lost_sandbox() {
                tracing::warn!(pod = %name, "infra process gone while the agent was down: the pod has run and stays finished");
                self.stop_lost_sandbox(&record.spec, &launchers).await;
            } else {
                tracing::warn!(pod = %name, "infra process gone while the agent was down: recreating the pod");
                if let Err(e) = self.teardown_or_keep(&record).await {
                    tracing::error!(pod = %name, "removing what is left of the lost sandbox: {e}");
                }
                if let Err(e) = self.create_pod(record.spec.clone()).await {
                    tracing::error!(pod = %name, "recreating: {e}; retrying every {RECONCILE_PERIOD:?}");
                    self.keep_pending(record.spec);
                }
                return;
            }
        }
        tracing::info!(pod = %name, infra = ?record.infra_pid, lost = record.sandbox_lost, "re-adopted pod");
        let pod = Pod::from_record(record.clone());
        lock(&self.pods).insert(name.clone(), pod.clone());
        if record.sandbox_lost {
            // Finished for good: nothing is started, the record (now settled) is kept until DELETE.
            self.persist(&pod);
            return;
        }
        for (idx, c) in record.containers.iter().enumerate() {
            let start = match (&c.state, c.launcher_pid) {
                (_, Some(pid)) => Start::Adopted(pid),
                (ContainerState::Terminated { exit_code, .. }, None)
                    if !should_restart(record.spec.restart_policy, *exit_code) =>
                {
                    continue
                }
                _ => Start::Fresh,
            };
            self.spawn_supervisor(&pod, idx, start);
        }
    }

    pub(super) fn persist(&self, pod: &Pod) {
        let rec = lock(&pod.record).clone();
        if pod.deleting.load(Ordering::Relaxed) && rec.infra_pid.is_none() {
            return;
        }
        if let Err(e) = write_json_atomic(&self.pod_file(&pod.spec.name), &rec) {
            tracing::error!(pod = %pod.spec.name, "persisting state: {e}");
        }
    }
}
