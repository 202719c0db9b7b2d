//! cgroup v1 fallback: one hierarchy per controller (`cpu` possibly co-mounted with `cpuacct`), found in
//! /proc/self/mountinfo. Our root sits below the agent's own cgroup in each hierarchy, so a confined agent
//! (a CI sandbox, say) keeps its pods inside its own limits.

use std::path::{Path, PathBuf};

use super::{keyed_value, mkdir, read_file, rmdir, set_limit, CgroupError, CgroupLimits, Cgroups, Result};

pub struct CgroupsV1 {
    cpu: PathBuf,
    memory: PathBuf,
    pids: PathBuf,
}

impl CgroupsV1 {
    /// Roots given directly (tests point them at a temp dir).
    #[cfg(test)]
    pub fn with_roots(cpu: PathBuf, memory: PathBuf, pids: PathBuf) -> CgroupsV1 {
        CgroupsV1 { cpu, memory, pids }
    }

    pub fn discover(root_name: &str) -> Result<CgroupsV1> {
        let mountinfo = read_file(Path::new("/proc/self/mountinfo"))?;
        let own = read_file(Path::new("/proc/self/cgroup"))?;
        let root = |controller: &'static str| -> Result<PathBuf> {
            let mount = controller_mount(&mountinfo, controller).ok_or(CgroupError::MissingController(controller))?;
            let own_path = own_cgroup(&own, controller).unwrap_or_default();
            Ok(mount.join(own_path.trim_start_matches('/')).join(root_name))
        };
        Ok(CgroupsV1 { cpu: root("cpu")?, memory: root("memory")?, pids: root("pids")? })
    }
}

/// Mount point of the v1 hierarchy carrying `controller` (super options of a `cgroup` mount).
fn controller_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut post = post.split_whitespace();
        if post.next()? != "cgroup" {
            return None;
        }
        let opts = post.nth(1)?;
        opts.split(',').any(|o| o == controller).then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap_or("/")))
    })
}

/// The agent's own path in the hierarchy of `controller`, from /proc/self/cgroup (`4:memory:/a/b`).
fn own_cgroup(proc_cgroup: &str, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut it = line.splitn(3, ':');
        let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
        ctrls.split(',').any(|c| c == controller).then(|| path.to_string())
    })
}

impl Cgroups for CgroupsV1 {
    fn version(&self) -> &'static str {
        "v1"
    }

    fn init(&self) -> Result<()> {
        for root in [&self.cpu, &self.memory, &self.pids] {
            std::fs::create_dir_all(root).map_err(|source| CgroupError::Io { path: root.clone(), source })?;
        }
        Ok(())
    }

    fn create(&self, rel: &str, limits: &CgroupLimits, _parent_of_children: bool) -> Result<()> {
        let cpu = self.cpu.join(rel);
        let fresh = mkdir(&cpu)?;
        let period = super::CPU_PERIOD_US.to_string();
        set_limit(&cpu.join("cpu.cfs_period_us"), &period, false, fresh, "100000")?;
        let quota = limits.cpu_quota_us.map_or_else(|| "-1".to_string(), |q| q.to_string());
        set_limit(&cpu.join("cpu.cfs_quota_us"), &quota, limits.cpu_quota_us.is_none(), fresh, "-1")?;
        set_limit(&cpu.join("cpu.shares"), &limits.cpu_shares.to_string(), false, fresh, "1024")?;
        let memory = self.memory.join(rel);
        let fresh = mkdir(&memory)?;
        // -1 = unlimited (read back as a huge number).
        let mem = limits.memory_max.map_or_else(|| "-1".to_string(), |m| m.to_string());
        set_limit(&memory.join("memory.limit_in_bytes"), &mem, limits.memory_max.is_none(), fresh, "-1")?;
        let pids = self.pids.join(rel);
        let fresh = mkdir(&pids)?;
        let max = limits.pids_max.map_or_else(|| "max".into(), |p| p.to_string());
        set_limit(&pids.join("pids.max"), &max, limits.pids_max.is_none(), fresh, "max")
    }

    fn procs_files(&self, rel: &str) -> Vec<PathBuf> {
        let mut files = vec![self.cpu.join(rel).join("cgroup.procs")];
        for root in [&self.memory, &self.pids] {
            if *root != self.cpu {
                files.push(root.join(rel).join("cgroup.procs"));
            }
        }
        files
    }

    fn oom_kills(&self, rel: &str) -> Result<u64> {
        keyed_value(&self.memory.join(rel).join("memory.oom_control"), "oom_kill")
    }

    fn remove(&self, rel: &str) -> Result<()> {
        rmdir(&self.cpu.join(rel))?;
        rmdir(&self.memory.join(rel))?;
        rmdir(&self.pids.join(rel))
    }

    fn display_path(&self, rel: &str) -> String {
        self.memory.join(rel).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hierarchies() {
        let mi = "30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n\
                  31 25 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                  32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(controller_mount(mi, "memory"), Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(controller_mount(mi, "cpu"), Some(PathBuf::from("/sys/fs/cgroup/cpu")));
        assert_eq!(controller_mount(mi, "pids"), None);
        let own = "4:memory:/sandbox/x\n1:cpu,cpuacct:/\n0::/\n";
        assert_eq!(own_cgroup(own, "memory").as_deref(), Some("/sandbox/x"));
        assert_eq!(own_cgroup(own, "cpuacct").as_deref(), Some("/"));
    }

    #[test]
    fn writes_v1_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, m, p) = (tmp.path().join("cpu/tb"), tmp.path().join("memory/tb"), tmp.path().join("pids/tb"));
        let cg = CgroupsV1::with_roots(c.clone(), m.clone(), p.clone());
        cg.init().unwrap();
        let limits =
            CgroupLimits { cpu_quota_us: Some(25_000), cpu_shares: 256, memory_max: Some(16 << 20), pids_max: None };
        cg.create("pod-a", &limits, true).unwrap();
        let r = |d: &Path, f: &str| std::fs::read_to_string(d.join("pod-a").join(f)).unwrap();
        let r2 = |d: &Path, pod: &str, f: &str| std::fs::read_to_string(d.join(pod).join(f)).unwrap();
        assert_eq!(r(&c, "cpu.cfs_quota_us"), "25000");
        assert_eq!(r(&c, "cpu.shares"), "256");
        assert_eq!(r(&m, "memory.limit_in_bytes"), "16777216");
        // A new cgroup holds the kernel's defaults: they are not written (nor read) again.
        assert!(!c.join("pod-a/cpu.cfs_period_us").exists());
        assert!(!p.join("pod-a/pids.max").exists());
        assert_eq!(cg.procs_files("pod-a").len(), 3);
        // Unlimited values the kernel already holds (in its own spelling) are not written again.
        std::fs::create_dir_all(m.join("pod-b")).unwrap();
        std::fs::write(m.join("pod-b/memory.limit_in_bytes"), "9223372036854771712").unwrap();
        cg.create("pod-b", &CgroupLimits { cpu_shares: 2, ..Default::default() }, false).unwrap();
        assert_eq!(r2(&m, "pod-b", "memory.limit_in_bytes"), "9223372036854771712");
        assert!(!c.join("pod-b/cpu.cfs_quota_us").exists());
        assert_eq!(r2(&c, "pod-b", "cpu.shares"), "2");
        std::fs::write(m.join("pod-a/memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n").unwrap();
        assert_eq!(cg.oom_kills("pod-a").unwrap(), 1);
    }
}
