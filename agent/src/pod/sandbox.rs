//! The pod sandbox: the infra ("pause") process that holds a pod's namespaces, and checks that a PID still
//! belongs to a process this agent started (PIDs are reused; we never signal a stranger).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// argv[1] of the infra process, checked before adopting or killing it.
pub const INFRA_ROLE: &str = "infra";
/// argv[1] of container launchers.
pub const LAUNCHER_ROLE: &str = "run-container";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("pod {pod}: cannot start the infra process: {source}")]
    Clone { pod: String, source: nix::Error },
    #[error("pod {pod}: the infra process exited at once ({status:?})")]
    DiedAtStart { pod: String, status: WaitStatus },
    #[error("pod {pod}: cannot open its infra cgroup: {source}")]
    Cgroup { pod: String, source: std::io::Error },
    #[error("pod {pod}: name or path contains a NUL byte")]
    Nul { pod: String },
}

/// Starts the infra program (`super::infra`, from the memfd `image`) as PID 1 of new PID and IPC
/// namespaces, plus new network and UTS namespaces unless `host_network` (Kubernetes hostNetwork shares the
/// node's net and UTS namespaces; its IPC stays private since hostIPC is a separate switch). The hostname is
/// set before exec and CLONE_VFORK holds us until then, so the namespaces are complete when this returns.
/// The infra process joins `cgroup_procs` (passed as fds 3..) itself, which keeps the slow, RCU-synchronised
/// cgroup migration off the caller's path.
///
/// Like posix_spawn, the child shares our memory (CLONE_VM) and runs on a stack of its own until exec: no
/// page tables are copied and the agent's pages are not made copy-on-write for every pod.
pub fn spawn_infra(
    image: &OwnedFd,
    pod: &str,
    host_network: bool,
    cgroup_procs: &[PathBuf],
) -> Result<u32, SandboxError> {
    let nul = |_| SandboxError::Nul { pod: pod.to_string() };
    let args: Vec<CString> = ["testbed-infra", INFRA_ROLE, "--pod", pod]
        .iter()
        .map(|a| CString::new(*a))
        .collect::<Result<_, _>>()
        .map_err(nul)?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let hostname = pod.as_bytes();
    if cgroup_procs.len() > 3 {
        return Err(SandboxError::Cgroup {
            pod: pod.to_string(),
            source: std::io::Error::other("more than 3 hierarchies"),
        });
    }
    let procs: Vec<OwnedFd> = cgroup_procs
        .iter()
        .map(|p| std::fs::OpenOptions::new().write(true).open(p).map(OwnedFd::from))
        .collect::<Result<_, _>>()
        .map_err(|source| SandboxError::Cgroup { pod: pod.to_string(), source })?;
    let proc_fds: Vec<libc::c_int> = procs.iter().map(|f| f.as_raw_fd()).collect();
    let image_fd = image.as_raw_fd();

    let mut flags =
        CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_VFORK | CloneFlags::CLONE_VM;
    if !host_network {
        flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    }
    // The child only makes raw syscalls on data prepared here (we are suspended until it execs). Its fd table
    // is its own copy, so the dup2s do not touch ours.
    let child = Box::new(|| -> isize {
        // SAFETY: plain syscalls on buffers prepared before clone.
        unsafe {
            if !host_network && libc::sethostname(hostname.as_ptr().cast(), hostname.len()) != 0 {
                return 126;
            }
            for (i, fd) in proc_fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as libc::c_int) < 0 {
                    return 125;
                }
            }
            libc::syscall(
                libc::SYS_execveat,
                image_fd,
                c"".as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
        }
        127
    });
    let mut stack = vec![0u8; 64 * 1024];
    // No signal handler of ours may run in the child while it shares our memory: block all signals around
    // clone (the child inherits the mask; the infra program only blocks SIGCHLD and needs nothing else).
    let mut old = SigSet::empty();
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old));
    // SAFETY: the callback needs little stack and execs or exits; it takes no locks and does not allocate.
    let cloned = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) };
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    let pid = cloned.map_err(|source| SandboxError::Clone { pod: pod.to_string(), source })?;
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) | Err(_) => Ok(pid.as_raw() as u32),
        Ok(status) => Err(SandboxError::DiedAtStart { pod: pod.to_string(), status }),
    }
}

/// argv of a live process; None when it is gone or a zombie (empty cmdline).
fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(raw.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
}

/// True when `pid` runs this binary in `role` for `pod` (and `container`, for launchers): a process we
/// started, not a stranger that got the PID after ours died.
pub fn is_ours(pid: u32, role: &str, pod: &str, container: Option<&str>) -> bool {
    let Some(argv) = cmdline(pid) else { return false };
    let flag = |name: &str| argv.iter().position(|a| a == name).and_then(|i| argv.get(i + 1)).map(String::as_str);
    argv.get(1).map(String::as_str) == Some(role)
        && flag("--pod") == Some(pod)
        && (container.is_none() || flag("--container") == container)
}

/// True while `pid` exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state letter follows the parenthesised command name, which may itself contain ')'.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// Sends `signal` to `pid` when it is ours; returns whether it was. Through a pidfd opened before the check,
/// so the signal reaches exactly the process that was checked (an adopted launcher is reaped by init at any
/// moment, and its PID may be reused); by PID where the kernel has no pidfd.
pub fn signal_ours(pid: u32, role: &str, pod: &str, container: Option<&str>, signal: Signal) -> bool {
    let fd = PidFd::open(pid);
    if matches!(fd, Ok(None)) || !is_ours(pid, role, pod, container) {
        return false;
    }
    match fd {
        Ok(Some(fd)) => fd.signal(signal),
        _ => drop(nix::sys::signal::kill(Pid::from_raw(pid as i32), signal)),
    }
    true
}

/// A pidfd (Linux 5.3+): names one process for good, so a signal through it cannot reach a process that
/// reused the PID, and it becomes readable when that process exits, which replaces polling /proc.
pub struct PidFd(OwnedFd);

impl PidFd {
    /// Ok(None): no such process (already reaped).
    pub fn open(pid: u32) -> std::io::Result<Option<PidFd>> {
        // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            return if err.raw_os_error() == Some(libc::ESRCH) { Ok(None) } else { Err(err) };
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        Ok(Some(PidFd(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as libc::c_int) })))
    }

    pub fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    pub fn signal(&self, signal: Signal) {
        // SAFETY: plain syscall on an fd we own; a process that has exited already yields ESRCH, which is fine.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<u8>(),
                0,
            )
        };
    }

    /// Resolves when the process has exited (zombie or reaped).
    pub async fn exited(self) -> std::io::Result<()> {
        // SAFETY: an OwnedFd stays open and names the same pidfd until the AsyncFd (its owner) drops it.
        let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(self.0, tokio::io::Interest::READABLE) }?;
        fd.readable().await?.retain_ready();
        Ok(())
    }
}

/// Reaps `pid` if it is our child and has exited (no-op for adopted processes, which init reaps).
pub fn try_reap(pid: u32) -> bool {
    !matches!(waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)), Ok(WaitStatus::StillAlive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_our_roles() {
        let me = std::process::id();
        assert!(!is_ours(me, INFRA_ROLE, "x", None));
        assert!(!is_ours(u32::MAX - 1, INFRA_ROLE, "x", None));
    }
}
