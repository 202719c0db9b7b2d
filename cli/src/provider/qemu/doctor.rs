//! `testbed doctor`: is this host able to run labs? Each check says what is wrong and what to install.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::plan::Impairment;

use super::accel;
use super::hostnet::{HostNet, HostNetError, IpHostNet};
use super::vm;
use crate::lab::dir as labdir;
use crate::lab::Accel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, with a limitation (no KVM, no netem, ...).
    Warn,
    /// Required and missing: labs cannot run.
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do about it (an apt-get line, a flag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check { name, status, detail: detail.into(), fix: fix.map(str::to_string) }
}

fn tool_version(program: &str, arg: &str) -> Option<String> {
    let out = Command::new(program).arg(arg).output().ok()?;
    let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
    Some(String::from_utf8_lossy(&text).lines().next().unwrap_or_default().trim().to_string())
}

/// A cached image with a direct-boot kernel: (id, kernel, initrd, cmdline).
fn cached_bootable_image() -> Option<(String, PathBuf, PathBuf, String)> {
    let root = crate::image::cache_root().ok()?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&root).ok()?.flatten() {
        let dir = entry.path();
        let Ok(bytes) = std::fs::read(dir.join("image.json")) else { continue };
        let Ok(m) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
        if m.get("has_kernel").and_then(|v| v.as_bool()) != Some(true) {
            continue;
        }
        let created = m.get("created_unix").and_then(|v| v.as_u64()).unwrap_or(0);
        let id = m.get("id").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let cmdline = m.get("cmdline").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        found.push((created, id, dir.join("vmlinuz"), dir.join("initrd.img"), cmdline));
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().next().map(|(_, id, k, i, c)| (id, k, i, c))
}

fn free_bytes(path: &Path) -> Option<u64> {
    // The directory may not exist yet: measure the nearest existing ancestor.
    let mut p = path.to_path_buf();
    while !p.exists() {
        p = p.parent()?.to_path_buf();
    }
    let st = nix::sys::statvfs::statvfs(&p).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

const MIN_FREE: u64 = 4 << 30;

pub fn run_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    let qemu_bin = vm::qemu_binary();
    let qemu_version = vm::version();
    match &qemu_version {
        Ok(v) => checks.push(check("qemu", Status::Ok, format!("{} {v}", qemu_bin.display()), None)),
        Err(e) => checks.push(check("qemu", Status::Fail, e.to_string(), Some("apt-get install -y qemu-system-x86"))),
    }
    let qemu_img = tool_version("qemu-img", "--version");
    match &qemu_img {
        Some(v) => checks.push(check("qemu-img", Status::Ok, v.clone(), None)),
        None => {
            checks.push(check("qemu-img", Status::Fail, "qemu-img not found", Some("apt-get install -y qemu-utils")))
        }
    }
    checks.push(super::doctor_packages::check(qemu_img.as_deref(), qemu_version.as_deref().ok()));

    // KVM: the device, then a real boot of the probe guest.
    match accel::kvm_device_usable() {
        Err(e) => checks.push(check("kvm", Status::Warn, format!("{e}; VMs will use TCG (slow)"), None)),
        Ok(()) => match (cached_bootable_image(), &qemu_version) {
            (Some((id, kernel, initrd, cmdline)), Ok(_)) => {
                let c = accel::probe(&kernel, Some(&initrd), &cmdline, accel::PROBE_TIMEOUT);
                // Remember the fresh outcome for `up`.
                if let (Ok(dir), Ok(v)) = (crate::image::accel_cache_dir(), &qemu_version) {
                    accel::store(&dir, v, &kernel, &c);
                }
                let status = if c.accel == Accel::Kvm { Status::Ok } else { Status::Warn };
                checks.push(check("kvm", status, format!("probe with image {id}: {} ({})", c.accel, c.reason), None));
            }
            (None, _) => checks.push(check(
                "kvm",
                Status::Warn,
                "/dev/kvm opens, but no cached image to boot the KVM probe with; `up` probes on first use",
                Some("testbed image build"),
            )),
            (_, Err(_)) => {}
        },
    }

    match tool_version("mmdebstrap", "--version") {
        Some(v) => checks.push(check("mmdebstrap", Status::Ok, v, None)),
        None => checks.push(check(
            "mmdebstrap",
            Status::Warn,
            "not found: only URL images can be used",
            Some("apt-get install -y mmdebstrap"),
        )),
    }
    for (tool, arg) in [("ip", "-V"), ("tc", "-V")] {
        match tool_version(tool, arg) {
            Some(v) => checks.push(check(if tool == "ip" { "ip" } else { "tc" }, Status::Ok, v, None)),
            None => checks.push(check(
                if tool == "ip" { "ip" } else { "tc" },
                Status::Fail,
                format!("{tool} not found"),
                Some("apt-get install -y iproute2"),
            )),
        }
    }
    if Path::new("/dev/net/tun").exists() {
        checks.push(check("tun", Status::Ok, "/dev/net/tun present", None));
    } else {
        checks.push(check("tun", Status::Fail, "/dev/net/tun missing (taps impossible)", Some("modprobe tun")));
    }
    checks.extend(netns_checks());
    match tool_version("ssh", "-V") {
        Some(v) => checks.push(check("ssh", Status::Ok, v, None)),
        None => checks.push(check(
            "ssh",
            Status::Warn,
            "no ssh client: `testbed ssh` cannot open shells (everything else works)",
            Some("apt-get install -y openssh-client"),
        )),
    }
    match crate::guest::agent_deploy::locate_agent_binary() {
        Ok(p) => checks.push(check("agent", Status::Ok, p.display().to_string(), None)),
        Err(e) => {
            checks.push(check("agent", Status::Warn, e.to_string(), Some(crate::guest::agent_deploy::AGENT_BUILD_HINT)))
        }
    }
    checks.extend(crate::provider::vagrant::doctor::checks());
    for (name, dir) in [("disk-cache", crate::image::cache_root().ok()), ("disk-state", labdir::state_root().ok())] {
        let Some(dir) = dir else { continue };
        match free_bytes(&dir) {
            Some(b) if b >= MIN_FREE => {
                checks.push(check(name, Status::Ok, format!("{} GiB free at {}", b >> 30, dir.display()), None))
            }
            Some(b) => checks.push(check(
                name,
                Status::Warn,
                format!("only {} MiB free at {} (want 4 GiB)", b >> 20, dir.display()),
                None,
            )),
            None => checks.push(check(name, Status::Warn, format!("cannot stat {}", dir.display()), None)),
        }
    }
    checks
}

