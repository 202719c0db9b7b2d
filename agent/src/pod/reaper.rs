//! The container reaper: what a container launcher becomes once its container runs. The launcher
//! (`launcher.rs`, the agent's 8-12 MB binary) forks the container, reports its PID, then replaces itself
//! with this 720-byte static x86-64 program, run from a sealed memfd like the infra program. Same PID, so
//! to the agent it is still the launcher: its parent (or, after an agent restart, a process the new agent
//! adopts), the target of the pod's SIGTERM and SIGKILL, and the process whose death kills the container
//! (PDEATHSIG). It waits for the container, writes its exit code to the exit file (through a temporary
//! file and a rename, so a reader never sees it half-written) and exits with that code; a container killed
//! by signal n gives 128+n. SIGHUP, SIGINT and SIGTERM are forwarded to the container.
//!
//! Why: a launcher that stayed resident as the agent's binary kept 384 KiB of private pages (PSS) per
//! container, 38 MB for 100 pods; the reaper keeps a few KiB.
//!
//! Its argv carries `run-container --pod P --container C`, the same role, pod and container the agent
//! looks for in /proc/<pid>/cmdline to recognise its launchers (`sandbox::is_ours`), then the child's PID
//! and the two paths at fixed places (see `argv`). The source is `reaper.S`, built with
//! `gcc -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-n -Wl,-z,noexecstack -o reaper reaper.S && strip -s -R .comment reaper`;
//! a test assembles it again and compares.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::unistd::{dup2, Pid};

use super::launcher::{sys, LaunchError};
use super::sandbox::LAUNCHER_ROLE;

#[rustfmt::skip]
pub const REAPER_ELF: [u8; 720] = [
    0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x02, 0x00, 0x3e, 0x00, 0x01, 0x00, 0x00, 0x00, 0xb0, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x38, 0x00, 0x02, 0x00, 0x40, 0x00, 0x03, 0x00, 0x02, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xb0, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0xb0, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x48, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x48, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x51, 0xe5, 0x74, 0x64, 0x06, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x40, 0x48, 0x83, 0x7d, 0x00, 0x0c, 0x0f, 0x85, 0x20, 0x01,
    0x00, 0x00, 0x48, 0x8b, 0x75, 0x40, 0x45, 0x31, 0xe4, 0x0f, 0xb6, 0x06, 0x83, 0xe8, 0x30, 0x83,
    0xf8, 0x09, 0x77, 0x0c, 0x45, 0x6b, 0xe4, 0x0a, 0x41, 0x01, 0xc4, 0x48, 0xff, 0xc6, 0xeb, 0xe9,
    0xb8, 0x0e, 0x00, 0x00, 0x00, 0x31, 0xff, 0x48, 0x8d, 0x35, 0x02, 0x01, 0x00, 0x00, 0x31, 0xd2,
    0x41, 0xba, 0x08, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xb8, 0x3d, 0x00, 0x00, 0x00, 0x44, 0x89, 0xe7,
    0x48, 0x8d, 0x74, 0x24, 0x38, 0xba, 0x01, 0x00, 0x00, 0x00, 0x45, 0x31, 0xd2, 0x0f, 0x05, 0x48,
    0x85, 0xc0, 0x7f, 0x3e, 0x48, 0x83, 0xf8, 0xfc, 0x74, 0xde, 0x48, 0x85, 0xc0, 0x0f, 0x8c, 0xbf,
    0x00, 0x00, 0x00, 0xb8, 0x80, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x3d, 0xc1, 0x00, 0x00, 0x00, 0x31,
    0xf6, 0x31, 0xd2, 0x41, 0xba, 0x08, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x83, 0xf8, 0x11, 0x74, 0xb8,
    0x85, 0xc0, 0x7e, 0xb4, 0x89, 0xc6, 0xb8, 0x3e, 0x00, 0x00, 0x00, 0x44, 0x89, 0xe7, 0x0f, 0x05,
    0xeb, 0xa6, 0x8b, 0x44, 0x24, 0x38, 0x89, 0xc3, 0x83, 0xe3, 0x7f, 0x74, 0x08, 0x81, 0xc3, 0x80,
    0x00, 0x00, 0x00, 0xeb, 0x05, 0x0f, 0xb6, 0x5c, 0x24, 0x39, 0x48, 0x8d, 0x74, 0x24, 0x28, 0xc6,
    0x06, 0x0a, 0x89, 0xd8, 0xb9, 0x0a, 0x00, 0x00, 0x00, 0x31, 0xd2, 0xf7, 0xf1, 0x83, 0xc2, 0x30,
    0x48, 0xff, 0xce, 0x88, 0x16, 0x85, 0xc0, 0x75, 0xf0, 0x49, 0x89, 0xf5, 0x4c, 0x8d, 0x74, 0x24,
    0x29, 0x49, 0x29, 0xf6, 0xb8, 0x02, 0x00, 0x00, 0x00, 0x48, 0x8b, 0x7d, 0x60, 0xbe, 0x41, 0x02,
    0x08, 0x00, 0xba, 0xa4, 0x01, 0x00, 0x00, 0x0f, 0x05, 0x85, 0xc0, 0x78, 0x2c, 0x41, 0x89, 0xc7,
    0xb8, 0x01, 0x00, 0x00, 0x00, 0x44, 0x89, 0xff, 0x4c, 0x89, 0xee, 0x4c, 0x89, 0xf2, 0x0f, 0x05,
    0xb8, 0x03, 0x00, 0x00, 0x00, 0x44, 0x89, 0xff, 0x0f, 0x05, 0xb8, 0x52, 0x00, 0x00, 0x00, 0x48,
    0x8b, 0x7d, 0x60, 0x48, 0x8b, 0x75, 0x50, 0x0f, 0x05, 0xb8, 0xe7, 0x00, 0x00, 0x00, 0x89, 0xdf,
    0x0f, 0x05, 0xb8, 0xe7, 0x00, 0x00, 0x00, 0xbf, 0x7f, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x66, 0x90,
    0x03, 0x40, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2e, 0x73, 0x68, 0x73, 0x74, 0x72, 0x74,
    0x61, 0x62, 0x00, 0x2e, 0x74, 0x65, 0x78, 0x74, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x0b, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xb0, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x48, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf8, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// A sealed, close-on-exec memfd holding `REAPER_ELF`, to `execveat` from.
fn memfd() -> std::io::Result<OwnedFd> {
    super::infra::sealed_memfd(c"tb-reaper", &REAPER_ELF)
}

/// What a container's launcher becomes once its container runs, made ready before the fork so that nothing
/// after it can fail but the exec itself.
pub(super) struct Reaper<'a> {
    image: OwnedFd,
    pod: &'a str,
    container: &'a str,
    exit_file: &'a Path,
}

