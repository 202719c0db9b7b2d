//! The processes of a pod behind a small trait, `PodProcesses`: starting the infra process and container
//! launchers, telling our processes from strangers that reused a PID, signalling and killing them. Create,
//! supervision, teardown and re-adoption reach the kernel's process interface only through it, so their
//! rules run in unit tests against a fake (`super::fake`) without root. `LinuxProcesses` is the real one.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::Signal;
use testbed_api::{ContainerSpec, PodSpec};
use tokio::io::AsyncBufReadExt;

use super::infra;
use super::probe_run::{self, ProbeTarget};
use super::sandbox::{self, SandboxError, INFRA_ROLE, LAUNCHER_ROLE};

/// Containers get this PATH (plus their spec's env), not the agent's environment.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a SIGKILLed process may take to exit (it can be stuck in uninterruptible sleep) before we go on.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long a launcher may take to report its container's PID.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Which process of which pod a PID is expected to be. PIDs are reused: every check and signal names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodProcess<'a> {
    Infra { pod: &'a str },
    Launcher { pod: &'a str, container: &'a str },
}

/// What a container's launcher is started with.
pub struct LaunchRequest<'a> {
    pub pod: &'a PodSpec,
    pub container: &'a ContainerSpec,
    /// The pod's infra process, whose namespaces the container joins.
    pub infra_pid: u32,
    /// cgroup.procs files of the container's cgroup (one per hierarchy).
    pub cgroup_procs: Vec<PathBuf>,
    pub log: PathBuf,
    /// Where the launcher writes the exit status, for an agent that is no longer its parent.
    pub exit_file: PathBuf,
    /// A container with an image: its runtime-spec bundle (`super::bundle`), run by crun.
    pub image: Option<ImageLaunch>,
}

/// What the launcher of a container with an image is given.
pub struct ImageLaunch {
    pub bundle: PathBuf,
    /// The image's overlayfs lower directories, top layer first, `:`-separated.
    pub lower: String,
    /// The argv from the image config and the spec (only shown in the launcher's argv; crun reads config.json).
    pub argv: Vec<String>,
}

/// Resolves to a launcher's exit code: its container's, or 128+signal when the launcher itself was killed.
pub type ExitFuture = BoxFuture<'static, i32>;

/// A launcher this agent started, its container running.
pub struct Launched {
    pub launcher_pid: u32,
    pub container_pid: u32,
    pub exit: ExitFuture,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("spawn launcher for {pod}/{container}: {source}")]
    Spawn { pod: String, container: String, source: std::io::Error },
    #[error(
        "launcher for {pod}/{container} did not start the container (it reported {reported:?}, then {status}); \
         see the agent log"
    )]
    NoContainer { pod: String, container: String, reported: String, status: String },
}

