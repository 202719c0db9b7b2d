//! `POST /v1/pods/{pod}/exec`: runs a command through the launcher in exec mode and captures its output.
//! Without `container` it runs in the pod's net/UTS/IPC namespaces (the infra's); with one, in every namespace
//! of that container's process and in its cgroup (`launcher::namespace_sources`).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use testbed_api::{ApiError, ExecRequest, ExecResponse};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::processes::{PodProcess, DEFAULT_PATH};
use super::record::container_pid;
use super::sandbox::LAUNCHER_ROLE;
use super::{container_cgroup, lock, Agent, AgentError};

/// Each of stdout and stderr is cut at this size; the rest is read and dropped so the command never blocks.
pub const OUTPUT_CAP: usize = 4 << 20;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// After the command exits, how long we still wait for its pipes (a background child may hold them open).
const PIPE_DRAIN: Duration = Duration::from_secs(2);

/// What exec needs to know about the pod.
pub struct ExecTarget {
    pub pod: String,
    pub infra_pid: u32,
    /// The container's main process and cgroup.procs files, when a container was named.
    pub container: Option<(String, u32, Vec<std::path::PathBuf>)>,
    pub env: Vec<(String, String)>,
}

impl Agent {
    pub async fn exec(self: &Arc<Self>, pod: &str, req: ExecRequest) -> Result<ExecResponse, AgentError> {
        if req.command.is_empty() || req.command[0].is_empty() {
            return Err(AgentError::Invalid(ApiError {
                field: Some("command".into()),
                message: "command must name a program".into(),
                leaked: vec![],
            }));
        }
        let target = self.exec_target(pod, req.container.as_deref())?;
        if !self.processes.is_ours(target.infra_pid, PodProcess::Infra { pod }) {
            return Err(AgentError::Conflict(format!("pod `{pod}` has no running sandbox")));
        }
        run_exec(&self.cfg.exe, &target, &req).await
    }

    /// The namespaces (and container process and cgroup) an exec into `pod` enters.
    pub fn exec_target(&self, pod: &str, container: Option<&str>) -> Result<ExecTarget, AgentError> {
        let p = self.find(pod)?;
        let rec = lock(&p.record);
        let infra_pid = rec.infra_pid.ok_or_else(|| AgentError::Conflict(format!("pod `{pod}` has no sandbox yet")))?;
        let mut target = ExecTarget { pod: pod.to_string(), infra_pid, container: None, env: vec![] };
        if let Some(name) = container {
            let idx = p.spec.containers.iter().position(|c| c.name == name).ok_or_else(|| {
                AgentError::Invalid(ApiError {
                    field: Some("container".into()),
                    message: format!("pod `{pod}` has no container `{name}`"),
                    leaked: vec![],
                })
            })?;
            let pid = container_pid(&rec.containers[idx].state)
                .ok_or_else(|| AgentError::Conflict(format!("container `{name}` of pod `{pod}` is not running")))?;
            let procs = self.cgroups.procs_files(&container_cgroup(pod, name));
            target.container = Some((name.to_string(), pid, procs));
            target.env = p.spec.containers[idx].env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        Ok(target)
    }
}

fn read_capped<R: AsyncRead + Unpin + Send + 'static>(mut r: R) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = OUTPUT_CAP.saturating_sub(out.len());
                    out.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        out
    })
}

pub(super) async fn run_exec(
    exe: &std::path::Path,
    t: &ExecTarget,
    req: &ExecRequest,
) -> Result<ExecResponse, AgentError> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg(LAUNCHER_ROLE).arg("--exec").args(["--pod", &t.pod, "--infra-pid", &t.infra_pid.to_string()]);
    if let Some((name, pid, procs)) = &t.container {
        cmd.args(["--container", name, "--join-pid", &pid.to_string()]);
        for f in procs {
            cmd.arg("--cgroup-procs").arg(f);
        }
    }
    cmd.arg("--").args(&req.command);
    cmd.env_clear().env("PATH", DEFAULT_PATH);
    cmd.envs(t.env.iter().map(|(k, v)| (k, v)));
    cmd.stdin(if req.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|source| AgentError::Io { what: format!("pod {}: spawn the exec launcher", t.pod), source })?;
    // Declared after `child`, so dropped before it when the request is cancelled.
    let mut group = GroupKiller(child.id().map(|pid| pid as i32));
    if let (Some(mut stdin), Some(data)) = (child.stdin.take(), req.stdin.clone()) {
        tokio::spawn(async move {
            let _ = stdin.write_all(data.as_bytes()).await;
            // Dropping stdin closes it: the command sees EOF.
        });
    }
    let stdout = child.stdout.take().map(read_capped);
    let stderr = child.stderr.take().map(read_capped);
    let timeout = req.timeout_secs.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            // The launcher is reaped: its PID, the group ID, may now be reused. Background children the
            // command left behind on a normal exit are its business, as with `kubectl exec`.
            group.disarm();
            (status, false)
        }
        Err(_) => {
            // The whole group: the command and anything it started in the background (`cmd &`).
            group.kill();
            (child.wait().await, true)
        }
    };
    let status = status
        .map_err(|source| AgentError::Io { what: format!("pod {}: wait for the exec launcher", t.pod), source })?;
    let collect = |h: Option<tokio::task::JoinHandle<Vec<u8>>>| async move {
        let Some(mut h) = h else { return String::new() };
        match tokio::time::timeout(PIPE_DRAIN, &mut h).await {
            Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            _ => {
                h.abort();
                String::new()
            }
        }
    };
    let (stdout, stderr) = (collect(stdout).await, collect(stderr).await);
    use std::os::unix::process::ExitStatusExt;
    let exit_code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok(ExecResponse { exit_code, stdout, stderr, timed_out })
}

/// SIGKILLs an exec's process group: the launcher leads it (`process_group(0)`) and the command and its
/// background children are in it (exec mode calls no setsid). Armed from spawn until the launcher has been
/// waited for, so it covers the timeout and a request dropped because its client went away; the group is
/// killed while the launcher is not yet reaped, when the group ID cannot belong to anyone else.
struct GroupKiller(Option<i32>);

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}
