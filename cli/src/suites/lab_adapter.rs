//! `Cluster` for a real, running lab: SSH sessions for node commands, the agents' HTTP API (through the SSH
//! forwards) for everything else.

use std::path::PathBuf;
use std::time::Duration;

use testbed_api::{
    ApplyResponse, ExecRequest, ExecResponse, LogChunk, LogQuery, NetworkPolicyStatus, NodeSpec, NodeStatus, PodSpec,
    PodStatus,
};

use super::cluster::{Cluster, ClusterError, LabFacts, NodeExec};
use super::hostload::{self, HostCounters};
use crate::guest::shell_quote;
use crate::image::deliverable::deliverable;
use crate::lab::container_images::{deliver, NodeStore};
use crate::lab::{ConnectedLab, ConnectedNode};
use crate::plan::{ContainerImage, Plan};

/// Node commands the suites run are short; a hung SSH channel must not hang the suite.
const NODE_EXEC_TIMEOUT: Duration = Duration::from_secs(120);
/// coreutils `timeout`'s exit status when the time ran out.
const TIMED_OUT: i32 = 124;

fn node<'a>(lab: &'a ConnectedLab, name: &str) -> Result<&'a ConnectedNode, ClusterError> {
    lab.node(name).ok_or_else(|| ClusterError::new(name, "lookup", "not a node of this lab"))
}

impl Cluster for ConnectedLab {
    fn plan(&self) -> &Plan {
        &self.lab.plan
    }

    fn facts(&self) -> LabFacts {
        LabFacts {
            qemu_version: Some(self.lab.state.qemu_version.clone()),
            accelerator: Some(self.lab.state.accelerator.to_string()),
            provider: Some(self.lab.state.provider.to_string()),
        }
    }

    fn serial_log(&self, node: &str) -> Option<PathBuf> {
        Some(self.lab.paths.serial_log(node)).filter(|p| p.is_file())
    }

    fn host_counters(&self) -> Option<HostCounters> {
        let read = |p: String| std::fs::read_to_string(p).ok();
        // The lab's QEMU processes (every thread: vCPUs, I/O) and testbed itself (the SSH client) are the
        // measurement's own work; everything else on the host competes with it.
        let pids = self.lab.state.nodes.values().filter_map(|n| n.pid);
        let mut lab: Vec<String> = pids.filter_map(|pid| read(format!("/proc/{pid}/stat"))).collect();
        lab.extend(read("/proc/self/stat".into()));
        hostload::host_counters(&read("/proc/stat".into())?, &read("/proc/loadavg".into()).unwrap_or_default(), &lab)
    }

    async fn api(&self) -> Result<kube::Client, ClusterError> {
        crate::cluster::client_of(&crate::lab::control_plane::kubeconfig_path(&self.lab.paths))
            .await
            .map_err(|e| ClusterError::new("control-plane", "connect to the API server", e))
    }

    async fn ensure_image(&self, name: &str, image: &ContainerImage) -> Result<String, ClusterError> {
        let n = node(self, name)?;
        let source = image.clone();
        // A first build fetches a .deb and writes the cache: blocking work.
        let built = tokio::task::spawn_blocking(move || deliverable(&source))
            .await
            .map_err(|e| ClusterError::new(name, &format!("build image {image}"), e))?
            .map_err(|e| ClusterError::new(name, &format!("build image {image}"), e))?;
        deliver(&n.session, NodeStore::GUEST, &[&built])
            .await
            .map_err(|e| ClusterError::new(name, "deliver a container image", e))?;
        Ok(built.digest)
    }

    async fn node_exec(&self, name: &str, command: &str) -> Result<NodeExec, ClusterError> {
        let o = node(self, name)?
            .session
            .exec_timeout(command, None, NODE_EXEC_TIMEOUT)
            .await
            .map_err(|e| ClusterError::new(name, &format!("ssh `{command}`"), e))?;
        Ok(NodeExec { exit_code: o.exit_code, stdout: o.stdout_lossy(), stderr: o.stderr_lossy() })
    }

    async fn node_exec_bounded(
        &self,
        name: &str,
        command: &str,
        timeout_secs: u64,
    ) -> Result<ExecResponse, ClusterError> {
        // coreutils' timeout on the node: TERM at the bound, KILL 5 s later.
        let bounded = format!("timeout -k 5 {timeout_secs} sh -c {}", shell_quote(command));
        let o = self.node_exec(name, &bounded).await?;
        Ok(ExecResponse {
            timed_out: o.exit_code == TIMED_OUT,
            exit_code: o.exit_code,
            stdout: o.stdout,
            stderr: o.stderr,
        })
    }

    async fn apply(&self, name: &str, spec: &NodeSpec) -> Result<ApplyResponse, ClusterError> {
        node(self, name)?.agent.apply_node(spec).await.map_err(|e| ClusterError::new(name, "PUT /v1/node", e))
    }

    async fn node_status(&self, name: &str) -> Result<NodeStatus, ClusterError> {
        node(self, name)?.agent.node_status().await.map_err(|e| ClusterError::new(name, "GET /v1/node", e))
    }

    async fn network_policy_status(&self, name: &str) -> Result<NetworkPolicyStatus, ClusterError> {
        node(self, name)?
            .agent
            .network_policy_status()
            .await
            .map_err(|e| ClusterError::new(name, "GET /v1/network-policies", e))
    }

    async fn create_pod(&self, name: &str, spec: &PodSpec) -> Result<PodStatus, ClusterError> {
        node(self, name)?
            .agent
            .create_pod(spec)
            .await
            .map_err(|e| ClusterError::new(name, &format!("POST /v1/pods ({})", spec.name), e))
    }

    async fn get_pod(&self, name: &str, pod: &str) -> Result<PodStatus, ClusterError> {
        node(self, name)?
            .agent
            .get_pod(pod)
            .await
            .map_err(|e| ClusterError::new(name, &format!("GET /v1/pods/{pod}"), e))
    }

    async fn delete_pod(&self, name: &str, pod: &str, grace: Option<Duration>) -> Result<(), ClusterError> {
        node(self, name)?
            .agent
            .delete_pod(pod, grace)
            .await
            .map_err(|e| ClusterError::new(name, &format!("DELETE /v1/pods/{pod}"), e))
    }

    async fn pod_exec(&self, name: &str, pod: &str, req: &ExecRequest) -> Result<ExecResponse, ClusterError> {
        node(self, name)?
            .agent
            .exec(pod, req)
            .await
            .map_err(|e| ClusterError::new(name, &format!("exec in pod {pod}"), e))
    }

    async fn container_log(&self, name: &str, pod: &str, query: &LogQuery) -> Result<LogChunk, ClusterError> {
        node(self, name)?
            .agent
            .container_log(pod, query)
            .await
            .map_err(|e| ClusterError::new(name, &format!("GET /v1/pods/{pod}/log"), e))
    }
}
