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