impl<'a> Reaper<'a> {
    pub(super) fn new(pod: &'a str, container: &'a str, exit_file: &'a Path) -> Result<Reaper<'a>, LaunchError> {
        let image =
            memfd().map_err(|source| LaunchError::Io { what: "load the reaper into a memfd".into(), source })?;
        Ok(Reaper { image, pod, container, exit_file })
    }

    /// Reports the container's PID (`child`) to the agent on stdout, then execs the reaper in this process.
    /// Returns only if that failed; the launcher then exits and the container dies of its PDEATHSIG.
    pub(super) fn replace_launcher(&self, child: Pid, alive: &impl AsRawFd) -> LaunchError {
        // Blocked across the exec: a SIGTERM the agent sends meanwhile stays pending for the reaper to
        // forward (it takes these with rt_sigtimedwait), instead of killing us before the reaper runs.
        let mut forwarded = SigSet::empty();
        for sig in [Signal::SIGHUP, Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
            forwarded.add(sig);
        }
        if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), None) {
            return sys("block the forwarded signals")(e);
        }
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{child}");
            let _ = out.flush();
        }
        // Let go of the agent's pipe: it reads our stdout until EOF.
        if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
            let _ = dup2(null.as_raw_fd(), 1);
        }
        // The child reads this pipe to learn whether we are alive (`launcher::parent_alive`): it must stay
        // open in the reaper, or a child that has not looked yet would take the exec for our death.
        // SAFETY: clears FD_CLOEXEC on a pipe end the caller owns.
        if unsafe { libc::fcntl(alive.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
            let source = std::io::Error::last_os_error();
            return LaunchError::Io { what: "keep the liveness pipe open".into(), source };
        }
        match argv(self.pod, self.container, child.as_raw() as u32, self.exit_file) {
            Ok(argv) => LaunchError::Io { what: "exec the reaper".into(), source: exec(&self.image, &argv) },
            Err(_) => LaunchError::Nul,
        }
    }
}

