//! cgroup v2: one unified hierarchy. Controllers must be enabled in every parent's `cgroup.subtree_control`,
//! and only leaves hold processes ("no internal processes"), which is why the infra process lives in
//! `pod-<name>/infra` next to the containers.

use std::path::{Path, PathBuf};

use super::{
    keyed_value, mkdir, read_file, rmdir, set_limit, write_file, CgroupLimits, Cgroups, Result, CPU_PERIOD_US,
};
use crate::qos::shares_to_weight;

const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

pub struct CgroupsV2 {
    mount: PathBuf,
    root: PathBuf,
}

impl CgroupsV2 {
    pub fn new(mount: &Path, root_name: &str) -> CgroupsV2 {
        CgroupsV2 { mount: mount.to_path_buf(), root: mount.join(root_name) }
    }

    fn dir(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Enables our controllers below `dir`, skipping those the kernel does not offer there.
    fn enable_controllers(&self, dir: &Path) -> Result<()> {
        let available = read_file(&dir.join("cgroup.controllers")).unwrap_or_default();
        let wanted: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        write_file(&dir.join("cgroup.subtree_control"), &wanted.join(" "))
    }
}

impl Cgroups for CgroupsV2 {
    fn version(&self) -> &'static str {
        "v2"
    }

    fn init(&self) -> Result<()> {
        self.enable_controllers(&self.mount)?;
        mkdir(&self.root)?;
        self.enable_controllers(&self.root)
    }

    fn create(&self, rel: &str, limits: &CgroupLimits, parent_of_children: bool) -> Result<()> {
        let dir = self.dir(rel);
        let fresh = mkdir(&dir)?;
        let quota = limits.cpu_quota_us.map_or_else(|| "max".to_string(), |q| q.to_string());
        let cpu_max = format!("{quota} {CPU_PERIOD_US}");
        set_limit(&dir.join("cpu.max"), &cpu_max, limits.cpu_quota_us.is_none(), fresh, "max 100000")?;
        let weight = shares_to_weight(limits.cpu_shares).to_string();
        set_limit(&dir.join("cpu.weight"), &weight, false, fresh, "100")?;
        let memory = limits.memory_max.map_or_else(|| "max".into(), |m| m.to_string());
        set_limit(&dir.join("memory.max"), &memory, limits.memory_max.is_none(), fresh, "max")?;
        let pids = limits.pids_max.map_or_else(|| "max".into(), |p| p.to_string());
        set_limit(&dir.join("pids.max"), &pids, limits.pids_max.is_none(), fresh, "max")?;
        if parent_of_children {
            self.enable_controllers(&dir)?;
        }
        Ok(())
    }

    fn procs_files(&self, rel: &str) -> Vec<PathBuf> {
        vec![self.dir(rel).join("cgroup.procs")]
    }

    fn oom_kills(&self, rel: &str) -> Result<u64> {
        keyed_value(&self.dir(rel).join("memory.events"), "oom_kill")
    }

    fn remove(&self, rel: &str) -> Result<()> {
        rmdir(&self.dir(rel))
    }

    fn display_path(&self, rel: &str) -> String {
        self.dir(rel).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, f: &str) -> String {
        std::fs::read_to_string(dir.join(f)).unwrap()
    }

    #[test]
    fn writes_kubelet_values() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        let cg = CgroupsV2::new(tmp.path(), "testbed");
        cg.init().unwrap();
        assert_eq!(read(tmp.path(), "cgroup.subtree_control"), "+cpu +memory +pids");
        let limits = CgroupLimits {
            cpu_quota_us: Some(50_000),
            cpu_shares: 512,
            memory_max: Some(64 << 20),
            pids_max: Some(32),
        };
        cg.create("pod-web/srv", &limits, false).unwrap_err(); // parent missing: real error, not silently created
        cg.create("pod-web", &CgroupLimits { cpu_shares: 2, ..Default::default() }, true).unwrap();
        cg.create("pod-web/srv", &limits, false).unwrap();
        let pod = tmp.path().join("testbed/pod-web");
        assert_eq!(read(&pod, "cpu.weight"), "1");
        // A new cgroup holds the kernel's defaults: they are not written (nor read) again.
        for default in ["cpu.max", "memory.max", "pids.max"] {
            assert!(!pod.join(default).exists(), "{default} written");
        }
        let srv = pod.join("srv");
        assert_eq!(read(&srv, "cpu.max"), "50000 100000");
        assert_eq!(read(&srv, "cpu.weight"), "20");
        assert_eq!(read(&srv, "memory.max"), "67108864");
        assert_eq!(read(&srv, "pids.max"), "32");
        assert_eq!(cg.procs_files("pod-web/srv"), vec![srv.join("cgroup.procs")]);
        // An existing cgroup (agent restart) is converged: a changed limit is written back to its value, the
        // default included.
        std::fs::write(pod.join("memory.max"), "1048576").unwrap();
        cg.create("pod-web", &CgroupLimits { cpu_shares: 2, ..Default::default() }, true).unwrap();
        assert_eq!(read(&pod, "memory.max"), "max");
        assert_eq!(cg.display_path("pod-web"), pod.display().to_string());
    }
}
