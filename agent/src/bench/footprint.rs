//! What the agent keeps per pod, by proportional set size, for `testbed-agent bench`.

/// Proportional set size (shared pages divided among their users): the memory a process adds, so that the
/// sum over the agent, its launchers and infra processes counts the shared agent binary once, not per process.
fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// What the agent keeps per node and per pod: the `serve` process plus every process it leaves running for
/// the pods, by PSS: container launchers while they still run the agent's own binary (an exec, or a
/// container being started), the reapers they become (`pod::reaper`) and the infra processes (`pod::infra`),
/// both run from memfds. The containers' own processes are the pods' workload and are counted apart.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct Footprint {
    pub(super) agent_pss_kib: u64,
    pub(super) launchers: usize,
    pub(super) launchers_pss_kib: u64,
    pub(super) reapers: usize,
    pub(super) reapers_pss_kib: u64,
    pub(super) infra: usize,
    pub(super) infra_pss_kib: u64,
    pub(super) workload: usize,
    pub(super) workload_pss_kib: u64,
}

impl Footprint {
    pub(super) fn kept_kib(&self) -> u64 {
        self.agent_pss_kib + self.launchers_pss_kib + self.reapers_pss_kib + self.infra_pss_kib
    }
}

pub(super) fn footprint(agent: u32) -> Footprint {
    let mut parent = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The field after the parenthesised command name (which may hold spaces) is the state, then the ppid.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent.insert(pid, ppid);
        }
    }
    let descends = |mut pid: u32| loop {
        match parent.get(&pid) {
            Some(&p) if p == agent => return true,
            Some(&p) if p > 1 => pid = p,
            _ => return false,
        }
    };
    let agent_exe = std::fs::read_link(format!("/proc/{agent}/exe")).ok();
    let mut f = Footprint { agent_pss_kib: pss_kib(agent).unwrap_or(0), ..Default::default() };
    for &pid in parent.keys().filter(|&&p| descends(p)) {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let memfd = |name: &str| exe.as_ref().is_some_and(|e| e.to_string_lossy().contains(&format!("memfd:{name}")));
        let pss = pss_kib(pid).unwrap_or(0);
        if exe.is_some() && exe == agent_exe {
            (f.launchers, f.launchers_pss_kib) = (f.launchers + 1, f.launchers_pss_kib + pss);
        } else if memfd("tb-reaper") {
            (f.reapers, f.reapers_pss_kib) = (f.reapers + 1, f.reapers_pss_kib + pss);
        } else if memfd("tb-infra") {
            (f.infra, f.infra_pss_kib) = (f.infra + 1, f.infra_pss_kib + pss);
        } else {
            (f.workload, f.workload_pss_kib) = (f.workload + 1, f.workload_pss_kib + pss);
        }
    }
    f
}
