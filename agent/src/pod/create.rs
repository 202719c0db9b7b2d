//! Pod creation: the sandbox (cgroups, infra process, network attachment), then each container's launcher.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use testbed_api::{ContainerState, PodSpec, PodStatus};

use super::phase::should_restart;
use super::processes::{ExitFuture, LaunchRequest};
use super::record::{Pod, PodRecord};
use super::supervise::{Start, START_FAILED};
use super::{container_cgroup, infra_cgroup, io, lock, pod_cgroup, Agent, AgentError, Result};
use crate::cgroups::CgroupLimits;
use crate::qos::{container_limits, pod_limits};

/// The sandbox of a pod: its infra process and network attachment.
pub struct Sandbox {
    pub infra_pid: u32,
    pub ip: Option<Ipv4Addr>,
    pub host_veth: Option<String>,
}

impl Agent {
    /// `create_pod` for a caller that holds the name lock.
    pub(super) async fn create_locked(self: &Arc<Self>, spec: PodSpec) -> Result<(bool, PodStatus)> {
        if !spec.host_network && lock(&self.node).spec.is_none() {
            return Err(AgentError::Conflict(
                "no NodeSpec applied yet (PUT /v1/node first); only hostNetwork pods can run before".into(),
            ));
        }
        // A deleted pod of this name may have left a veth, lease or cgroup that the new one would trip on.
        if let Err(e) = self.finish_teardown(&spec.name).await {
            return Err(AgentError::Conflict(format!("a deleted pod of this name is not fully removed yet: {e}")));
        }
        let pod = {
            let mut pods = lock(&self.pods);
            // No delete of this name runs now (we hold its lock): an existing pod is a live one.
            if let Some(existing) = pods.get(&spec.name) {
                if existing.spec == spec {
                    let existing = existing.clone();
                    drop(pods);
                    return Ok((false, self.status_of(&existing)));
                }
                return Err(AgentError::Conflict(format!("pod `{}` exists with a different spec", spec.name)));
            }
            let pod = Pod::pending(spec.clone(), "ContainerCreating");
            pods.insert(spec.name.clone(), pod.clone());
            pod
        };
        // A hostPath missing or of the wrong type fails the pod before any of it exists: nothing to undo.
        if let Err(e) = super::volumes::check_host_paths(&spec) {
            lock(&self.pods).remove(&spec.name);
            return Err(AgentError::Failed(e.to_string()));
        }
        let sandbox = match self.create_sandbox(&spec).await {
            Ok(sb) => sb,
            Err(e) => {
                lock(&self.pods).remove(&spec.name);
                return Err(e);
            }
        };
        {
            let mut rec = lock(&pod.record);
            rec.infra_pid = Some(sandbox.infra_pid);
            rec.ip = sandbox.ip;
            rec.host_veth = sandbox.host_veth;
        }
        if let Err(e) = std::fs::create_dir_all(self.pod_dir(&spec.name)) {
            tracing::error!(pod = %spec.name, "creating the pod directory: {e}");
        }
        // A container that mounts a volume that could not be made fails its start (bundle.rs) naming it.
        if let Err(e) = super::volumes::create_empty_dirs(&self.pod_dir(&spec.name), &spec) {
            tracing::error!(pod = %spec.name, "{e}");
        }
        self.persist(&pod);
        // Start every container before answering, so the answer shows them running (or failed to start).
        for idx in 0..spec.containers.len() {
            let start = match self.start_container(&pod, idx).await {
                Ok(exit) => Start::Started(exit),
                Err(AgentError::ImageNeverPull(message)) => {
                    tracing::warn!(pod = %spec.name, container = %spec.containers[idx].name, "{message}");
                    self.mark_image_missing(&pod, idx);
                    Start::ImageMissing
                }
                Err(e) => {
                    tracing::error!(pod = %spec.name, container = %spec.containers[idx].name, "start: {e}");
                    self.mark_terminated(&pod, idx, START_FAILED, "StartError");
                    if !should_restart(spec.restart_policy, START_FAILED) {
                        continue;
                    }
                    Start::Fresh
                }
            };
            self.spawn_supervisor(&pod, idx, start);
        }
        self.persist(&pod);
        Ok((true, self.status_of(&pod)))
    }

