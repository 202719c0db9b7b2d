//! The pod sandbox: the infra ("pause") process that holds a pod's namespaces, and checks that a PID still
//! belongs to a process this agent started (PIDs are reused; we never signal a stranger).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
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
    #[error("pod {pod}: name or path contains a NUL byte")]
    Nul { pod: String },
}

/// Starts `<exe> infra --pod NAME` as PID 1 of new PID and IPC namespaces, plus new network and UTS
/// namespaces unless `host_network` (Kubernetes hostNetwork shares the node's net and UTS namespaces; its
/// IPC stays private since hostIPC is a separate switch). The hostname is set before exec and CLONE_VFORK
/// holds us until then, so the namespaces are complete when this returns.
pub fn spawn_infra(exe: &Path, pod: &str, host_network: bool) -> Result<u32, SandboxError> {
    let nul = |_| SandboxError::Nul { pod: pod.to_string() };
    let exe_c = CString::new(exe.as_os_str().as_bytes()).map_err(nul)?;
    let args: Vec<CString> = ["testbed-agent", INFRA_ROLE, "--pod", pod]
        .iter()
        .map(|a| CString::new(*a))
        .collect::<Result<_, _>>()
        .map_err(nul)?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let hostname = pod.as_bytes();

    let mut flags = CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_VFORK;
    if !host_network {
        flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
    }
    // The child only makes raw syscalls (async-signal-safe) on its own copy of memory, then execs.
    let child = Box::new(|| -> isize {
        // SAFETY: plain syscalls on buffers prepared before clone.
        unsafe {
            if !host_network && libc::sethostname(hostname.as_ptr().cast(), hostname.len()) != 0 {
                return 126;
            }
            libc::execve(exe_c.as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        127
    });
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: the callback needs little stack and execs or exits; no locks are taken in the child.
    let pid = unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|source| SandboxError::Clone { pod: pod.to_string(), source })?;
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) | Err(_) => Ok(pid.as_raw() as u32),
        Ok(status) => Err(SandboxError::DiedAtStart { pod: pod.to_string(), status }),
    }
}

extern "C" fn on_sigchld(_: libc::c_int) {}
extern "C" fn on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// Body of the infra process: PID 1 of the pod's PID namespace. It reaps whatever gets re-parented to it
/// (processes of containers that share this PID namespace) and otherwise sleeps.
pub fn infra_main() -> ! {
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    // SAFETY: handlers only call async-signal-safe functions.
    unsafe {
        let _ = sigaction(
            Signal::SIGCHLD,
            &SigAction::new(SigHandler::Handler(on_sigchld), SaFlags::empty(), SigSet::empty()),
        );
        let _ = sigaction(
            Signal::SIGTERM,
            &SigAction::new(SigHandler::Handler(on_term), SaFlags::empty(), SigSet::empty()),
        );
        let _ =
            sigaction(Signal::SIGINT, &SigAction::new(SigHandler::Handler(on_term), SaFlags::empty(), SigSet::empty()));
    }
    // Block SIGCHLD outside sigsuspend so a child dying between the reap loop and the sleep is not missed.
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), None);
    loop {
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        let _ = SigSet::empty().suspend();
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

/// Sends `signal` to `pid` when it is ours; returns whether it was.
pub fn signal_ours(pid: u32, role: &str, pod: &str, container: Option<&str>, signal: Signal) -> bool {
    if !is_ours(pid, role, pod, container) {
        return false;
    }
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal);
    true
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
