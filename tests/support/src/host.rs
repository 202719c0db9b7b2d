//! What this host lets a test do. Tests that need more than it offers return early with a `skipped:` line
//! instead of failing, except under CI (see `can_run_vms`).

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