    /// Cgroups, infra process and network attachment of a pod; undone on failure. Used by the benchmark too.
    pub async fn create_sandbox(&self, spec: &PodSpec) -> Result<Sandbox> {
        let name = &spec.name;
        let result = self.create_sandbox_steps(spec).await;
        if result.is_err() {
            // What the undo leaves is retried like a deleted pod's; the creation's own error is the answer.
            match self.teardown_or_keep(&PodRecord::without_sandbox(spec)).await {
                Ok(()) => tracing::debug!(pod = %name, "sandbox creation failed and was undone"),
                Err(e) => tracing::error!(pod = %name, "sandbox creation failed; undoing it: {e}"),
            }
        }
        result
    }

    pub(super) async fn create_sandbox_steps(&self, spec: &PodSpec) -> Result<Sandbox> {
        let name = &spec.name;
        let t0 = Instant::now();
        self.cgroups.create(&pod_cgroup(name), &pod_limits(spec), true)?;
        self.cgroups.create(&infra_cgroup(name), &CgroupLimits { cpu_shares: 2, ..Default::default() }, false)?;
        let t1 = Instant::now();
        let procs = self.cgroups.procs_files(&infra_cgroup(name));
        let infra_pid = self.processes.spawn_infra(name, spec.host_network, &procs)?;
        let t2 = Instant::now();
        let attached: Result<_> = if spec.host_network {
            Ok((lock(&self.node).spec.as_ref().map(|s| s.underlay.address), None))
        } else {
            self.net.attach_pod(name, infra_pid).await.map(|a| (Some(a.ip), Some(a.host_veth))).map_err(Into::into)
        };
        tracing::debug!(
            pod = %name,
            cgroups_us = (t1 - t0).as_micros() as u64,
            infra_us = (t2 - t1).as_micros() as u64,
            attach_us = t2.elapsed().as_micros() as u64,
            "sandbox created"
        );
        match attached {
            Ok((ip, host_veth)) => Ok(Sandbox { infra_pid, ip, host_veth }),
            Err(e) => {
                // Our own child, not reaped yet: its PID cannot have been reused, and right after vfork+exec
                // its cmdline may still read empty, so it is killed without the identity check.
                self.processes.kill_own_child(infra_pid).await;
                Err(e)
            }
        }
    }

    /// Removes a sandbox created by `create_sandbox` (benchmark).
    pub async fn destroy_sandbox(&self, spec: &PodSpec, sb: &Sandbox) {
        let record = PodRecord {
            infra_pid: Some(sb.infra_pid),
            ip: sb.ip,
            host_veth: sb.host_veth.clone(),
            ..PodRecord::without_sandbox(spec)
        };
        if let Err(e) = self.teardown_or_keep(&record).await {
            tracing::error!(pod = %spec.name, "benchmark sandbox: {e}");
        }
    }

    /// Starts the launcher of container `idx` and waits until it reports the container's PID; returns what
    /// resolves when the launcher exits.
    pub(super) async fn start_container(&self, pod: &Pod, idx: usize) -> Result<ExitFuture> {
        let spec = &pod.spec;
        let c = &spec.containers[idx];
        let rel = container_cgroup(&spec.name, &c.name);
        self.cgroups.create(&rel, &container_limits(c), false)?;
        let baseline = self.cgroups.oom_kills(&rel).unwrap_or(0);
        let infra_pid = lock(&pod.record)
            .infra_pid
            .ok_or_else(|| AgentError::Failed(format!("pod {}: no infra process", spec.name)))?;
        let dir = self.pod_dir(&spec.name);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let image = match &c.image {
            Some(reference) => Some(self.prepare_bundle(pod, c, reference).await?),
            None => None,
        };
        let exit_file = dir.join(format!("{}.exit", c.name));
        let _ = std::fs::remove_file(&exit_file);
        let launched = self
            .processes
            .start_launcher(LaunchRequest {
                pod: spec,
                container: c,
                infra_pid,
                cgroup_procs: self.cgroups.procs_files(&rel),
                log: self.log_path(&spec.name, &c.name),
                exit_file,
                image,
            })
            .await?;
        {
            let mut rec = lock(&pod.record);
            let cr = &mut rec.containers[idx];
            cr.state = ContainerState::Running { pid: launched.container_pid };
            // With the state, not once the supervisor's task gets to run: a container without a startup
            // (readiness) probe is started (ready) as soon as it runs, as the kubelet reports it; a status
            // read in between said Running and not Ready on a loaded host.
            cr.started = c.probes.startup_probe.is_none();
            cr.ready = c.probes.readiness_probe.is_none();
            cr.launcher_pid = Some(launched.launcher_pid);
            cr.oom_baseline = baseline;
        }
        self.persist(pod);
        Ok(launched.exit)
    }
}
