//! Probing one run of a container as the kubelet's probe workers do (pkg/kubelet/prober/worker.go): each
//! probe ticks every `periodSeconds` from `initialDelaySeconds` after the start; liveness and readiness are
//! skipped until the startup probe has succeeded, the startup probe stops once it has; a liveness or startup
//! result of failure kills the container (SIGTERM, SIGKILL after the grace), which the supervisor then
//! restarts as the restartPolicy says. Readiness and startup results are kept in the container's record,
//! from which the pod's `Ready` condition is computed. The results count with `probe_state::ProbeCounter`.

use std::future::Future;
use std::time::Duration;

use futures::FutureExt as _;
use nix::sys::signal::Signal;
use testbed_api::probe::{Probe, ProbeKind};
use tokio::time::{Instant, MissedTickBehavior};

use super::probe_run::ProbeTarget;
use super::probe_state::{verdict, ProbeCounter, Verdict};
use super::processes::PodProcess;
use super::record::Pod;
use super::{lock, Agent};

impl Agent {
    /// Waits until the container run that `exit` ends has ended, probing it meanwhile; returns its exit code.
    pub(super) async fn run_probed(&self, pod: &Pod, idx: usize, exit: impl Future<Output = i32>) -> i32 {
        let spec = &pod.spec.containers[idx];
        {
            let mut rec = lock(&pod.record);
            let c = &mut rec.containers[idx];
            c.started = spec.probes.startup_probe.is_none();
            c.ready = spec.probes.readiness_probe.is_none();
        }
        let mut exit = std::pin::pin!(exit);
        if spec.probes.is_empty() {
            return exit.await;
        }
        let started_at = Instant::now();
        let workers =
            spec.probes.iter().map(|(kind, probe)| self.probe_worker(pod, idx, kind, probe, started_at).boxed());
        let (kind, probe) = tokio::select! {
            code = &mut exit => return code,
            (failed, _, _) = futures::future::select_all(workers) => failed,
        };
        tracing::warn!(
            pod = %pod.spec.name, container = %spec.name,
            "{} failed {} times in a row: killing the container", kind.field(), probe.failure_threshold()
        );
        let grace = probe
            .termination_grace_period_seconds
            .map_or(self.cfg.kill_grace, |s| Duration::from_secs(s.max(1) as u64));
        let launcher = lock(&pod.record).containers[idx].launcher_pid;
        let which = PodProcess::Launcher { pod: &pod.spec.name, container: &spec.name };
        if let Some(pid) = launcher {
            self.processes.signal(pid, which, Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, &mut exit).await {
            Ok(code) => code,
            Err(_) => {
                if let Some(pid) = launcher {
                    self.processes.signal(pid, which, Signal::SIGKILL);
                }
                exit.await
            }
        }
    }

    /// One probe of one container run; returns only when its result kills the container.
    async fn probe_worker<'p>(
        &self,
        pod: &Pod,
        idx: usize,
        kind: ProbeKind,
        probe: &'p Probe,
        started_at: Instant,
    ) -> (ProbeKind, &'p Probe) {
        let name = &pod.spec.containers[idx].name;
        let mut counter = ProbeCounter::new(probe);
        let mut ticks = tokio::time::interval_at(started_at + probe.initial_delay(), probe.period());
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let (started, ip) = {
                let rec = lock(&pod.record);
                (rec.containers[idx].started, rec.ip)
            };
            match kind {
                ProbeKind::Startup if started => std::future::pending::<()>().await,
                ProbeKind::Liveness | ProbeKind::Readiness if !started => continue,
                _ => {}
            }
            let exec = match probe.exec {
                Some(_) => match self.exec_target(&pod.spec.name, Some(name)) {
                    Ok(target) => Some(target),
                    Err(e) => {
                        tracing::debug!(pod = %pod.spec.name, container = %name, "{}: {e}", kind.field());
                        continue;
                    }
                },
                None => None,
            };
            let result = self.processes.probe(ProbeTarget { container: name, kind, probe, exec, ip }).await;
            if let Err(why) = &result {
                tracing::debug!(pod = %pod.spec.name, "probe failed: {why}");
            }
            let Some(result) = counter.observe(result.is_ok()) else { continue };
            match verdict(kind, result) {
                Verdict::Kill => return (kind, probe),
                Verdict::Ready(ready) => {
                    let changed = std::mem::replace(&mut lock(&pod.record).containers[idx].ready, ready) != ready;
                    if changed {
                        tracing::info!(pod = %pod.spec.name, container = %name, ready, "readiness changed");
                    }
                }
                Verdict::Started => lock(&pod.record).containers[idx].started = true,
                Verdict::None => {}
            }
        }
    }
}
