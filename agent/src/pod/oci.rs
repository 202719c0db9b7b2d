//! The launcher's path for a container with an image (`run-container --bundle`): crun sets the container
//! up from the runtime-spec bundle (`bundle.rs`) and exits (`run --detach`); the launcher, a child
//! subreaper, adopts the container and becomes its reaper as for any container. No runtime stays resident:
//! a foreground crun costs 1.7 MB PSS per container, the reaper 10 KiB (docs/benchmarks.md).
//!
//! Before crun runs, a child of the launcher takes a private mount namespace and mounts the image's
//! overlayfs (layers lower, the bundle's upper and work directories) on the bundle's rootfs. crun's mount
//! namespace is a copy of that one and pivots into it, so the overlay is in no namespace but the
//! container's: it goes when the container does, and a dead container leaves no mount on the node.
//!
//! The pod's network, IPC and UTS namespaces were joined by the launcher before (crun inherits them), the
//! container cgroup too (crun runs with `--cgroup-manager=disabled`, the agent owns the cgroups). The
//! container's PID namespace is made by crun (a shared one would make the infra, not us, its reaper).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{execvp, fork, ForkResult, Pid};

use super::launcher::{parent_alive, stdio_to, sys, LaunchError, LauncherArgs};
use super::reaper::Reaper;

/// The runtime, found in PATH (Debian's crun package in the guest image).
const RUNTIME: &str = "crun";
/// A cgroup2 mount beside v1 hierarchies (a hybrid host). crun 1.8 refuses to run there even with no cgroup
/// work to do; the child's private mount namespace drops it (the agent's cgroups are set already).
const HYBRID_CGROUP2: &str = "/sys/fs/cgroup/unified";
/// How long crun's last process may take to exit and leave the container to us (`await_adoption`).
const ADOPTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the bundle's container and becomes its reaper; returns only on failure.
pub(super) fn run(args: &LauncherArgs, bundle: &Path, reaper: &Reaper<'_>, log: Option<&File>) -> LaunchError {
    let lower = match &args.image_lower {
        Some(lower) => lower.as_str(),
        None => return LaunchError::Usage,
    };
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        return sys("prctl CHILD_SUBREAPER")(e);
    }
    let (alive_r, alive_w) = match std::io::pipe() {
        Ok(pipe) => pipe,
        Err(source) => return LaunchError::Io { what: "pipe".into(), source },
    };
    let id = format!("{}_{}", args.pod, args.container.as_deref().unwrap_or_default());
    // SAFETY: this process is single-threaded.
    match unsafe { fork() } {
        Err(e) => sys("fork")(e),
        Ok(ForkResult::Child) => {
            drop(alive_w);
            let err = child(bundle, lower, &id, log, &alive_r);
            eprintln!("testbed-agent run-container: {err}");
            // SAFETY: leave without running the parent's atexit state.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(alive_r);
            match wait_runtime(child, bundle) {
                Ok(container) => reaper.replace_launcher(container, &alive_w),
                Err(e) => e,
            }
        }
    }
}

/// Waits for `crun run --detach` and reads the container's PID from its pid file.
fn wait_runtime(runtime: Pid, bundle: &Path) -> Result<Pid, LaunchError> {
    let status = loop {
        match waitpid(runtime, None) {
            Ok(WaitStatus::Exited(_, 0)) => break None,
            Ok(WaitStatus::Exited(_, code)) => break Some(format!("exit code {code}")),
            Ok(WaitStatus::Signaled(_, sig, _)) => break Some(format!("signal {sig}")),
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(sys("waitpid crun")(e)),
        }
    };
    if let Some(status) = status {
        return Err(LaunchError::Runtime { status });
    }
    let pid_file = bundle.join("container.pid");
    let text = std::fs::read_to_string(&pid_file)
        .map_err(|source| LaunchError::Io { what: format!("read {}", pid_file.display()), source })?;
    let pid: i32 = text.trim().parse().map_err(|_| LaunchError::Runtime {
        status: format!("exit code 0 but {} holds {text:?}", pid_file.display()),
    })?;
    await_adoption(pid);
    reap_runtime_leftovers(pid);
    Ok(Pid::from_raw(pid))
}

/// crun's process that forked the container exited after crun did, so it was left to us as well: reaped
/// here, or it would stay a zombie child of the reaper for the container's whole life.
fn reap_runtime_leftovers(container: i32) {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value (plain integers and a union of them).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is ours to fill; WNOWAIT only peeks at a zombie child, reaping nothing.
        let peeked = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
        // SAFETY: waitid filled `info` (si_pid 0: no child has exited).
        let pid = unsafe { info.si_pid() };
        if peeked != 0 || pid == 0 || pid == container {
            return;
        }
        let _ = waitpid(Pid::from_raw(pid), None);
    }
}

/// crun's process that forked the container can exit after crun itself does; until it has, the container
/// is not our child yet and the reaper's wait4 would fail (ECHILD). A container that exits meanwhile ends
/// the wait too (its exit is then lost to us, as the runtime's is to any waiter).
fn await_adoption(pid: i32) {
    let me = std::process::id().to_string();
    let deadline = std::time::Instant::now() + ADOPTION_TIMEOUT;
    while std::time::Instant::now() < deadline {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return };
        let parent = status.lines().find_map(|l| l.strip_prefix("PPid:")).map(str::trim);
        if parent == Some(me.as_str()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn child(bundle: &Path, lower: &str, id: &str, log: Option<&File>, alive: &impl AsRawFd) -> LaunchError {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return sys("prctl PDEATHSIG")(e);
    }
    if !parent_alive(alive) {
        return LaunchError::ParentGone;
    }
    if let Err(e) = mount_rootfs(bundle, lower) {
        return e;
    }
    // Absent on a pure cgroup2 node (the guests): nothing to drop.
    let _ = umount2(HYBRID_CGROUP2, MntFlags::MNT_DETACH);
    if let Some(log) = log {
        if let Err(e) = stdio_to(log) {
            return e;
        }
    }
    // crun's state of an earlier run of this container (it exited, nobody ran `crun delete`).
    let state = bundle.join("crun-state");
    let _ = std::fs::remove_dir_all(&state);
    let argv = [
        RUNTIME.as_ref(),
        "--root".as_ref(),
        state.as_os_str(),
        "--cgroup-manager=disabled".as_ref(),
        "run".as_ref(),
        "--detach".as_ref(),
        "--bundle".as_ref(),
        bundle.as_os_str(),
        "--pid-file".as_ref(),
        bundle.join("container.pid").as_os_str(),
        id.as_ref(),
    ]
    .map(|a: &std::ffi::OsStr| CString::new(a.as_encoded_bytes()).unwrap_or_default());
    match execvp(&argv[0], &argv) {
        Err(e) => sys(format!("exec {RUNTIME}"))(e),
        Ok(never) => match never {},
    }
}

/// A private mount namespace with the image's overlayfs on the bundle's rootfs.
fn mount_rootfs(bundle: &Path, lower: &str) -> Result<(), LaunchError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unshare mnt"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(sys("make / private"))?;
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        bundle.join("upper").display(),
        bundle.join("work").display()
    );
    mount(Some("overlay"), &bundle.join("rootfs"), Some("overlay"), MsFlags::empty(), Some(options.as_str()))
        .map_err(sys(format!("mount the image's overlayfs on {}/rootfs", bundle.display())))
}
