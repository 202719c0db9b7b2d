//! Container supervision: wait for a container to exit (probing it meanwhile, `probing`), record how it
//! ended and restart it as the pod's restartPolicy says, with the kubelet's crash back-off
//! (`probe_state::RestartBackOff`), waiting as `CrashLoopBackOff` meanwhile.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use testbed_api::ContainerState;
use tokio::time::Instant;

use super::phase::{should_restart, terminated_reason, CRASH_LOOP_BACK_OFF, ERR_IMAGE_NEVER_PULL};
use super::probe_state::RestartBackOff;
use super::processes::{ExitFuture, PodProcess};
use super::record::Pod;
use super::{container_cgroup, lock, Agent, AgentError};

/// How often the exit of a launcher left by a previous agent (not our child) is checked for.
const ADOPTED_POLL: Duration = Duration::from_millis(500);
/// Exit code recorded when a container could not be started, or an adopted launcher left no exit file.
pub(super) const START_FAILED: i32 = 128;
/// How long a container whose image the node lacks waits before the store is looked at again (the
/// kubelet's first image back-off); it has never run, so no restart is counted and no policy applies.
const IMAGE_RETRY: Duration = Duration::from_secs(10);
const EXIT_UNKNOWN: i32 = 255;

/// How a container supervisor begins.
pub(super) enum Start {
    Fresh,
    /// A launcher we just started: what resolves when it exits.
    Started(ExitFuture),
    /// A launcher left by a previous agent (maybe already gone).
    Adopted(u32),
    /// Not started: the image is not in the node's store; look again after `IMAGE_RETRY`.
    ImageMissing,
}

impl Agent {
    pub(super) fn mark_terminated(&self, pod: &Pod, idx: usize, exit_code: i32, reason: &str) {
        {
            let mut rec = lock(&pod.record);
            let cr = &mut rec.containers[idx];
            cr.state = ContainerState::Terminated { exit_code, reason: reason.into() };
            cr.launcher_pid = None;
            cr.started = false;
            cr.ready = false;
        }
        self.persist(pod);
    }

    /// The container has not started because its image is not in the node's store: it waits.
    pub(super) fn mark_image_missing(&self, pod: &Pod, idx: usize) {
        {
            let mut rec = lock(&pod.record);
            let cr = &mut rec.containers[idx];
            cr.state = ContainerState::Waiting { reason: ERR_IMAGE_NEVER_PULL.into() };
            cr.launcher_pid = None;
        }
        self.persist(pod);
    }

    pub(super) fn spawn_supervisor(self: &Arc<Self>, pod: &Arc<Pod>, idx: usize, start: Start) {
        let handle = tokio::spawn(self.clone().supervise(pod.clone(), idx, start));
        lock(&pod.tasks).push(handle);
    }

    /// Watches one container and restarts it according to the pod's restart policy, with the kubelet's
    /// back-off (immediate, then 10 s doubling to 5 min).
    async fn supervise(self: Arc<Self>, pod: Arc<Pod>, idx: usize, mut start: Start) {
        let name = pod.spec.containers[idx].name.clone();
        let rel = container_cgroup(&pod.spec.name, &name);
        let mut backoff = RestartBackOff::default();
        loop {
            let exit = match std::mem::replace(&mut start, Start::Fresh) {
                Start::Adopted(launcher) => {
                    Some(self.run_probed(&pod, idx, self.wait_adopted(&pod, &name, launcher)).await)
                }
                Start::Started(exit) => Some(self.run_probed(&pod, idx, exit).await),
                Start::ImageMissing => {
                    tokio::select! {
                        _ = tokio::time::sleep(IMAGE_RETRY) => {}
                        _ = pod.wake.notified() => {}
                    }
                    continue;
                }
                Start::Fresh => {
                    if pod.deleting.load(Ordering::Relaxed) {
                        return;
                    }
                    match self.start_container(&pod, idx).await {
                        Ok(exit) => Some(self.run_probed(&pod, idx, exit).await),
                        Err(AgentError::ImageNeverPull(message)) => {
                            tracing::warn!(pod = %pod.spec.name, container = %name, "{message}; retried in 10 s");
                            self.mark_image_missing(&pod, idx);
                            start = Start::ImageMissing;
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(pod = %pod.spec.name, container = %name, "start: {e}");
                            self.mark_terminated(&pod, idx, START_FAILED, "StartError");
                            None
                        }
                    }
                }
            };
            let code = match exit {
                Some(code) => {
                    let baseline = lock(&pod.record).containers[idx].oom_baseline;
                    let oom = self.cgroups.oom_kills(&rel).map(|n| n > baseline).unwrap_or(false);
                    self.mark_terminated(&pod, idx, code, terminated_reason(code, oom));
                    tracing::info!(pod = %pod.spec.name, container = %name, code, oom, "container exited");
                    code
                }
                None => START_FAILED,
            };
            if pod.deleting.load(Ordering::Relaxed) || !should_restart(pod.spec.restart_policy, code) {
                return;
            }
            let delay = backoff.on_exit(Instant::now());
            {
                let mut rec = lock(&pod.record);
                let cr = &mut rec.containers[idx];
                // The kubelet shows the exit as lastState and, while it holds the restart back, waits.
                cr.last_terminated = Some(cr.state.clone());
                if !delay.is_zero() {
                    cr.state = ContainerState::Waiting { reason: CRASH_LOOP_BACK_OFF.into() };
                }
            }
            self.persist(&pod);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = pod.wake.notified() => {}
            }
            if pod.deleting.load(Ordering::Relaxed) {
                return;
            }
            // The new instance writes a log of its own; the one that ended stays readable as the previous
            // log, as the kubelet keeps it. Under the record's lock, so that a reader sees the log and the
            // restart count that go together.
            let mut rec = lock(&pod.record);
            let (log, previous) = (self.log_path(&pod.spec.name, &name), self.previous_log_path(&pod.spec.name, &name));
            match std::fs::rename(&log, &previous) {
                Ok(()) => {}
                // It wrote nothing: no previous output either.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let _ = std::fs::remove_file(&previous);
                }
                Err(e) => tracing::warn!(pod = %pod.spec.name, container = %name, "keep the previous log: {e}"),
            }
            rec.containers[idx].restart_count += 1;
        }
    }

    /// Waits for a launcher we did not start (previous agent) and reads the exit status it wrote.
    async fn wait_adopted(&self, pod: &Pod, container: &str, launcher: u32) -> i32 {
        let which = PodProcess::Launcher { pod: &pod.spec.name, container };
        while self.processes.is_ours(launcher, which) {
            tokio::time::sleep(ADOPTED_POLL).await;
        }
        let file = self.pod_dir(&pod.spec.name).join(format!("{container}.exit"));
        std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(EXIT_UNKNOWN)
    }
}
