//! `testbed-agent run-container`: the container launcher, a short single-threaded program (namespaces can
//! only be joined by a single-threaded process). It joins the pod's IPC, UTS and network namespaces through
//! /proc/<infra>/ns/*, moves itself into the container cgroup, gets a new PID namespace (or the infra's, with
//! shareProcessNamespace), forks so the child is PID 1 there, gives the child a private mount namespace with
//! a fresh /proc, and execs the command. It then reports the child's PID and execs the reaper
//! (`super::reaper`): a tiny program that waits for the child and exits with its status, writing it to an
//! exit file too so a restarted agent (no longer our parent) still learns it. Staying resident as this
//! binary to wait would cost some 384 KiB per container.
//!
//! In exec mode (`--exec`) the child keeps the launcher's stdio, and the launcher stays to wait for it (an
//! exec is short-lived and needs no exit file). Without `--join-pid` it runs in the pod's
//! IPC, UTS and network namespaces (the infra's); with `--join-pid` it enters every namespace of that
//! container's process instead (`namespace_sources`): an exec into a container reads the container itself,
//! so a container that is not where the pod's other processes are (say it unshared its own network
//! namespace) shows as such instead of the infra's view being reported under its name.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{dup2, execvp, fork, ForkResult, Pid};

use super::creds::Creds;
use super::reaper::Reaper;

#[derive(Debug, clap::Args)]
pub struct LauncherArgs {
    /// Pod name (also lets the agent recognise this process as its own).
    #[arg(long)]
    pub pod: String,
    #[arg(long)]
    pub container: Option<String>,
    /// PID of the pod's infra process, whose namespaces we join.
    #[arg(long)]
    pub infra_pid: u32,
    /// Join the infra's PID namespace instead of creating one (shareProcessNamespace).
    #[arg(long)]
    pub share_pid: bool,
    /// Exec into this running container: join all of its namespaces (not the infra's).
    #[arg(long)]
    pub join_pid: Option<u32>,
    /// cgroup.procs files to join (one per hierarchy).
    #[arg(long)]
    pub cgroup_procs: Vec<PathBuf>,
    /// Container output goes here (append).
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Where the exit status is written (by the reaper; required unless `--exec`).
    #[arg(long)]
    pub exit_file: Option<PathBuf>,
    /// A container with an image: run this runtime-spec bundle with crun (`super::oci`) instead of
    /// exec'ing the command, which is then only shown in our argv.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// The image's overlayfs lower directories, top layer first, `:`-separated (with `--bundle`).
    #[arg(long)]
    pub image_lower: Option<String>,
    /// Exec mode: keep stdio, no new namespaces of our own.
    #[arg(long)]
    pub exec: bool,
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("command contains a NUL byte")]
    Nul,
    #[error("PID {pid} is no longer {what}")]
    NotOurs { pid: u32, what: String },
    #[error("the launcher died before the container started")]
    ParentGone,
    #[error("crun did not start the container ({status}); its message is in the container's log")]
    Runtime { status: String },
    #[error("a container launcher needs --container and --exit-file (and --image-lower with --bundle)")]
    Usage,
}

/// The container's stdin from /dev/null, its stdout and stderr into `log`.
pub(super) fn stdio_to(log: &File) -> Result<(), LaunchError> {
    let null = File::open("/dev/null").map_err(|source| LaunchError::Io { what: "open /dev/null".into(), source })?;
    for (fd, target) in [(null.as_raw_fd(), 0), (log.as_raw_fd(), 1), (log.as_raw_fd(), 2)] {
        dup2(fd, target).map_err(sys("dup2"))?;
    }
    Ok(())
}

pub(super) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Sys { what, source }
}

fn open(path: String) -> Result<File, LaunchError> {
    File::open(&path).map_err(|source| LaunchError::Io { what: format!("open {path}"), source })
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let child = CHILD.load(Ordering::Relaxed);
    if child > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(child, sig) };
    }
}

