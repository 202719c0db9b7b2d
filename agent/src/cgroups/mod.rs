//! Pod and container cgroups. The kernel interface sits behind the small `Cgroups` trait: cgroup v2 (what the
//! guests run) and the v1 fallback write the same limits into their own files; unit tests use a temp dir as
//! the cgroup filesystem, which shows exactly which value lands in which file.

mod v1;
mod v2;

use std::path::{Path, PathBuf};

pub use v1::CgroupsV1;
pub use v2::CgroupsV2;

/// Where the cgroup filesystem is mounted on every system we support.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// CFS period the kubelet uses (100 ms); `cpu.max` quota is relative to it.
pub const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cgroup {path}: cannot parse `{value}`")]
    Parse { path: PathBuf, value: String },
    #[error("cgroup v1: no `{0}` hierarchy is mounted")]
    MissingController(&'static str),
    /// rmdir refused because a process is still inside (a killed process leaves only once it is reaped).
    #[error("cgroup {path}: still has processes")]
    Busy { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, CgroupError>;

/// Limits of one cgroup, already converted to kernel units (see `crate::qos`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    /// CFS quota in microseconds per `CPU_PERIOD_US`; None = unlimited (`max`).
    pub cpu_quota_us: Option<u64>,
    /// cgroup v1 `cpu.shares` (2..=262144); v2 derives `cpu.weight` from it as the kubelet does.
    pub cpu_shares: u64,
    pub memory_max: Option<u64>,
    pub pids_max: Option<u64>,
}

/// A cgroup hierarchy the agent owns (`/sys/fs/cgroup/testbed` on v2). Paths are relative to that root,
/// e.g. `pod-web` and `pod-web/srv`.
pub trait Cgroups: Send + Sync {
    /// `v2` or `v1`, as NodeStatus reports it.
    fn version(&self) -> &'static str;
    /// Creates the root and enables the controllers we need. Idempotent.
    fn init(&self) -> Result<()>;
    /// Creates `rel` (idempotent) and writes its limits. `parent_of_children` enables controllers for the
    /// cgroups below it (v2 only needs that).
    fn create(&self, rel: &str, limits: &CgroupLimits, parent_of_children: bool) -> Result<()>;
    /// The files a process writes its PID into to join `rel` (one per hierarchy).
    fn procs_files(&self, rel: &str) -> Vec<PathBuf>;
    /// OOM kills counted in `rel` so far.
    fn oom_kills(&self, rel: &str) -> Result<u64>;
    /// Removes `rel`; missing is fine. One attempt: `CgroupError::Busy` while processes are still inside
    /// (`remove_when_empty` retries without blocking the runtime).
    fn remove(&self, rel: &str) -> Result<()>;
    /// Absolute directory shown to users (v1: the memory hierarchy's).
    fn display_path(&self, rel: &str) -> String;
}

/// Picks v2 when the unified hierarchy with controllers is mounted at /sys/fs/cgroup, else v1.
pub fn detect(root_name: &str) -> Result<Box<dyn Cgroups>> {
    let mount = Path::new(CGROUP_MOUNT);
    if mount.join("cgroup.controllers").exists() {
        Ok(Box::new(CgroupsV2::new(mount, root_name)))
    } else {
        Ok(Box::new(CgroupsV1::discover(root_name)?))
    }
}

pub(crate) fn write_file(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| CgroupError::Io { path: path.to_path_buf(), source })
}

/// Writes `value` unless the file already holds it. Some writes are costly in the kernel: any write to
/// cpu.max / cpu.cfs_quota_us walks every task group (tg_set_cfs_bandwidth), which made pod creation
/// quadratic in the number of pods when every new cgroup got its (default) "unlimited" written again.
/// `unlimited` marks a value meaning "no limit", which the kernel spells in several ways.
pub(crate) fn set_file(path: &Path, value: &str, unlimited: bool) -> Result<()> {
    if let Ok(current) = std::fs::read_to_string(path) {
        let current = current.trim();
        let current_unlimited = current == "max"
            || current == "-1"
            || current.starts_with("max ") && value.ends_with(current.trim_start_matches("max "))
            || current.parse::<u64>().is_ok_and(|v| v >= 1 << 62);
        if current == value || unlimited && current_unlimited {
            return Ok(());
        }
    }
    write_file(path, value)
}

/// `set_file` for a limit of a cgroup that `mkdir` may just have made: a new cgroup holds the kernel's
/// defaults, so writing `kernel_default` there is skipped without reading the file first (each read or write
/// is an open, a kernfs lookup and a close: most of a pod's cgroup cost once the directories exist).
pub(crate) fn set_limit(path: &Path, value: &str, unlimited: bool, fresh: bool, kernel_default: &str) -> Result<()> {
    if fresh && value == kernel_default {
        return Ok(());
    }
    set_file(path, value, unlimited)
}

pub(crate) fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Io { path: path.to_path_buf(), source })
}

/// Creates `path`; true if it is new, false if it existed.
pub(crate) fn mkdir(path: &Path) -> Result<bool> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Io { path: path.to_path_buf(), source }),
    }
}

/// One rmdir; EBUSY (processes still inside) becomes `CgroupError::Busy` so the caller can retry.
pub(crate) fn rmdir(path: &Path) -> Result<()> {
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(CgroupError::Busy { path: path.to_path_buf() }),
        Err(source) => Err(CgroupError::Io { path: path.to_path_buf(), source }),
    }
}

/// How often and how long `remove_when_empty` retries a busy cgroup (250 x 20 ms = 5 s), and every how many
/// attempts it kills what is still inside. A 1 s budget was too short on a loaded one-vCPU TCG guest: a
/// killed container's cgroup stayed busy about 4 s there, and its pod's DELETE failed (`[setup] test pods
/// removed`) although the retry a second later removed it.
const REMOVE_ATTEMPTS: u32 = 250;
const REMOVE_RETRY: std::time::Duration = std::time::Duration::from_millis(20);
const KILL_EVERY: u32 = 10;

