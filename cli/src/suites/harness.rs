//! What every suite needs to run checks on a lab: its own test pods (build, create, wait until Running, remove),
//! commands in a pod or on a node with the evidence a report shows, and the switch of the lab to a backend.
//! A suite owns the pods it creates: it tracks them in a `CreatedPods` list and `cleanup` removes them.

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use testbed_api::{
    Backend, ContainerSpec, ContainerState, ExecRequest, ExecResponse, PodPhase, PodSpec, PodStatus, Resources,
    RestartPolicy,
};

use super::cluster::{Cluster, ClusterError};
use super::probe;
use super::runner::{CheckError, CheckOutcome};

/// How long a test pod may take to reach Running, or to end (the OOM check waits as long for its kill).
pub(super) const POD_READY_TIMEOUT: Duration = Duration::from_secs(180);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
/// Interval between polls of a pod's or a node's status.
pub(super) const POLL: Duration = Duration::from_millis(500);

/// A test pod that is Running, with its address.
#[derive(Debug, Clone)]
pub struct TestPod {
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub status: PodStatus,
}

/// The (node, pod name) of every pod a suite created, in creation order, for `cleanup`.
pub(super) type CreatedPods = RefCell<Vec<(String, String)>>;

pub(super) fn container(name: &str, command: Vec<String>) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        command,
        env: Default::default(),
        resources: Resources::default(),
        pids_limit: None,
        args: vec![],
        image: None,
        volume_mounts: vec![],
        security_context: None,
        probes: Default::default(),
    }
}

pub(super) fn pod(name: &str, containers: Vec<ContainerSpec>, restart_policy: RestartPolicy) -> PodSpec {
    PodSpec { name: name.into(), containers, restart_policy, ..Default::default() }
}

/// A pod whose one container only sleeps: a network namespace to run commands in.
pub(super) fn sleeper_pod(name: &str) -> PodSpec {
    pod(name, vec![container("main", vec!["sleep".into(), "infinity".into()])], RestartPolicy::Always)
}

/// The command, its exit status and the tail of its output, as a report shows it.
pub(super) fn evidence(cmd: &str, r: &ExecResponse) -> String {
    let mut s = format!("$ {cmd}\nexit {}{}", r.exit_code, if r.timed_out { " (timed out)" } else { "" });
    for (label, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        let t = text.trim();
        if !t.is_empty() {
            // Keep reports readable: the tail is where the error is.
            let tail: String = if t.len() > 2000 { format!("...{}", &t[t.len() - 2000..]) } else { t.to_string() };
            s.push_str(&format!("\n{label}:\n{tail}"));
        }
    }
    s
}

/// Runs `script` with `sh -c` in the pod (in `container`, or the first one).
pub(super) async fn pexec<C: Cluster>(
    c: &C,
    p: &TestPod,
    container: Option<&str>,
    script: &str,
    timeout_secs: u64,
) -> Result<ExecResponse, ClusterError> {
    let req = ExecRequest {
        container: container.map(str::to_string),
        command: probe::sh(script),
        stdin: None,
        timeout_secs: Some(timeout_secs),
    };
    c.pod_exec(&p.node, &p.name, &req).await
}

/// Runs `script` on the node, answered in the same shape as a pod exec.
pub(super) async fn nexec<C: Cluster>(c: &C, node: &str, script: &str) -> Result<ExecResponse, ClusterError> {
    let o = c.node_exec(node, script).await?;
    Ok(ExecResponse { exit_code: o.exit_code, stdout: o.stdout, stderr: o.stderr, timed_out: false })
}

/// Passes when the command exits 0.
pub(super) fn succeeded(what: &str, cmd: &str, r: &ExecResponse) -> CheckOutcome {
    let ev = evidence(cmd, r);
    if r.exit_code == 0 && !r.timed_out {
        Ok(ev)
    } else {
        Err(CheckError::Fail(format!("{what} failed (exit {})\n{ev}", r.exit_code)))
    }
}

/// Creates a pod the suite owns and remembers it for cleanup.
pub(super) async fn create_tracked<C: Cluster>(
    c: &C,
    node: &str,
    spec: &PodSpec,
    created: &CreatedPods,
) -> Result<PodStatus, ClusterError> {
    let st = c.create_pod(node, spec).await?;
    created.borrow_mut().push((node.to_string(), spec.name.clone()));
    Ok(st)
}

/// Removes a pod left by an interrupted earlier run; a missing pod is the normal case.
pub(super) async fn remove_leftover<C: Cluster>(c: &C, node: &str, name: &str) {
    if c.get_pod(node, name).await.is_ok() {
        let _ = c.delete_pod(node, name, Some(Duration::ZERO)).await;
    }
}

fn all_running(st: &PodStatus) -> bool {
    st.phase == PodPhase::Running
        && st.ip.is_some()
        && st.containers.iter().all(|c| matches!(c.state, ContainerState::Running { .. }))
}

/// Waits until every container of the pod runs and the pod has its IP.
pub(super) async fn wait_running<C: Cluster>(c: &C, node: &str, name: &str) -> Result<TestPod, CheckError> {
    let deadline = Instant::now() + POD_READY_TIMEOUT;
    loop {
        let st = c.get_pod(node, name).await?;
        if all_running(&st) {
            let ip = st.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
            return Ok(TestPod { name: name.into(), node: node.into(), ip, status: st });
        }
        if matches!(st.phase, PodPhase::Failed | PodPhase::Succeeded) || Instant::now() > deadline {
            return Err(CheckError::Infra(format!(
                "node {node}: pod {name} not Running after {} s: {:?} {:?}",
                POD_READY_TIMEOUT.as_secs(),
                st.phase,
                st.containers.iter().map(|c| (&c.name, &c.state)).collect::<Vec<_>>()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Deletes every pod the suite created (also after failures), and any leftover of an interrupted run.
pub(super) async fn cleanup<C: Cluster>(c: &C, created: &CreatedPods) -> CheckOutcome {
    let pods: Vec<(String, String)> = created.borrow_mut().drain(..).collect();
    let mut errors = Vec::new();
    for (node, name) in &pods {
        // The suite's own throw-away pods (`sleep` as PID 1 ignores SIGTERM): no grace period.
        if let Err(e) = c.delete_pod(node, name, Some(Duration::ZERO)).await {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(format!("removed {}", pods.iter().map(|p| p.1.as_str()).collect::<Vec<_>>().join(", ")))
    } else {
        Err(CheckError::Infra(errors.join("; ")))
    }
}

/// Re-applies every node's NodeSpec for `backend` and waits until every agent reports convergence to it.
pub(super) async fn switch_backend<C: Cluster>(c: &C, backend: Backend) -> CheckOutcome {
    let plan = c.plan();
    let mut lines = Vec::new();
    for n in &plan.nodes {
        let resp = c.apply(&n.name, &plan.node_spec(n, backend)).await?;
        lines.push(format!("{}: {} change(s) {:?}", n.name, resp.changes.len(), resp.changes));
    }
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    for n in &plan.nodes {
        loop {
            let st = c.node_status(&n.name).await?;
            let on_backend = st.spec.as_ref().is_some_and(|s| s.backend == backend);
            if on_backend && st.converged && st.last_error.is_none() {
                break;
            }
            if Instant::now() > deadline {
                return Err(CheckError::Infra(format!(
                    "node {}: agent did not converge to backend {backend} within {} s (last error: {})",
                    n.name,
                    CONVERGE_TIMEOUT.as_secs(),
                    st.last_error.as_deref().unwrap_or("none")
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(lines.join("\n"))
}