/// Runs the launcher; the result is the exit code for `std::process::exit`.
pub fn run(args: &LauncherArgs) -> Result<i32, LaunchError> {
    let argv: Vec<CString> = args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| LaunchError::Nul)?;
    let infra = args.infra_pid;
    // An exec into a container runs as that container's process (`creds`); read while /proc is ours.
    let creds = match (args.exec, args.join_pid) {
        (true, Some(target)) => Some(Creds::of(target)?),
        _ => None,
    };
    // Open every namespace first: once we have moved, /proc paths may mean something else.
    let namespaces: Vec<(Ns, File)> = namespace_sources(args)
        .into_iter()
        .map(|(ns, pid)| Ok((ns, open(format!("/proc/{pid}/ns/{}", ns.proc_name()))?)))
        .collect::<Result<_, LaunchError>>()?;
    // The agent checked these PIDs before starting us, but a PID can be reused since. The fds now pin the
    // namespaces of whoever had the PID when they were opened; if the PID still belongs to ours after the
    // open, it did at the open too (a PID is never handed back to a process that died).
    if !super::sandbox::is_ours(infra, super::sandbox::INFRA_ROLE, &args.pod, None) {
        return Err(LaunchError::NotOurs { pid: infra, what: format!("the infra process of pod {}", args.pod) });
    }
    if let Some(target) = args.join_pid {
        if !in_cgroup(target, &args.cgroup_procs) {
            return Err(LaunchError::NotOurs { pid: target, what: "in the container's cgroup".into() });
        }
    }
    // A container's launcher becomes the reaper once the container runs. What it needs is ready before the
    // fork, so that nothing after it can fail but the exec itself.
    let reaper = match (args.exec, args.container.as_deref(), args.exit_file.as_deref()) {
        (true, ..) => None,
        (false, Some(container), Some(exit_file)) => Some(Reaper::new(&args.pod, container, exit_file)?),
        (false, ..) => return Err(LaunchError::Usage),
    };
    let log = match &args.log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LaunchError::Io { what: format!("open {}", path.display()), source })?,
        ),
        None => None,
    };
    let me = std::process::id().to_string();
    for procs in &args.cgroup_procs {
        std::fs::write(procs, &me)
            .map_err(|source| LaunchError::Io { what: format!("join {}", procs.display()), source })?;
    }
    // In `namespace_sources` order, mount last as nsenter does; a PID namespace applies to the child forked
    // below, not to us.
    let mut joined_pid = false;
    for (ns, fd) in &namespaces {
        setns(fd, ns.flag()).map_err(sys(format!("setns {}", ns.proc_name())))?;
        joined_pid |= *ns == Ns::Pid;
    }
    if args.exec && !joined_pid {
        // Plain exec into the pod: no PID namespace to enter, so no fork is needed.
        return Err(exec(&argv));
    }
    if let Some(bundle) = &args.bundle {
        let Some(reaper) = &reaper else { return Err(LaunchError::Usage) };
        return Err(super::oci::run(args, bundle, reaper, log.as_ref()));
    }
    if !joined_pid {
        unshare(CloneFlags::CLONE_NEWPID).map_err(sys("unshare pid"))?;
    }

    // The child watches this pipe to learn whether we died before its PDEATHSIG was armed (both ends are
    // close-on-exec: the command inherits neither).
    let (alive_r, alive_w) = std::io::pipe().map_err(|source| LaunchError::Io { what: "pipe".into(), source })?;
    // SAFETY: this process is single-threaded.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(alive_w);
            let err = child(args, &argv, log.as_ref(), &alive_r, creds.as_ref());
            eprintln!("testbed-agent run-container: {err}");
            // SAFETY: leave without running the parent's atexit state.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(alive_r);
            let Some(reaper) = reaper else {
                let code = wait_exec(child);
                drop(alive_w);
                return code;
            };
            Err(reaper.replace_launcher(child, &alive_w))
        }
    }
}

/// A namespace the launcher enters, in the order it enters them (`namespace_sources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    Cgroup,
    Ipc,
    Uts,
    Net,
    Pid,
    Mnt,
}

impl Ns {
    fn proc_name(self) -> &'static str {
        match self {
            Ns::Cgroup => "cgroup",
            Ns::Ipc => "ipc",
            Ns::Uts => "uts",
            Ns::Net => "net",
            Ns::Pid => "pid",
            Ns::Mnt => "mnt",
        }
    }

    fn flag(self) -> CloneFlags {
        match self {
            Ns::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            Ns::Ipc => CloneFlags::CLONE_NEWIPC,
            Ns::Uts => CloneFlags::CLONE_NEWUTS,
            Ns::Net => CloneFlags::CLONE_NEWNET,
            Ns::Pid => CloneFlags::CLONE_NEWPID,
            Ns::Mnt => CloneFlags::CLONE_NEWNS,
        }
    }
}

/// Which process's namespaces the launcher enters, in order. A container (and an exec into the pod as a
/// whole) gets the pod's IPC, UTS and network namespaces from the infra process, and with
/// shareProcessNamespace its PID namespace too. An exec into a named container (`--join-pid`) takes every
/// namespace from that container's process, cgroup namespace included: the command must see what the
/// container sees, not what the pod was meant to give it.
fn namespace_sources(args: &LauncherArgs) -> Vec<(Ns, u32)> {
    if let Some(target) = args.join_pid {
        return [Ns::Cgroup, Ns::Ipc, Ns::Uts, Ns::Net, Ns::Pid, Ns::Mnt].into_iter().map(|ns| (ns, target)).collect();
    }
    let mut from_infra = vec![Ns::Ipc, Ns::Uts, Ns::Net];
    if args.share_pid {
        from_infra.push(Ns::Pid);
    }
    from_infra.into_iter().map(|ns| (ns, args.infra_pid)).collect()
}