/// The kernel's process interface as the pod runtime uses it.
pub trait PodProcesses: Send + Sync {
    /// Starts the infra process of `pod` (see `sandbox::spawn_infra`) and returns its PID: our child, not
    /// reaped yet, so the PID cannot have been reused until we reap it.
    fn spawn_infra(&self, pod: &str, host_network: bool, cgroup_procs: &[PathBuf]) -> Result<u32, SandboxError>;
    /// Starts a container's launcher and waits until it reports the container's PID.
    fn start_launcher<'a>(&'a self, req: LaunchRequest<'a>) -> BoxFuture<'a, Result<Launched, LaunchError>>;
    /// True when `pid` is alive and is `which`, not a stranger that got the PID after ours died.
    fn is_ours(&self, pid: u32, which: PodProcess<'_>) -> bool;
    /// True while `pid` exists and is not a zombie.
    fn is_running(&self, pid: u32) -> bool;
    /// Sends `signal` to `pid` if it is `which`.
    fn signal(&self, pid: u32, which: PodProcess<'_>, signal: Signal);
    /// SIGKILLs `pid` if it is `which` and waits until it is gone; an infra process that is our child is
    /// reaped too.
    fn kill<'a>(&'a self, pid: u32, which: PodProcess<'a>) -> BoxFuture<'a, ()>;
    /// SIGKILLs our own unreaped child `pid` without the identity check (right after vfork+exec its
    /// cmdline may still read empty), waits for it and reaps it.
    fn kill_own_child(&self, pid: u32) -> BoxFuture<'_, ()>;
    /// Runs one probe of a container (`probe_run`); Err says why it failed.
    fn probe<'a>(&'a self, target: ProbeTarget<'a>) -> BoxFuture<'a, Result<(), String>>;
}

/// `PodProcesses` on this host's kernel.
pub struct LinuxProcesses {
    /// Binary re-executed as container launcher.
    exe: PathBuf,
    /// The infra program, executed from this memfd for every pod.
    infra_image: std::os::fd::OwnedFd,
}

impl LinuxProcesses {
    pub fn new(exe: &Path) -> std::io::Result<LinuxProcesses> {
        Ok(LinuxProcesses { exe: exe.to_path_buf(), infra_image: infra::memfd()? })
    }

    async fn launch(&self, req: LaunchRequest<'_>) -> Result<Launched, LaunchError> {
        let (spec, c) = (req.pod, req.container);
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg(LAUNCHER_ROLE).args([
            "--pod",
            &spec.name,
            "--container",
            &c.name,
            "--infra-pid",
            &req.infra_pid.to_string(),
        ]);
        if spec.share_process_namespace {
            cmd.arg("--share-pid");
        }
        for f in &req.cgroup_procs {
            cmd.arg("--cgroup-procs").arg(f);
        }
        cmd.arg("--log").arg(&req.log);
        cmd.arg("--exit-file").arg(&req.exit_file);
        match &req.image {
            Some(image) => {
                cmd.arg("--bundle").arg(&image.bundle).arg("--image-lower").arg(&image.lower);
                cmd.arg("--").args(&image.argv);
            }
            None => {
                cmd.arg("--").args(&c.command);
            }
        }
        cmd.env_clear().env("PATH", DEFAULT_PATH);
        if !spec.host_network {
            cmd.env("HOSTNAME", &spec.name);
        }
        cmd.envs(&c.env);
        // Own process group: a signal to the agent's group (Ctrl-C in a test) does not reach containers.
        cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            pod: spec.name.clone(),
            container: c.name.clone(),
            source,
        })?;
        let launcher_pid = child.id().unwrap_or_default();
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let mut reader = tokio::io::BufReader::new(out);
            let read = tokio::time::timeout(LAUNCH_TIMEOUT, reader.read_line(&mut line)).await;
            if !matches!(read, Ok(Ok(n)) if n > 0) {
                line.clear();
            }
        }
        let Some(container_pid) = parse_container_pid(&line) else {
            // Signals only our own launcher (the Child), never a PID read from the pipe.
            let _ = child.start_kill();
            let status = child.wait().await;
            return Err(LaunchError::NoContainer {
                pod: spec.name.clone(),
                container: c.name.clone(),
                reported: line.trim().to_string(),
                status: format!("{status:?}"),
            });
        };
        Ok(Launched { launcher_pid, container_pid, exit: Box::pin(wait_child(child)) })
    }
}

impl PodProcesses for LinuxProcesses {
    fn spawn_infra(&self, pod: &str, host_network: bool, cgroup_procs: &[PathBuf]) -> Result<u32, SandboxError> {
        sandbox::spawn_infra(&self.infra_image, pod, host_network, cgroup_procs)
    }

    fn start_launcher<'a>(&'a self, req: LaunchRequest<'a>) -> BoxFuture<'a, Result<Launched, LaunchError>> {
        Box::pin(self.launch(req))
    }

    fn is_ours(&self, pid: u32, which: PodProcess<'_>) -> bool {
        let (role, pod, container) = argv_of(which);
        sandbox::is_ours(pid, role, pod, container)
    }

