//! Pod deletion and teardown: stop the containers (SIGTERM, SIGKILL after the grace period), kill the infra
//! process, detach the network, remove cgroups and state files.

use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::Signal;
use testbed_api::PodSpec;

use super::processes::PodProcess;
use super::record::{container_pid, Pod, PodRecord};
use super::{container_cgroup, infra_cgroup, lock, pod_cgroup, Agent};

/// How long supervisors may take to stop after their launchers were SIGKILLed, before they are aborted.
const SUPERVISOR_STOP_WAIT: Duration = Duration::from_secs(10);
/// How often, and how many times, a container is checked for having died with its launcher (2 s in all).
const CONTAINER_EXIT_POLL: Duration = Duration::from_millis(5);
const CONTAINER_EXIT_POLLS: u32 = 400;

impl Agent {
    /// Stops and removes `pod`; the caller holds its name lock.
    pub(super) async fn delete_locked(&self, pod: &Pod, grace: Duration) {
        pod.deleting.store(true, Ordering::SeqCst);
        pod.wake.notify_waiters();
        self.stop_containers(pod, grace).await;
        let record = lock(&pod.record).clone();
        self.teardown(&record).await;
        lock(&self.pods).remove(&pod.spec.name);
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
            let all = futures::future::join_all(tasks.iter_mut());
            if tokio::time::timeout(SUPERVISOR_STOP_WAIT, all).await.is_err() {
                tracing::error!(pod = %pod.spec.name, "container supervisors did not stop; aborting them");
                for t in &tasks {
                    t.abort();
                }
            }
        }
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
    /// Every step runs even when an earlier one failed; failures are logged.
    pub(super) async fn teardown(&self, record: &PodRecord) {
        let name = &record.spec.name;
        for c in &record.containers {
            if let Some(pid) = c.launcher_pid {
                self.processes.kill(pid, PodProcess::Launcher { pod: name, container: &c.name }).await;
            }
        }
        if let Some(pid) = record.infra_pid {
            self.processes.kill(pid, PodProcess::Infra { pod: name }).await;
        }
        if !record.spec.host_network {
            if let Err(e) = self.net.detach_pod(name).await {
                tracing::error!(pod = %name, "detach: {e}");
            }
        }
        let mut rels: Vec<String> = record.spec.containers.iter().map(|c| container_cgroup(name, &c.name)).collect();
        rels.push(infra_cgroup(name));
        rels.push(pod_cgroup(name));
        for rel in rels {
            if let Err(e) = crate::cgroups::remove_when_empty(self.cgroups.as_ref(), &rel).await {
                tracing::error!(pod = %name, "remove cgroup: {e}");
            }
        }
        let _ = std::fs::remove_file(self.pod_file(name));
        let _ = std::fs::remove_dir_all(self.pod_dir(name));
    }
}
