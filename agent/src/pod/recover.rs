//! Pods the reconcile loop brings back: those whose infra process died (lost sandbox), and those the agent
//! could not create again and keeps Pending.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use testbed_api::{ContainerState, PodSpec};

use super::processes::PodProcess;
use super::record::Pod;
use super::{lock, Agent, RECONCILE_PERIOD};

/// Waiting reason of the containers of a pod whose sandbox could not be made again (the kubelet's name for it).
pub(super) const SANDBOX_ERROR: &str = "CreatePodSandboxError";

impl Agent {
    /// A pod whose infra process died has lost its namespaces: like the kubelet on a sandbox change, kill
    /// the pod's containers and create the pod again from its spec (restart counts start over).
    pub(super) async fn recreate_lost_sandboxes(self: &Arc<Self>) {
        let lost: Vec<PodSpec> = lock(&self.pods)
            .values()
            .filter(|p| !p.deleting.load(Ordering::Relaxed))
            .filter(|p| {
                let rec = lock(&p.record);
                !rec.sandbox_lost
                    && rec
                        .infra_pid
                        .is_some_and(|pid| !self.processes.is_ours(pid, PodProcess::Infra { pod: &p.spec.name }))
            })
            .map(|p| p.spec.clone())
            .collect();
        for spec in lost {
            // Under the name lock, and only if the pod is still the one found broken: a DELETE that came
            // first must not see its pod come back.
            let _name = self.lock_name(&spec.name).await;
            let Ok(pod) = self.find(&spec.name) else { continue };
            let infra = lock(&pod.record).infra_pid;
            if pod.spec != spec
                || infra.is_none_or(|pid| self.processes.is_ours(pid, PodProcess::Infra { pod: &spec.name }))
            {
                continue;
            }
            let settled = lock(&pod.record).settle_after_lost_sandbox();
            if let Some(launchers) = settled {
                tracing::warn!(pod = %spec.name, "infra process gone: the pod has run and stays finished");
                self.persist(&pod);
                self.stop_lost_sandbox(&spec, &launchers).await;
                continue;
            }
            tracing::warn!(pod = %spec.name, "infra process gone: recreating the pod");
            if let Err(e) = self.delete_locked(&pod, self.cfg.kill_grace).await {
                // create_locked retries the teardown first and refuses while something is left.
                tracing::error!(pod = %spec.name, "removing the lost sandbox: {e}");
            }
            if let Err(e) = self.create_locked(spec.clone()).await {
                tracing::error!(pod = %spec.name, "recreating: {e}; retrying every {RECONCILE_PERIOD:?}");
                self.keep_pending(spec);
            }
        }
    }

    /// A pod the agent must bring back (after a reboot or a lost sandbox) but could not, say because the
    /// network was not ready: kept visible as Pending, its containers waiting with `SANDBOX_ERROR`, and
    /// retried by the reconcile loop, instead of vanishing with nobody left to retry it.
    pub(super) fn keep_pending(&self, spec: PodSpec) {
        let pod = Pod::pending(spec, SANDBOX_ERROR);
        lock(&self.pods).insert(pod.spec.name.clone(), pod.clone());
        self.persist(&pod);
    }

    /// Tries again to create the pods `keep_pending` holds.
    pub(super) async fn retry_pending_sandboxes(self: &Arc<Self>) {
        let waiting = |p: &Pod| {
            let rec = lock(&p.record);
            rec.infra_pid.is_none()
                && rec
                    .containers
                    .iter()
                    .all(|c| matches!(&c.state, ContainerState::Waiting { reason } if reason == SANDBOX_ERROR))
        };
        let pending: Vec<Arc<Pod>> =
            lock(&self.pods).values().filter(|p| !p.deleting.load(Ordering::Relaxed) && waiting(p)).cloned().collect();
        for pod in pending {
            let _name = self.lock_name(&pod.spec.name).await;
            // Still the same pending pod (no DELETE or POST of this name got in first)?
            let same = self.find(&pod.spec.name).is_ok_and(|p| Arc::ptr_eq(&p, &pod));
            if !same || !waiting(&pod) {
                continue;
            }
            lock(&self.pods).remove(&pod.spec.name);
            match self.create_locked(pod.spec.clone()).await {
                Ok(_) => tracing::info!(pod = %pod.spec.name, "recreated"),
                Err(e) => {
                    tracing::debug!(pod = %pod.spec.name, "recreating: {e}");
                    self.keep_pending(pod.spec.clone());
                }
            }
        }
    }
}