/// False once every write end of the pipe is closed, i.e. the launcher (its only other holder) is gone.
pub(super) fn parent_alive(alive: &impl AsRawFd) -> bool {
    let mut pfd = libc::pollfd { fd: alive.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, zero timeout. The launcher never writes: any event means hang-up.
    unsafe { libc::poll(&mut pfd, 1, 0) == 0 }
}

/// Whether `pid` is listed in the first of `procs` (cgroup.procs files of one cgroup, one per hierarchy).
fn in_cgroup(pid: u32, procs: &[PathBuf]) -> bool {
    let Some(file) = procs.first() else { return false };
    std::fs::read_to_string(file).is_ok_and(|list| list.lines().any(|l| l.trim() == pid.to_string()))
}

fn child(
    args: &LauncherArgs,
    argv: &[CString],
    log: Option<&File>,
    alive: &impl AsRawFd,
    creds: Option<&Creds>,
) -> LaunchError {
    // The container must not outlive its launcher: the agent kills launchers, and we forward to the child.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return sys("prctl PDEATHSIG")(e);
    }
    // PDEATHSIG only fires for a death after it was set. getppid() cannot tell (we are in another PID
    // namespace than our parent, so it reads 0 either way): the pipe can.
    if !parent_alive(alive) {
        return LaunchError::ParentGone;
    }
    if !args.exec {
        if let Err(e) = container_mounts() {
            return e;
        }
        if let Some(log) = log {
            if let Err(e) = stdio_to(log) {
                return e;
            }
        }
        let _ = nix::unistd::setsid();
    }
    let Some(creds) = creds else {
        let _ = std::env::set_current_dir("/");
        return exec(argv);
    };
    // The container's environment replaces the agent's (PATH included: execvp searches the container's).
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    for (key, value) in creds.env() {
        std::env::set_var(key, value);
    }
    if let Err(e) = creds.apply() {
        return e;
    }
    exec(argv)
}

/// A private mount namespace whose /proc shows the container's PID namespace.
fn container_mounts() -> Result<(), LaunchError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unshare mnt"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(sys("make / private"))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), flags, None::<&str>).map_err(sys("mount /proc"))
}

fn exec(argv: &[CString]) -> LaunchError {
    match execvp(&argv[0], argv) {
        Err(e) => sys(format!("exec {}", argv[0].to_string_lossy()))(e),
        Ok(never) => match never {},
    }
}

/// Exec mode: waits for the command, forwarding SIGTERM, SIGINT and SIGHUP to it, and returns its status.
fn wait_exec(child: Pid) -> Result<i32, LaunchError> {
    CHILD.store(child.as_raw(), Ordering::Relaxed);
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only calls kill.
        let _ = unsafe {
            sigaction(sig, &SigAction::new(SigHandler::Handler(forward_signal), SaFlags::SA_RESTART, SigSet::empty()))
        };
    }
    let code = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(sys("waitpid")(e)),
        }
    };
    let _ = std::io::Write::flush(&mut std::io::stderr());
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(join_pid: Option<u32>, share_pid: bool) -> LauncherArgs {
        LauncherArgs {
            pod: "p".into(),
            container: Some("c".into()),
            infra_pid: 10,
            share_pid,
            join_pid,
            cgroup_procs: vec![],
            log: None,
            exit_file: None,
            exec: join_pid.is_some(),
            bundle: None,
            image_lower: None,
            command: vec!["true".into()],
        }
    }

    #[test]
    fn exec_into_a_container_enters_that_containers_own_namespaces() {
        // The bug this guards against: an exec naming a container joined the infra's net/UTS/IPC namespaces,
        // so a container that had left them was reported as sharing them.
        let all = [Ns::Cgroup, Ns::Ipc, Ns::Uts, Ns::Net, Ns::Pid, Ns::Mnt];
        assert_eq!(namespace_sources(&args(Some(42), false)), all.map(|ns| (ns, 42)).to_vec());
        assert_eq!(namespace_sources(&args(Some(42), true)), all.map(|ns| (ns, 42)).to_vec());
        // A container being started, and an exec into the pod as a whole, get the pod's from the infra.
        let pod = [Ns::Ipc, Ns::Uts, Ns::Net].map(|ns| (ns, 10)).to_vec();
        assert_eq!(namespace_sources(&args(None, false)), pod);
        assert_eq!(namespace_sources(&args(None, true)), [pod, vec![(Ns::Pid, 10)]].concat());
    }

    #[test]
    fn parent_liveness_follows_the_pipe() {
        let (r, w) = std::io::pipe().unwrap();
        assert!(parent_alive(&r));
        drop(w);
        assert!(!parent_alive(&r));
    }

    #[test]
    fn cgroup_membership_is_read_from_cgroup_procs() {
        let dir = tempfile::tempdir().unwrap();
        let procs = dir.path().join("cgroup.procs");
        std::fs::write(&procs, "12\n345\n").unwrap();
        assert!(in_cgroup(345, std::slice::from_ref(&procs)));
        assert!(!in_cgroup(34, std::slice::from_ref(&procs)));
        assert!(!in_cgroup(345, &[]));
        assert!(!in_cgroup(345, &[dir.path().join("missing")]));
    }
}