/// Creates and deletes a throwaway `tbdoctor-<pid>` netns with a bridge and a tap; tries netem on the tap. Lab
/// namespaces are `tb-<lab>`: no lab can own this name, so doctor never adopts (and deletes) a lab's netns.
fn netns_checks() -> Vec<Check> {
    let net = IpHostNet;
    let ns = format!("tbdoctor-{}", std::process::id());
    let mut out = Vec::new();
    if let Err(e) = net.create_netns(&ns) {
        // create_netns removes what it added on error; this also catches a leftover of an earlier doctor.
        let _ = net.delete_netns(&ns);
        out.push(check("netns", Status::Fail, format!("cannot create a network namespace: {e}"), Some("run as root")));
        return out;
    }
    let body = (|| -> Result<(), HostNetError> {
        net.ensure_bridge(&ns, "tbdoc-br", 1500)?;
        net.ensure_tap(&ns, "tbdoc-tap", "tbdoc-br", 1500)?;
        drop(net.open_tap(&ns, "tbdoc-tap")?);
        Ok(())
    })();
    match body {
        Ok(()) => {
            out.push(check("netns", Status::Ok, "created a netns, bridge and tap, opened the tap, deleted all", None))
        }
        Err(e) => out.push(check("netns", Status::Fail, e.to_string(), Some("run as root"))),
    }
    let probe = Impairment { delay_ms: 1.0, ..Default::default() };
    match net.set_impairment(&ns, "tbdoc-tap", &probe) {
        Ok(()) => out.push(check("netem", Status::Ok, "tc netem works in the lab netns", None)),
        Err(HostNetError::NetemUnsupported) => out.push(check(
            "netem",
            Status::Warn,
            "host kernel has no netem: link impairments are applied inside the guests instead",
            None,
        )),
        Err(e) => out.push(check("netem", Status::Warn, e.to_string(), None)),
    }
    if let Err(e) = net.delete_netns(&ns) {
        out.push(check("netns-cleanup", Status::Fail, format!("cannot delete {ns}: {e}"), None));
    }
    out
}