/// The reaper's argv; `reaper.S` reads the child's PID, the exit file and the temporary file by their
/// places (7, 9 and 11) and refuses any other count.
fn argv(pod: &str, container: &str, child: u32, exit_file: &Path) -> Result<Vec<CString>, std::ffi::NulError> {
    let tmp = exit_file.with_extension("tmp");
    let (exit_file, tmp) = (exit_file.as_os_str().as_encoded_bytes(), tmp.as_os_str().as_encoded_bytes());
    let child = child.to_string();
    let args: [&[u8]; 12] = [
        b"testbed-reaper",
        LAUNCHER_ROLE.as_bytes(),
        b"--pod",
        pod.as_bytes(),
        b"--container",
        container.as_bytes(),
        b"--child",
        child.as_bytes(),
        b"--exit-file",
        exit_file,
        b"--via",
        tmp,
    ];
    args.into_iter().map(CString::new).collect()
}

/// Replaces this process with the reaper; returns only if the exec failed. No environment: it needs none.
fn exec(image: &OwnedFd, argv: &[CString]) -> std::io::Error {
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: NUL-terminated argv and envp arrays of live CStrings; execveat returns only on failure.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            image.as_raw_fd(),
            c"".as_ptr(),
            ptrs.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    std::io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    #[test]
    fn the_image_is_its_source_assembled() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("reaper");
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src/pod/reaper.S");
        let gcc = ["-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-Wl,-n", "-Wl,-z,noexecstack", "-o"];
        assert!(Command::new("gcc").args(gcc).arg(&out).arg(src).status().unwrap().success());
        assert!(Command::new("strip").args(["-s", "-R", ".comment"]).arg(&out).status().unwrap().success());
        assert!(std::fs::read(&out).unwrap() == REAPER_ELF, "reaper.S changed: rebuild REAPER_ELF from it");
    }

    /// Runs `child` in the background of a shell that then becomes the reaper, the way the launcher does
    /// (fork, then exec), with the argv `argv` builds; the shell supplies the child's PID as `$!`.
    fn reap(child: &str, exit_file: &Path) -> Child {
        let mut args: Vec<String> = argv("p", "c", 0, exit_file)
            .unwrap()
            .into_iter()
            .map(|a| format!("'{}'", a.into_string().unwrap()))
            .collect();
        args[7] = "$!".into();
        with_reaper_as_fd3(&format!("{child} & exec /proc/self/fd/3 {}", args[1..].join(" "))).0.spawn().unwrap()
    }

    /// `sh -c script` with the reaper's memfd as its fd 3 (kept open as long as the Command).
    fn with_reaper_as_fd3(script: &str) -> (Command, OwnedFd) {
        let image = memfd().unwrap();
        let fd = image.as_raw_fd();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        // SAFETY: dup2 and fcntl are async-signal-safe. dup2 leaves the copy open on exec, but does nothing
        // when the memfd already is fd 3: then close-on-exec is cleared by hand.
        unsafe {
            cmd.pre_exec(move || {
                let kept = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
                if kept < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            })
        };
        (cmd, image)
    }

    /// Waits until `pid` runs the reaper and sits in rt_sigtimedwait (syscall 128), its signals blocked.
    fn wait_reaper(pid: u32) {
        let t0 = Instant::now();
        loop {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
            if exe.to_string_lossy().contains("memfd:tb-reaper") && syscall.starts_with("128 ") {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "{pid} did not become the reaper: {syscall}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn writes_the_exit_code_and_exits_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.exit");
        let status = reap("sh -c 'sleep 0.2; exit 3'", &file).wait().unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "3\n");
        assert!(!dir.path().join("c.tmp").exists());
    }

    #[test]
    fn forwards_sigterm_and_reports_death_by_signal_as_128_plus_n() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.exit");
        let mut reaper = reap("sleep 1000", &file);
        wait_reaper(reaper.id());
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(reaper.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let status = reaper.wait().unwrap();
        assert_eq!((status.code(), status.signal()), (Some(143), None), "the reaper itself must not die of it");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "143\n");
    }

    #[test]
    fn refuses_an_argv_it_was_not_built_for() {
        // The same exec with the full argv works (so the 127 below is the reaper's, not the shell's).
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(reap(":", &dir.path().join("c.exit")).wait().unwrap().code(), Some(0));
        let mut short = with_reaper_as_fd3("exec /proc/self/fd/3 run-container --pod p --container c --child 1");
        assert_eq!(short.0.status().unwrap().code(), Some(127));
    }
}