    fn is_running(&self, pid: u32) -> bool {
        sandbox::is_running(pid)
    }

    fn signal(&self, pid: u32, which: PodProcess<'_>, signal: Signal) {
        let (role, pod, container) = argv_of(which);
        sandbox::signal_ours(pid, role, pod, container, signal);
    }

    fn kill<'a>(&'a self, pid: u32, which: PodProcess<'a>) -> BoxFuture<'a, ()> {
        let (role, pod, container) = argv_of(which);
        Box::pin(kill_and_wait(pid, role, pod, container))
    }

    fn kill_own_child(&self, pid: u32) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let fd = sandbox::PidFd::open(pid).ok().flatten();
            kill_then_wait(pid, fd, || sandbox::try_reap(pid)).await;
            sandbox::try_reap(pid);
        })
    }

    fn probe<'a>(&'a self, target: ProbeTarget<'a>) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(probe_run::run(&self.exe, target))
    }
}

/// The argv[1] role, pod and container that `sandbox::is_ours` looks for in /proc/<pid>/cmdline.
fn argv_of(which: PodProcess<'_>) -> (&'static str, &str, Option<&str>) {
    match which {
        PodProcess::Infra { pod } => (INFRA_ROLE, pod, None),
        PodProcess::Launcher { pod, container } => (LAUNCHER_ROLE, pod, Some(container)),
    }
}

/// The container PID a launcher reports on its first stdout line; None for anything but a positive number
/// (a PID 0 would make every later check and signal aim at the wrong process).
fn parse_container_pid(line: &str) -> Option<u32> {
    line.trim().parse().ok().filter(|pid| *pid > 0)
}

/// Exit code of a launcher we spawned (128+signal when the launcher itself was killed).
async fn wait_child(mut child: tokio::process::Child) -> i32 {
    match child.wait().await {
        Ok(status) => status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Err(_) => 255,
    }
}

/// SIGKILLs the process `fd` names and waits, at most KILL_WAIT, until it has exited. Without a pidfd (a
/// kernel before 5.3) it signals `pid` and polls `gone` instead.
async fn kill_then_wait(pid: u32, fd: Option<sandbox::PidFd>, gone: impl Fn() -> bool) {
    let Some(fd) = fd else {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        let t0 = std::time::Instant::now();
        while !gone() && t0.elapsed() < KILL_WAIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        return;
    };
    fd.kill();
    match tokio::time::timeout(KILL_WAIT, fd.exited()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(pid, "waiting on the pidfd: {e}"),
        Err(_) => tracing::warn!(pid, "process did not exit within {KILL_WAIT:?} of SIGKILL"),
    }
}

/// SIGKILLs `pid` if it is ours and waits until it is gone. Infra processes are reaped here when they are
/// our children; launchers are reaped by their tokio `Child` (or by init, when adopted).
async fn kill_and_wait(pid: u32, role: &str, pod: &str, container: Option<&str>) {
    let fd = match sandbox::PidFd::open(pid) {
        Ok(None) => return,
        Ok(Some(fd)) => Some(fd),
        Err(_) => None,
    };
    // Checked after opening: from here on the pidfd names exactly the process that was checked. A zombie has
    // an empty cmdline, so "not ours" also covers "exited, not yet reaped".
    if sandbox::is_ours(pid, role, pod, container) {
        kill_then_wait(pid, fd, || !sandbox::is_ours(pid, role, pod, container)).await;
    }
    if role == INFRA_ROLE {
        sandbox::try_reap(pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_pid_line_must_be_a_positive_number() {
        assert_eq!(parse_container_pid("4242\n"), Some(4242));
        assert_eq!(parse_container_pid(" 7 "), Some(7));
        for garbage in ["", "\n", "0\n", "-3", "pid 12", "12abc", "99999999999"] {
            assert_eq!(parse_container_pid(garbage), None, "{garbage:?}");
        }
    }
}
