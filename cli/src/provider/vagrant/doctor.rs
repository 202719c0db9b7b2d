//! `testbed doctor`'s checks for the Vagrant lab (the top-level Vagrantfile): vagrant, vagrant-libvirt, a
//! running libvirtd, no autostarting libvirt NAT network, testbed's box. All are warnings: QEMU labs need none.

use std::path::Path;
use std::process::Command;

use crate::provider::qemu::doctor::{Check, Status};

/// The system libvirtd's socket (`qemu:///system`).
pub const LIBVIRTD_SOCKET: &str = "/run/libvirt/libvirt-sock";
/// Where a libvirt `default` network that starts with libvirtd is marked (libvirt-daemon-config-network).
pub const DEFAULT_NETWORK_AUTOSTART: &str = "/etc/libvirt/qemu/networks/autostart/default.xml";
const INSTALL: &str = "tests/install-packages.sh (or apt-get install -y --no-install-recommends vagrant vagrant-libvirt libvirt-daemon-driver-qemu libvirt-daemon-driver-storage libvirt-clients)";

fn warn(name: &'static str, detail: impl Into<String>, fix: &str) -> Check {
    Check { name, status: Status::Warn, detail: detail.into(), fix: Some(fix.to_string()) }
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check { name, status: Status::Ok, detail: detail.into(), fix: None }
}

fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().trim().to_string())
}

/// The vagrant-libvirt line of `vagrant plugin list` ("vagrant-libvirt (0.11.2, system)").
fn libvirt_plugin(plugin_list: &str) -> Option<&str> {
    plugin_list.lines().map(str::trim).find(|l| l.starts_with("vagrant-libvirt "))
}

/// The libvirtd check from what was found: its version (None: not installed) and whether its socket answers.
fn libvirtd_check(version: Option<String>, listening: bool) -> Check {
    match (version, listening) {
        (None, _) => warn("libvirtd", "not installed: the Vagrantfile cannot make VMs", INSTALL),
        (Some(v), false) => warn(
            "libvirtd",
            format!("{v} installed, not running ({LIBVIRTD_SOCKET} does not answer)"),
            "virtlogd -d && libvirtd -d   (PID 1 starts no services here; stop them by PID afterwards)",
        ),
        (Some(v), true) => ok("libvirtd", format!("{v}, listening on {LIBVIRTD_SOCKET}")),
    }
}

/// What Debian's udev rule makes of /dev/kvm (root:kvm 0660); a host without udev leaves it root-only.
pub const KVM_FIX: &str = "chgrp kvm /dev/kvm && chmod 0660 /dev/kvm   (what Debian's udev rule sets)";

/// Whether libvirt's QEMU user (group `kvm`) may use `kvm`: when it may not, libvirtd cannot tell whether KVM
/// is usable, drops its cached QEMU capabilities on every call and probes QEMU again (about 30 s per domain
/// define on this project's host; docs/benchmarks.md). None when there is no such device.
fn kvm_access_check(kvm: &Path, kvm_gid: Option<u32>) -> Option<Check> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(kvm).ok()?;
    let group_rw = kvm_gid == Some(meta.gid()) && meta.mode() & 0o060 == 0o060;
    if group_rw || meta.mode() & 0o006 == 0o006 {
        return Some(ok("libvirt-kvm", format!("{} is usable by group kvm", kvm.display())));
    }
    Some(warn(
        "libvirt-kvm",
        format!(
            "{} is mode {:o}, gid {}: libvirtd probes QEMU again on every call (about 30 s per machine it defines)",
            kvm.display(),
            meta.mode() & 0o7777,
            meta.gid()
        ),
        KVM_FIX,
    ))
}

/// The `libvirt-kvm` check on this host's /dev/kvm.
pub fn kvm_check() -> Option<Check> {
    let gid = nix::unistd::Group::from_name("kvm").ok().flatten().map(|g| g.gid.as_raw());
    kvm_access_check(Path::new("/dev/kvm"), gid)
}

fn default_network_check(autostart: &Path) -> Check {
    if autostart.exists() || autostart.is_symlink() {
        warn(
            "libvirt-net",
            format!(
                "libvirt's default NAT network autostarts ({}): a bridge, dnsmasq and firewall rules on the host",
                autostart.display()
            ),
            &format!("rm {}", autostart.display()),
        )
    } else {
        ok("libvirt-net", "no libvirt network starts by itself")
    }
}

