//! What this host lets a test do. Tests that need more than it offers return early with a `skipped:` line
//! instead of failing, except under CI (see `can_run_vms`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// True when the test runs as root (namespaces, cgroups, netlink).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True when this host can boot lab VMs: root and `qemu-system-x86_64`. Otherwise prints why the test is
/// skipped; under CI (`CI=true`) it fails instead, because CI must not go green without VM coverage.
pub fn can_run_vms() -> bool {
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output().is_ok_and(|o| o.status.success());
    let can = is_root() && qemu;
    if !can {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but this host cannot run VMs (root, QEMU)");
        eprintln!("skipped: needs root and qemu-system-x86_64 (run tests/run.sh)");
    }
    can
}

/// The test's cgroup subtree `name` in every hierarchy (v2: one; v1: cpu, memory, pids below the test
/// process's own cgroup), for the agent's real tests to give it and remove it.
pub fn cgroup_roots(name: &str) -> Vec<PathBuf> {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return vec![PathBuf::from("/sys/fs/cgroup").join(name)];
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    ["cpu", "memory", "pids"]
        .iter()
        .map(|c| {
            let path = own
                .lines()
                .find_map(|l| {
                    let mut it = l.splitn(3, ':');
                    let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
                    ctrls.split(',').any(|x| x == *c).then(|| path.trim_start_matches('/').to_string())
                })
                .unwrap_or_default();
            PathBuf::from("/sys/fs/cgroup").join(c).join(path).join(name)
        })
        .collect()
}

/// Returns from the test with a `skipped:` line unless it runs as root (namespaces, cgroups, netlink); under
/// CI (`CI=true`) it fails instead, because CI runs the tests as root and must not go green without them.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::host::is_root() {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but this test does not run as root");
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// Gives `/dev/kvm` group `kvm` and mode 0660 (what Debian's udev rule sets; a host without udev leaves it
/// root:root 0600) while it lives, and puts back what it found when dropped. libvirtd cannot tell whether a
/// root-only /dev/kvm is usable by its QEMU user and probes QEMU again on every call (about 30 s per domain
/// define here; docs/benchmarks.md). Does nothing when there is no /dev/kvm or no group `kvm`.
pub struct KvmForLibvirt(Option<(u32, u32)>);

impl KvmForLibvirt {
    pub fn grant() -> KvmForLibvirt {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let kvm = Path::new("/dev/kvm");
        let (Ok(meta), Ok(Some(group))) = (std::fs::metadata(kvm), nix::unistd::Group::from_name("kvm")) else {
            return KvmForLibvirt(None);
        };
        if meta.gid() == group.gid.as_raw() && meta.mode() & 0o060 == 0o060 {
            return KvmForLibvirt(None);
        }
        std::os::unix::fs::chown(kvm, None, Some(group.gid.as_raw())).expect("chgrp kvm /dev/kvm");
        std::fs::set_permissions(kvm, std::fs::Permissions::from_mode(0o660)).expect("chmod 0660 /dev/kvm");
        KvmForLibvirt(Some((meta.gid(), meta.mode() & 0o7777)))
    }
}

impl Drop for KvmForLibvirt {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if let Some((gid, mode)) = self.0 {
            let _ = std::os::unix::fs::chown("/dev/kvm", None, Some(gid));
            let _ = std::fs::set_permissions("/dev/kvm", std::fs::Permissions::from_mode(mode));
        }
    }
}
