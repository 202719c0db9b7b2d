//! Fakes of the kernel for the pod runtime's unit tests: `FakeProcesses` keeps processes as entries of a
//! table (who each PID is, which are alive) and launchers exit as the test scripts them; `FakeCgroups` makes
//! every cgroup operation succeed except removing the cgroups a test holds busy. Neither needs root.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::probe_run::ProbeTarget;
use super::processes::{LaunchError, LaunchRequest, Launched, PodProcess, PodProcesses};
use super::sandbox::SandboxError;
use crate::cgroups::{self, CgroupLimits, Cgroups};
use testbed_api::probe::ProbeKind;

/// Who a fake process is: an infra process (`container` None) or a container's launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    pod: String,
    container: Option<String>,
}

impl From<PodProcess<'_>> for Identity {
    fn from(which: PodProcess<'_>) -> Identity {
        match which {
            PodProcess::Infra { pod } => Identity { pod: pod.into(), container: None },
            PodProcess::Launcher { pod, container } => Identity { pod: pod.into(), container: Some(container.into()) },
        }
    }
}

/// How one launch of a container ends.
#[derive(Debug, Clone, Copy)]
pub enum Run {
    /// The container exits with `code` after running for `after`.
    ExitsAfter(Duration, i32),
    /// The launcher reports no container (a failed start).
    FailsToStart,
}

#[derive(Default)]
struct Table {
    last_pid: u32,
    /// Live processes: launchers, infra processes, and containers (which live as long as their launcher).
    live: HashMap<u32, Identity>,
    /// Container PID of each live launcher.
    container_of: HashMap<u32, u32>,
    /// Ends a running launcher (one this agent started) with an exit code.
    enders: HashMap<u32, oneshot::Sender<i32>>,
    /// How the next launches of each container end, in order; a launch beyond the script runs until killed.
    scripts: HashMap<String, VecDeque<Run>>,
    /// Every launcher start: container name and time.
    launches: Vec<(String, Instant)>,
    infra_spawns: Vec<String>,
    /// PIDs killed with `kill` or `kill_own_child`.
    killed: Vec<u32>,
    /// Probes that fail, by container and kind (every other probe succeeds).
    failing: BTreeSet<(String, ProbeKindKey)>,
    /// Every probe run: container, kind, time.
    probes: Vec<(String, ProbeKindKey, Instant)>,
}

/// `ProbeKind` as a table key.
type ProbeKindKey = &'static str;

impl Table {
    fn new_pid(&mut self) -> u32 {
        self.last_pid += 1;
        1000 + self.last_pid
    }

    /// The launcher `pid` and its container end; the supervisor waiting on it sees `code`.
    fn end_launcher(&mut self, pid: u32, code: i32) {
        self.live.remove(&pid);
        if let Some(container) = self.container_of.remove(&pid) {
            self.live.remove(&container);
        }
        if let Some(ender) = self.enders.remove(&pid) {
            let _ = ender.send(code);
        }
    }
}

/// A `PodProcesses` over a table; clones share it, so a test keeps one to script and inspect.
#[derive(Clone, Default)]
pub struct FakeProcesses(Arc<Mutex<Table>>);

impl FakeProcesses {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next launches of `container` end as `runs` say, in order.
    pub fn script(&self, container: &str, runs: impl IntoIterator<Item = Run>) {
        self.table().scripts.entry(container.into()).or_default().extend(runs);
    }

    /// When each launcher of `container` was started.
    pub fn launches(&self, container: &str) -> Vec<Instant> {
        self.table().launches.iter().filter(|(c, _)| c == container).map(|(_, t)| *t).collect()
    }

    /// From now on `container`'s `kind` probe fails (`false`) or succeeds (`true`).
    pub fn set_probe(&self, container: &str, kind: ProbeKind, succeeds: bool) {
        let key = (container.to_string(), kind.field());
        let mut t = self.table();
        if succeeds {
            t.failing.remove(&key);
        } else {
            t.failing.insert(key);
        }
    }

    /// When `container`'s `kind` probe ran.
    pub fn probe_times(&self, container: &str, kind: ProbeKind) -> Vec<Instant> {
        self.table().probes.iter().filter(|(c, k, _)| c == container && *k == kind.field()).map(|p| p.2).collect()
    }

    pub fn infra_spawns(&self) -> usize {
        self.table().infra_spawns.len()
    }

    pub fn killed(&self) -> Vec<u32> {
        self.table().killed.clone()
    }

    pub fn is_alive(&self, pid: u32) -> bool {
        self.table().live.contains_key(&pid)
    }

    /// A process a previous agent started and left running.
    pub fn left_running(&self, pid: u32, which: PodProcess<'_>) {
        self.table().live.insert(pid, which.into());
    }

    /// Process `pid` dies (an infra process killed from outside, an adopted launcher that exited).
    pub fn dies(&self, pid: u32) {
        self.table().end_launcher(pid, 137);
    }
}

