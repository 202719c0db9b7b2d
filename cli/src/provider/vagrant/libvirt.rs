//! The lab's machines as the system libvirtd knows them: vagrant-libvirt names each domain `tbv-<lab>-<node>`
//! (the Vagrantfile's `default_prefix`) and its disk `<domain>.img` in pool `testbed`. Used to find a machine's
//! QEMU and to remove what `vagrant destroy` leaves behind (it does in known cases: a lost `.vagrant`, a volume
//! "already created").

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::lab::RecordedProcess;
use crate::provider::qemu::procs;

use super::VagrantError;

pub const URI: &str = "qemu:///system";
/// A transient pool of testbed's own (no definition in /etc/libvirt): the box volume and the machines' disks.
pub const POOL: &str = "testbed";
pub const POOL_PATH: &str = "/var/lib/testbed/vagrant/pool";
/// Where the system libvirtd keeps each running domain's QEMU PID.
const PID_DIR: &str = "/run/libvirt/qemu";

/// The domain of `node` in lab `lab`.
pub fn domain(lab: &str, node: &str) -> String {
    format!("tbv-{lab}-{node}")
}

/// True when `argv` is the QEMU libvirt runs for `domain` (`-name guest=<domain>,debug-threads=on`).
fn is_machine_argv(argv: &[String], domain: &str) -> bool {
    argv.windows(2).any(|w| w[0] == "-name" && w[1].split(',').any(|p| p == format!("guest={domain}")))
}

/// The recorded process still runs and is the QEMU of `domain` (not a stranger that inherited the PID).
pub fn runs_machine(p: RecordedProcess, domain: &str) -> bool {
    procs::is_same_process(p.pid, p.start_time) && procs::argv(p.pid).is_some_and(|a| is_machine_argv(&a, domain))
}

/// The running QEMU of `domain`: its PID and start time.
pub fn machine_process(domain: &str) -> Option<RecordedProcess> {
    let pid = procs::read_pidfile(&Path::new(PID_DIR).join(format!("{domain}.pid")))?;
    let p = RecordedProcess { pid, start_time: procs::start_time(pid)? };
    runs_machine(p, domain).then_some(p)
}

fn virsh(args: &[&str]) -> Result<String, VagrantError> {
    let out = Command::new("virsh")
        .args(["-q", "-c", URI])
        .args(args)
        .output()
        .map_err(VagrantError::io("run virsh (libvirt-clients)"))?;
    if !out.status.success() {
        return Err(VagrantError::Virsh {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Pool `testbed`, created (transient) when libvirtd does not hold it yet.
pub fn ensure_pool() -> Result<(), VagrantError> {
    if virsh(&["pool-info", POOL]).is_ok() {
        return Ok(());
    }
    std::fs::create_dir_all(POOL_PATH).map_err(VagrantError::io(format!("create {POOL_PATH}")))?;
    virsh(&["pool-create-as", POOL, "dir", "--target", POOL_PATH]).map(|_| ())
}

/// Removes `domain` (stopping its QEMU first) and its disk when libvirt still has them; true when something was
/// there. A QEMU that outlives `virsh destroy` is an error.
pub fn remove_machine(domain: &str) -> Result<bool, VagrantError> {
    let domains = virsh(&["list", "--all", "--name"])?;
    let defined = domains.lines().any(|l| l.trim() == domain);
    if defined {
        let running = machine_process(domain);
        // Fails when it is not running: that is fine.
        let _ = virsh(&["destroy", domain]);
        if let Some(p) = running {
            let until = Instant::now() + Duration::from_secs(10);
            while procs::is_same_process(p.pid, p.start_time) {
                if Instant::now() > until {
                    return Err(VagrantError::Survivor { domain: domain.to_string(), pid: p.pid });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        virsh(&["undefine", domain])?;
    }
    let disk = format!("{domain}.img");
    let volumes = virsh(&["vol-list", POOL]).unwrap_or_default();
    let has_disk = volumes.lines().any(|l| l.split_whitespace().next() == Some(disk.as_str()));
    if has_disk {
        virsh(&["vol-delete", "--pool", POOL, &disk])?;
    }
    Ok(defined || has_disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_is_known_by_its_guest_name_only() {
        let argv = |name: &str| -> Vec<String> {
            ["/usr/bin/qemu-system-x86_64", "-name", name, "-S"].iter().map(|s| s.to_string()).collect()
        };
        assert!(is_machine_argv(&argv("guest=tbv-l-node1,debug-threads=on"), "tbv-l-node1"));
        assert!(!is_machine_argv(&argv("guest=tbv-l-node10,debug-threads=on"), "tbv-l-node1"));
        assert!(!is_machine_argv(&argv("guest=tbv-l-node1-x"), "tbv-l-node1"));
        let viewer: Vec<String> = ["less", "guest=tbv-l-node1"].iter().map(|s| s.to_string()).collect();
        assert!(!is_machine_argv(&viewer, "tbv-l-node1"));
        assert_eq!(domain("lab", "node1"), "tbv-lab-node1");
    }
}