/// What `up --provider vagrant` cannot start without (the blocking subset of [`checks`]), named for the user.
pub fn missing_for_up() -> Vec<String> {
    let mut missing = Vec::new();
    if first_line("vagrant", &["--version"]).is_none() {
        missing.push("vagrant".to_string());
    } else {
        let plugins = Command::new("vagrant").args(["plugin", "list"]).output().ok();
        let plugins = plugins.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        if libvirt_plugin(&plugins).is_none() {
            missing.push("the vagrant-libvirt plugin".to_string());
        }
    }
    if first_line("virsh", &["--version"]).is_none() {
        missing.push("virsh (libvirt-clients)".to_string());
    }
    if std::os::unix::net::UnixStream::connect(LIBVIRTD_SOCKET).is_err() {
        missing.push(format!("a running libvirtd ({LIBVIRTD_SOCKET} does not answer)"));
    }
    missing
}

/// How to get what [`missing_for_up`] names.
pub fn fix_for_up() -> String {
    format!("{INSTALL}, then `virtlogd -d && libvirtd -d` (PID 1 starts no services here)")
}

pub fn checks() -> Vec<Check> {
    let mut out = Vec::new();
    let Some(version) = first_line("vagrant", &["--version"]) else {
        out.push(warn("vagrant", "not installed: no Vagrant lab (QEMU labs are unaffected)", INSTALL));
        return out;
    };
    out.push(ok("vagrant", version));
    let plugins = Command::new("vagrant").args(["plugin", "list"]).output().ok();
    let plugins = plugins.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    match libvirt_plugin(&plugins) {
        Some(line) => out.push(ok("vagrant-libvirt", line.to_string())),
        None => out.push(warn("vagrant-libvirt", "vagrant has no libvirt provider plugin", INSTALL)),
    }
    let listening = std::os::unix::net::UnixStream::connect(LIBVIRTD_SOCKET).is_ok();
    out.push(libvirtd_check(first_line("libvirtd", &["--version"]), listening));
    out.extend(kvm_check());
    out.push(default_network_check(Path::new(DEFAULT_NETWORK_AUTOSTART)));
    let boxes = Command::new("vagrant").args(["box", "list"]).output().ok();
    let boxes = boxes.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    match boxes.as_deref().and_then(|b| b.lines().find(|l| l.starts_with("testbed/"))) {
        Some(line) => out.push(ok("vagrant-box", line.trim().to_string())),
        None => out.push(warn(
            "vagrant-box",
            "no testbed/* box",
            "testbed image box, then the `vagrant box add` line it prints",
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_line_is_found_among_others() {
        let list = "vagrant-share (2.0.0, global)\nvagrant-libvirt (0.11.2, system)\n";
        assert_eq!(libvirt_plugin(list), Some("vagrant-libvirt (0.11.2, system)"));
        assert_eq!(libvirt_plugin("No plugins installed.\n"), None);
    }

    #[test]
    fn libvirtd_states_say_what_to_do() {
        assert_eq!(libvirtd_check(None, false).fix.as_deref(), Some(INSTALL));
        let stopped = libvirtd_check(Some("libvirtd (libvirt) 11.3.0".into()), false);
        assert_eq!(stopped.status, Status::Warn);
        assert!(stopped.fix.unwrap().starts_with("virtlogd -d && libvirtd -d"));
        assert_eq!(libvirtd_check(Some("libvirtd (libvirt) 11.3.0".into()), true).status, Status::Ok);
    }

    #[test]
    fn a_root_only_kvm_device_is_reported_with_udevs_fix() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kvm");
        assert!(kvm_access_check(&dev, Some(1)).is_none(), "no device, no check");
        std::fs::write(&dev, "").unwrap();
        std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o600)).unwrap();
        let gid = std::fs::metadata(&dev).unwrap().gid();
        let root_only = kvm_access_check(&dev, Some(gid)).unwrap();
        assert_eq!((root_only.status, root_only.fix.as_deref()), (Status::Warn, Some(KVM_FIX)));
        std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o660)).unwrap();
        assert_eq!(kvm_access_check(&dev, Some(gid)).unwrap().status, Status::Ok);
        assert_eq!(kvm_access_check(&dev, Some(gid + 1)).unwrap().status, Status::Warn, "another group");
    }

    #[test]
    fn an_autostarting_default_network_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("default.xml");
        assert_eq!(default_network_check(&link).status, Status::Ok);
        std::os::unix::fs::symlink("/nonexistent/default.xml", &link).unwrap();
        let c = default_network_check(&link);
        assert_eq!(c.status, Status::Warn);
        assert_eq!(c.fix, Some(format!("rm {}", link.display())));
    }
}