impl PodProcesses for FakeProcesses {
    fn spawn_infra(&self, pod: &str, _host_network: bool, _procs: &[PathBuf]) -> Result<u32, SandboxError> {
        let mut t = self.table();
        let pid = t.new_pid();
        t.live.insert(pid, Identity { pod: pod.into(), container: None });
        t.infra_spawns.push(pod.into());
        Ok(pid)
    }

    fn start_launcher<'a>(&'a self, req: LaunchRequest<'a>) -> BoxFuture<'a, Result<Launched, LaunchError>> {
        let (pod, container) = (req.pod.name.clone(), req.container.name.clone());
        let mut t = self.table();
        t.launches.push((container.clone(), Instant::now()));
        let run = t.scripts.get_mut(&container).and_then(VecDeque::pop_front);
        if let Some(Run::FailsToStart) = run {
            let err = LaunchError::NoContainer { pod, container, reported: String::new(), status: "exit 1".into() };
            return Box::pin(async move { Err(err) });
        }
        let (launcher_pid, container_pid) = (t.new_pid(), t.new_pid());
        let identity = Identity { pod, container: Some(container) };
        t.live.insert(launcher_pid, identity.clone());
        t.live.insert(container_pid, identity);
        t.container_of.insert(launcher_pid, container_pid);
        let (ender, ended) = oneshot::channel();
        t.enders.insert(launcher_pid, ender);
        let table = self.clone();
        let exit = Box::pin(async move {
            // A signal (delete) ends a scripted run early too.
            let runs_for = match run {
                Some(Run::ExitsAfter(after, code)) => Some((after, code)),
                _ => None,
            };
            let code = match runs_for {
                Some((after, code)) => tokio::select! {
                    _ = tokio::time::sleep(after) => code,
                    signalled = ended => signalled.unwrap_or(137),
                },
                None => ended.await.unwrap_or(137),
            };
            table.table().end_launcher(launcher_pid, code);
            code
        });
        Box::pin(async move { Ok(Launched { launcher_pid, container_pid, exit }) })
    }

    fn is_ours(&self, pid: u32, which: PodProcess<'_>) -> bool {
        self.table().live.get(&pid) == Some(&which.into())
    }

    fn is_running(&self, pid: u32) -> bool {
        self.is_alive(pid)
    }

    fn signal(&self, pid: u32, which: PodProcess<'_>, signal: Signal) {
        if self.is_ours(pid, which) {
            self.table().end_launcher(pid, 128 + signal as i32);
        }
    }

    fn kill<'a>(&'a self, pid: u32, which: PodProcess<'a>) -> BoxFuture<'a, ()> {
        if self.is_ours(pid, which) {
            let mut t = self.table();
            t.killed.push(pid);
            t.end_launcher(pid, 128 + Signal::SIGKILL as i32);
        }
        Box::pin(async {})
    }

    fn kill_own_child(&self, pid: u32) -> BoxFuture<'_, ()> {
        let mut t = self.table();
        t.killed.push(pid);
        t.end_launcher(pid, 128 + Signal::SIGKILL as i32);
        Box::pin(async {})
    }

    fn probe<'a>(&'a self, target: ProbeTarget<'a>) -> BoxFuture<'a, Result<(), String>> {
        let mut t = self.table();
        let key = (target.container.to_string(), target.kind.field());
        t.probes.push((key.0.clone(), key.1, Instant::now()));
        let result = if t.failing.contains(&key) { Err("scripted failure".into()) } else { Ok(()) };
        Box::pin(async move { result })
    }
}

/// Cgroups that always exist and never count an OOM kill. A test can hold cgroups busy (a process the
/// agent did not kill is inside): removing them, or a parent of them, fails as rmdir does. Clones share the
/// set.
#[derive(Clone, Default)]
pub struct FakeCgroups(Arc<Mutex<BTreeSet<String>>>);

impl FakeCgroups {
    fn busy(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `rel` cannot be removed until `release`.
    pub fn hold(&self, rel: &str) {
        self.busy().insert(rel.into());
    }

    pub fn release(&self, rel: &str) {
        self.busy().remove(rel);
    }
}

impl Cgroups for FakeCgroups {
    fn version(&self) -> &'static str {
        "fake"
    }
    fn init(&self) -> cgroups::Result<()> {
        Ok(())
    }
    fn create(&self, _: &str, _: &CgroupLimits, _: bool) -> cgroups::Result<()> {
        Ok(())
    }
    fn procs_files(&self, _: &str) -> Vec<PathBuf> {
        vec![]
    }
    fn oom_kills(&self, _: &str) -> cgroups::Result<u64> {
        Ok(0)
    }
    fn remove(&self, rel: &str) -> cgroups::Result<()> {
        let below = format!("{rel}/");
        if self.busy().iter().any(|b| b == rel || b.starts_with(&below)) {
            return Err(cgroups::CgroupError::Busy { path: PathBuf::from(rel) });
        }
        Ok(())
    }
    fn display_path(&self, rel: &str) -> String {
        rel.to_string()
    }
}
