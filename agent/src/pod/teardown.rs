//! Pod deletion and teardown: stop the containers (SIGTERM, SIGKILL after the grace period), kill the infra
//! process, detach the network, remove cgroups and state files. A teardown that cannot remove the veth, the
//! lease or a cgroup is not a success: the pod leaves the API, but its record stays as `Unfinished` (memory
//! and state_dir/teardown) and the teardown is retried until nothing is left.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use testbed_api::{Leak, LeakKind, PodSpec};

use super::processes::PodProcess;
use super::record::{container_pid, Pod, PodRecord};
use super::store::write_json_atomic;
use super::{container_cgroup, infra_cgroup, lock, pod_cgroup, Agent, AgentError, Result};
use crate::net::NetError;

/// Directory below state_dir of the `Unfinished` teardowns, one `<pod>.json` each: apart from `pods/`, whose
/// records are pods to re-adopt, and where a pod of the same name may be kept Pending meanwhile.
pub(super) const UNFINISHED_DIR: &str = "teardown";

/// A deleted pod whose teardown left something behind: what is needed to retry it, and what is left.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Unfinished {
    record: PodRecord,
    leaks: Vec<Leak>,
}

/// How long supervisors may take to stop after their launchers were SIGKILLed, before they are aborted.
const SUPERVISOR_STOP_WAIT: Duration = Duration::from_secs(10);
/// How often, and how many times, a container is checked for having died with its launcher (2 s in all).
const CONTAINER_EXIT_POLL: Duration = Duration::from_millis(5);
const CONTAINER_EXIT_POLLS: u32 = 400;

impl Agent {
    /// Stops and removes `pod`; the caller holds its name lock. The pod leaves `pods` either way; what its
    /// teardown could not remove is `AgentError::Leaked` and stays to be retried.
    pub(super) async fn delete_locked(&self, pod: &Pod, grace: Duration) -> Result<()> {
        pod.deleting.store(true, Ordering::SeqCst);
        pod.wake.notify_waiters();
        self.stop_containers(pod, grace).await;
        let record = lock(&pod.record).clone();
        let result = self.teardown_or_keep(&record).await;
        lock(&self.pods).remove(&pod.spec.name);
        result
    }

    /// Tears down what `record` describes; when something is left, keeps the record as `Unfinished` (memory
    /// and disk) and answers `Leaked`, otherwise forgets any earlier unfinished teardown of the name.
    pub(super) async fn teardown_or_keep(&self, record: &PodRecord) -> Result<()> {
        let name = &record.spec.name;
        let leaks = self.teardown(record).await;
        let file = self.unfinished_file(name);
        if leaks.is_empty() {
            lock(&self.unfinished).remove(name);
            let _ = std::fs::remove_file(file);
            return Ok(());
        }
        tracing::error!(pod = %name, ?leaks, "teardown left these behind; retrying every reconcile pass");
        let entry = Unfinished { record: record.clone(), leaks: leaks.clone() };
        if let Err(e) = write_json_atomic(&file, &entry) {
            tracing::error!(pod = %name, "persisting the unfinished teardown: {e}");
        }
        lock(&self.unfinished).insert(name.clone(), entry);
        Err(AgentError::Leaked { pod: name.clone(), leaks })
    }

    fn unfinished_file(&self, pod: &str) -> std::path::PathBuf {
        self.cfg.state_dir.join(UNFINISHED_DIR).join(format!("{pod}.json"))
    }

    /// Retries the unfinished teardown of `name`, if there is one; the caller holds the name lock.
    pub(super) async fn finish_teardown(&self, name: &str) -> Result<()> {
        let entry = lock(&self.unfinished).get(name).cloned();
        match entry {
            Some(entry) => self.teardown_or_keep(&entry.record).await,
            None => Ok(()),
        }
    }

    /// Reconcile pass: retries every unfinished teardown.
    pub(super) async fn finish_teardowns(self: &Arc<Self>) {
        let names: Vec<String> = lock(&self.unfinished).keys().cloned().collect();
        for name in names {
            let _name = self.lock_name(&name).await;
            match self.finish_teardown(&name).await {
                Ok(()) => tracing::info!(pod = %name, "unfinished teardown completed"),
                Err(e) => tracing::debug!(pod = %name, "{e}"),
            }
        }
    }

