//! QEMU processes by PID, safely: a recorded PID is only ours while its /proc start time still matches, so a
//! recycled PID never gets a signal from `down`.

use std::path::Path;
use std::time::{Duration, Instant};

/// Field 22 (`starttime`, clock ticks since boot) of /proc/<pid>/stat; None when the process is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state), so starttime (field 22) is the 20th token.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True while `pid` is alive, not a zombie, and is the process that was recorded (same start time).
pub fn is_same_process(pid: u32, recorded_start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let zombie = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) == Some("Z");
    !zombie && parse_start_time(&stat) == Some(recorded_start)
}

/// The argument vector of `pid` (None when it is gone or a zombie).
pub fn argv(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

/// Reads a QEMU pidfile.
pub fn read_pidfile(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Stops the recorded process: SIGTERM (QEMU exits cleanly on it), then SIGKILL after `grace`.
/// Returns true when something was signalled; false when the PID was gone or not ours any more.
pub fn terminate(pid: u32, recorded_start: u64, grace: Duration) -> bool {
    if !is_same_process(pid, recorded_start) {
        return false;
    }
    let target = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_same_process(pid, recorded_start) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_same_process(pid, recorded_start) {
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && is_same_process(pid, recorded_start) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    true
}

/// A child process tied to us: SIGKILLed by the kernel when the spawning thread dies (PR_SET_PDEATHSIG, which
/// also covers Ctrl-C and `exit`), and killed and reaped when this guard is dropped (an early return, a panic).
/// Only for short-lived helpers such as the KVM probe, never for the daemonized node VMs, which must outlive
/// the CLI. The kill is by PID of a child we have not reaped yet, so the PID cannot have been reused.
#[derive(Debug)]
pub struct TiedChild {
    child: std::process::Child,
}

impl TiedChild {
    pub fn spawn(cmd: &mut std::process::Command) -> std::io::Result<TiedChild> {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe syscalls.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl: then nobody would ever send the signal.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        Ok(TiedChild { child: cmd.spawn()? })
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }
}

impl Drop for TiedChild {
    fn drop(&mut self) {
        // Both fail harmlessly when the child has already exited and been reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tied_child_is_killed_on_drop() {
        let child = TiedChild::spawn(std::process::Command::new("sleep").arg("30")).unwrap();
        let pid = child.child.id();
        let st = start_time(pid).unwrap();
        drop(child);
        assert!(!is_same_process(pid, st), "sleep {pid} survived the guard");
    }

    #[test]
    fn tied_child_dies_with_the_spawning_thread() {
        // The guard is leaked (as on Ctrl-C, where no destructor runs); the kernel's PDEATHSIG must still kill
        // the child once the thread that spawned it is gone.
        let pid = std::thread::spawn(|| {
            let child = TiedChild::spawn(std::process::Command::new("sleep").arg("30")).unwrap();
            let pid = child.child.id();
            std::mem::forget(child);
            pid
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut status = 0;
        // Reap it ourselves (the leaked Child never will): waitpid returns once SIGKILL has landed.
        while Instant::now() < deadline {
            // SAFETY: waitpid on our own child.
            let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
            if r == pid as libc::pid_t {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL, "status {status:#x}");
    }

    #[test]
    fn parses_start_time_with_odd_comm() {
        let stat = "1234 (qemu (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 1000 100";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_process_matches_and_other_start_time_does_not() {
        let me = std::process::id();
        let st = start_time(me).unwrap();
        assert!(is_same_process(me, st));
        assert!(!is_same_process(me, st + 1));
        assert!(argv(me).is_some_and(|a| !a.is_empty()));
    }

    #[test]
    fn terminate_kills_a_child_and_ignores_mismatch() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let st = start_time(pid).unwrap();
        assert!(!terminate(pid, st + 7, Duration::from_millis(10)));
        // A child we have not reaped stays a zombie after death; is_same_process treats zombies as gone.
        assert!(terminate(pid, st, Duration::from_secs(2)));
        let status = child.wait().unwrap();
        assert!(!status.success());
    }
}