/// Removes `rel`, retrying for up to 5 s while it is busy: a cgroup stays busy until its last (just killed)
/// process has been reaped. Whatever is still a member every 200 ms is SIGKILLed: at teardown everything in
/// a pod's cgroups is the pod's, including a process a restarting container forked after the kills before.
/// Waits with the async timer, so the agent's single runtime thread keeps serving the API, the supervisors
/// and the reconcile meanwhile.
pub async fn remove_when_empty(cgroups: &dyn Cgroups, rel: &str) -> Result<()> {
    let mut attempt = 1;
    loop {
        match cgroups.remove(rel) {
            Err(CgroupError::Busy { .. }) if attempt < REMOVE_ATTEMPTS => {
                if attempt % KILL_EVERY == 0 {
                    kill_members(&cgroups.procs_files(rel));
                }
                attempt += 1;
                tokio::time::sleep(REMOVE_RETRY).await;
            }
            other => return other,
        }
    }
}

/// SIGKILLs every process listed in the first of `procs` (one cgroup's cgroup.procs, one per hierarchy); a
/// listed PID is a live member of the cgroup, not a stranger's reused PID.
pub fn kill_members(procs: &[PathBuf]) {
    let Some(list) = procs.first().and_then(|f| std::fs::read_to_string(f).ok()) else { return };
    for pid in list.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Reads `key N` from a flat keyed file such as memory.events or memory.oom_control.
pub(crate) fn keyed_value(path: &Path, key: &str) -> Result<u64> {
    let text = read_file(path)?;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if it.next() == Some(key) {
            let v = it.next().unwrap_or_default();
            return v.parse().map_err(|_| CgroupError::Parse { path: path.to_path_buf(), value: line.to_string() });
        }
    }
    // Older kernels lack the counter: nothing was counted.
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// A cgroup that stays busy for the first `busy_for` removal attempts.
    struct BusyCgroup {
        busy_for: u32,
        attempts: AtomicU32,
        /// The cgroup.procs it answers, if any.
        procs: Option<PathBuf>,
    }

    impl Cgroups for BusyCgroup {
        fn version(&self) -> &'static str {
            "fake"
        }
        fn init(&self) -> Result<()> {
            Ok(())
        }
        fn create(&self, _: &str, _: &CgroupLimits, _: bool) -> Result<()> {
            Ok(())
        }
        fn procs_files(&self, _: &str) -> Vec<PathBuf> {
            self.procs.iter().cloned().collect()
        }
        fn oom_kills(&self, _: &str) -> Result<u64> {
            Ok(0)
        }
        fn remove(&self, rel: &str) -> Result<()> {
            if self.attempts.fetch_add(1, Ordering::SeqCst) < self.busy_for {
                return Err(CgroupError::Busy { path: PathBuf::from(rel) });
            }
            Ok(())
        }
        fn display_path(&self, rel: &str) -> String {
            rel.to_string()
        }
    }

    /// A busy cgroup is retried with the async timer: on a current-thread runtime (as the agent's), other
    /// tasks keep running while the removal waits.
    #[tokio::test(flavor = "current_thread")]
    async fn busy_cgroup_removal_does_not_block_the_runtime() {
        let cg = Arc::new(BusyCgroup { busy_for: 10, attempts: AtomicU32::new(0), procs: None });
        let ticks = Arc::new(AtomicU32::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            })
        };
        tokio::task::yield_now().await;
        let before = ticks.load(Ordering::SeqCst);
        remove_when_empty(cg.as_ref(), "pod-x").await.unwrap();
        assert_eq!(cg.attempts.load(Ordering::SeqCst), 11);
        // 10 retries x 20 ms: the 5 ms ticker got its turn at every retry (a blocking sleep would starve it).
        assert!(ticks.load(Ordering::SeqCst) - before >= 5, "the runtime was blocked");
        ticker.abort();
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn removal_gives_up_on_a_cgroup_that_stays_busy() {
        let cg = BusyCgroup { busy_for: u32::MAX, attempts: AtomicU32::new(0), procs: None };
        let err = remove_when_empty(&cg, "pod-x").await.unwrap_err();
        assert!(matches!(err, CgroupError::Busy { .. }), "{err}");
        assert_eq!(cg.attempts.load(Ordering::SeqCst), REMOVE_ATTEMPTS);
    }

    /// A process still in the cgroup while it stays busy is killed (here a real `sleep`, listed in a fake
    /// cgroup.procs), not waited out.
    #[tokio::test(flavor = "current_thread")]
    async fn what_stays_inside_a_busy_cgroup_is_killed() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let procs = dir.path().join("cgroup.procs");
        std::fs::write(&procs, format!("{}\n", child.id())).unwrap();
        let cg = BusyCgroup { busy_for: KILL_EVERY + 1, attempts: AtomicU32::new(0), procs: Some(procs) };
        remove_when_empty(&cg, "pod-x").await.unwrap();
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL), "{status:?}");
    }

    #[test]
    fn rmdir_reports_missing_as_done() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("pod-a");
        std::fs::create_dir(&cg).unwrap();
        rmdir(&cg).unwrap();
        rmdir(&cg).unwrap();
        assert!(!cg.exists());
    }

    #[test]
    fn keyed_value_reads_counters() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        std::fs::write(&f, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n").unwrap();
        assert_eq!(keyed_value(&f, "oom_kill").unwrap(), 2);
        assert_eq!(keyed_value(&f, "absent").unwrap(), 0);
    }
}