    /// Reads back the unfinished teardowns a previous agent left (agent start), for the reconcile to retry.
    pub(super) fn load_unfinished(&self) {
        let Ok(entries) = std::fs::read_dir(self.cfg.state_dir.join(UNFINISHED_DIR)) else { return };
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path).map(|d| serde_json::from_slice::<Unfinished>(&d)) {
                Ok(Ok(entry)) => {
                    lock(&self.unfinished).insert(entry.record.spec.name.clone(), entry);
                }
                Ok(Err(e)) => tracing::error!("{}: {e}; ignoring it", path.display()),
                Err(e) => tracing::error!("{}: {e}", path.display()),
            }
        }
    }

    /// SIGTERM to every launcher (forwarded to the container), SIGKILL after the grace period. Killing a
    /// launcher kills its container (PDEATHSIG), and with it the container's PID namespace.
    async fn stop_containers(&self, pod: &Pod, grace: Duration) {
        let (targets, container_pids): (Vec<(String, u32)>, Vec<u32>) = {
            let rec = lock(&pod.record);
            let launchers = rec.containers.iter().filter_map(|c| c.launcher_pid.map(|p| (c.name.clone(), p))).collect();
            let pids = rec.containers.iter().filter_map(|c| container_pid(&c.state)).collect();
            (launchers, pids)
        };
        let launcher = |container| PodProcess::Launcher { pod: &pod.spec.name, container };
        for (c, pid) in &targets {
            self.processes.signal(*pid, launcher(c), Signal::SIGTERM);
        }
        let mut tasks = std::mem::take(&mut *lock(&pod.tasks));
        let all = futures::future::join_all(tasks.iter_mut());
        if tokio::time::timeout(grace, all).await.is_err() {
            for (c, pid) in &targets {
                self.processes.signal(*pid, launcher(c), Signal::SIGKILL);
            }
            // The first wait may have seen some of them end: a JoinHandle polled again after it has answered
            // panics, so only the unfinished ones are waited for again.
            tasks.retain(|t| !t.is_finished());
            let all = futures::future::join_all(tasks.iter_mut());
            if tokio::time::timeout(SUPERVISOR_STOP_WAIT, all).await.is_err() {
                tracing::error!(pod = %pod.spec.name, "container supervisors did not stop; aborting them");
                for t in &tasks {
                    t.abort();
                }
            }
        }
        self.kill_image_containers(&pod.spec);
        // The containers die of their launcher's death (PDEATHSIG) a moment later; wait for that so a 204
        // means they are gone.
        for pid in container_pids {
            for _ in 0..CONTAINER_EXIT_POLLS {
                if !self.processes.is_running(pid) {
                    break;
                }
                tokio::time::sleep(CONTAINER_EXIT_POLL).await;
            }
        }
    }

    /// A container with an image is not its launcher's child but adopted (crun set it up), so it has no
    /// parent-death signal: what is left in its cgroup once the launcher is stopped is killed here.
    fn kill_image_containers(&self, spec: &PodSpec) {
        for c in spec.containers.iter().filter(|c| c.image.is_some()) {
            crate::cgroups::kill_members(&self.cgroups.procs_files(&container_cgroup(&spec.name, &c.name)));
        }
    }

    /// What is left of a finished pod whose sandbox is gone: its launchers (with their containers) and its
    /// network (the lease goes back to the pool). Cgroups, record and logs stay until the pod is deleted.
    pub(super) async fn stop_lost_sandbox(&self, spec: &PodSpec, launchers: &[(String, u32)]) {
        for (container, pid) in launchers {
            self.processes.kill(*pid, PodProcess::Launcher { pod: &spec.name, container }).await;
        }
        if !spec.host_network {
            if let Err(e) = self.net.detach_pod(&spec.name).await {
                tracing::error!(pod = %spec.name, "detach: {e}");
            }
        }
    }

    /// Undoes whatever exists of a pod: launchers, infra process, network attachment, cgroups, state files.
    /// Every step runs even when an earlier one failed; returns what could not be removed. Each step is
    /// idempotent (a missing veth, lease or cgroup is fine, a PID is checked before it is killed), which is
    /// what lets an unfinished teardown simply run again.
    pub(super) async fn teardown(&self, record: &PodRecord) -> Vec<Leak> {
        let name = &record.spec.name;
        let mut leaks = Vec::new();
        for c in &record.containers {
            if let Some(pid) = c.launcher_pid {
                self.processes.kill(pid, PodProcess::Launcher { pod: name, container: &c.name }).await;
            }
        }
        self.kill_image_containers(&record.spec);
        if let Some(pid) = record.infra_pid {
            self.processes.kill(pid, PodProcess::Infra { pod: name }).await;
        }
        if !record.spec.host_network {
            if let Err(e) = self.net.detach_pod(name).await {
                leaks.extend(network_leaks(record, &e));
            }
        }
        let mut rels: Vec<String> = record.spec.containers.iter().map(|c| container_cgroup(name, &c.name)).collect();
        rels.push(infra_cgroup(name));
        rels.push(pod_cgroup(name));
        for rel in rels {
            if let Err(e) = crate::cgroups::remove_when_empty(self.cgroups.as_ref(), &rel).await {
                let path = self.cgroups.display_path(&rel);
                leaks.push(Leak { kind: LeakKind::Cgroup, name: path, error: e.to_string() });
            }
        }
        let _ = std::fs::remove_file(self.pod_file(name));
        super::volumes::unmount_memory(&self.pod_dir(name), &record.spec);
        let _ = std::fs::remove_dir_all(self.pod_dir(name));
        leaks
    }
}

/// What a failed `detach_pod` left: it removes the veth, then releases the lease. Only the release does file
/// I/O (`NetError::Io`), so any other error stopped it at the veth, before the release: the lease is kept
/// too, rightly, as the address may still be in use behind the veth.
fn network_leaks(record: &PodRecord, e: &NetError) -> Vec<Leak> {
    let name = &record.spec.name;
    let lease = Leak {
        kind: LeakKind::Lease,
        name: record.ip.map_or_else(|| format!("of pod {name}"), |ip| ip.to_string()),
        error: e.to_string(),
    };
    if matches!(e, NetError::Io { .. }) {
        return vec![lease];
    }
    let veth = record.host_veth.clone().unwrap_or_else(|| crate::net::host_veth_name(name));
    vec![Leak { kind: LeakKind::Veth, name: veth, error: e.to_string() }, lease]
}
