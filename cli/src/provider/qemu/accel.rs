//! Accelerator choice. `/dev/kvm` opening is not proof: on nested hosts KVM_CREATE_VM succeeds and guests then
//! hang after decompression. So the probe boots the image's kernel + initramfs with `testbed.probe=1` under
//! KVM and waits for `TESTBED-PROBE-OK` on the serial console; anything else means TCG. The outcome is cached
//! per (QEMU version, kernel, host kernel) under the cache dir; `testbed doctor` probes again.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::lab::Accel;

use super::{procs, vm};

/// What was chosen and why (recorded in the lab state and shown by `status`/`doctor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// Printed by the image's initramfs in probe mode (the IMAGE module owns both ends of that contract).
pub const PROBE_MARKER: &str = crate::image::PROBE_OK;
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// Kernel arguments a guest gets under TCG, before the node's own `kernel_args` (which may undo them: the last
/// value of a parameter wins). Under TCG every guest instruction is emulated, and two defaults of Debian's
/// kernel cost most there: speculative-execution mitigations (return thunks, retpolines) and zeroing every page
/// on allocation (`CONFIG_INIT_ON_ALLOC_DEFAULT_ON`). With both off, a cold read of a 21 MB file through the
/// page cache took 0.2 s instead of 1.5 s (etcd's first start 0.8 s instead of 1.1 s), a bare boot to the
/// initramfs 0.3 s less (median of four), and the udp backend's forwarder moved more (docs/benchmarks.md,
/// "Kernel arguments under TCG"). Both guard the guest's processes from each other, not the host from the
/// guest (QEMU is that boundary), in a lab of test machines; under KVM the distribution's defaults stay, so
/// figures taken there run the kernel as shipped.
pub const TCG_KERNEL_ARGS: &[&str] = &["mitigations=off", "init_on_alloc=0"];

/// The kernel command line of a node: the image's, the accelerator's (`TCG_KERNEL_ARGS`), the node's own.
pub fn guest_cmdline(image: &str, accel: Accel, node_args: &[String]) -> String {
    let for_accel: &[&str] = match accel {
        Accel::Tcg => TCG_KERNEL_ARGS,
        Accel::Kvm => &[],
    };
    std::iter::once(image)
        .chain(for_accel.iter().copied())
        .chain(node_args.iter().map(String::as_str))
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `TESTBED_ACCEL=kvm|tcg` skips the probe (CI on hosts known to lack KVM; debugging).
pub fn forced() -> Option<Accel> {
    match std::env::var("TESTBED_ACCEL").ok()?.as_str() {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ => None,
    }
}

/// Whether /dev/kvm can be opened read-write (necessary, not sufficient).
pub fn kvm_device_usable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"))
}

/// The cached outcome's file in `dir` (`image::cache::accel_cache_dir`). Keyed by the kernel's content, not
/// its path: every image build lands in a new directory, and a rebuild with the same kernel package must not
/// pay the probe (up to 8 s when KVM hangs) again.
fn cache_file(dir: &Path, qemu_version: &str, kernel: &Path) -> PathBuf {
    let mut h = Sha256::new();
    h.update(qemu_version.as_bytes());
    h.update(b"\0");
    let hashed = std::fs::File::open(kernel).and_then(|mut f| std::io::copy(&mut f, &mut h));
    if hashed.is_err() {
        // Unreadable (the probe will say why): the path keeps distinct kernels apart.
        h.update(kernel.as_os_str().as_encoded_bytes());
    }
    if let Ok(u) = nix::sys::utsname::uname() {
        h.update(u.release().as_encoded_bytes());
    }
    dir.join(format!("{}.json", &hex::encode(h.finalize())[..16]))
}

/// The cached choice when there is one, else a fresh probe (then cached). `kernel: None` (firmware-booted
/// cloud image) cannot be probed cheaply: TCG unless forced.
pub fn choose(
    cache_dir: &Path,
    qemu_version: &str,
    kernel: Option<&Path>,
    initrd: Option<&Path>,
    cmdline: &str,
) -> AccelChoice {
    if let Some(a) = forced() {
        return AccelChoice { accel: a, reason: "forced by TESTBED_ACCEL".into() };
    }
    let Some(kernel) = kernel else {
        return AccelChoice { accel: Accel::Tcg, reason: "image has no kernel to probe KVM with".into() };
    };
    let file = cache_file(cache_dir, qemu_version, kernel);
    if let Some(c) = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice::<AccelChoice>(&b).ok()) {
        return AccelChoice { accel: c.accel, reason: format!("{} (cached)", c.reason) };
    }
    let choice = probe(kernel, initrd, cmdline, PROBE_TIMEOUT);
    store(cache_dir, qemu_version, kernel, &choice);
    choice
}

/// Caches a probe outcome (best effort: an unwritable cache only costs a probe next time).
pub fn store(cache_dir: &Path, qemu_version: &str, kernel: &Path, choice: &AccelChoice) {
    let file = cache_file(cache_dir, qemu_version, kernel);
    if let Some(dir) = file.parent() {
        if std::fs::create_dir_all(dir).is_ok() {
            if let Ok(body) = serde_json::to_vec_pretty(choice) {
                let _ = std::fs::write(&file, body);
            }
        }
    }
}

/// Boots the probe guest under KVM; KVM only if the marker appears on the serial console within `timeout`.
pub fn probe(kernel: &Path, initrd: Option<&Path>, cmdline: &str, timeout: Duration) -> AccelChoice {
    let tcg = |reason: String| AccelChoice { accel: Accel::Tcg, reason };
    if let Err(e) = kvm_device_usable() {
        return tcg(format!("KVM unusable: {e}"));
    }
    let dir = match tempfile::Builder::new().prefix("testbed-probe-").tempdir() {
        Ok(d) => d,
        Err(e) => return tcg(format!("probe temp dir: {e}")),
    };
    let serial = dir.path().join("serial.log");
    let boot = vm::Boot {
        kernel: Some(kernel.to_path_buf()),
        initrd: initrd.map(Path::to_path_buf),
        cmdline: crate::image::probe_cmdline(cmdline),
    };
    let mut args = vm::machine_args(Accel::Kvm);
    args.extend(["-m".into(), "256".into(), "-smp".into(), "1".into(), "-no-reboot".into()]);
    args.extend(boot.args());
    args.extend(["-serial".into(), format!("file:{}", serial.display())]);
    // Tied to this thread: a probe guest hanging under nested KVM must not outlive `up`/`doctor` (Ctrl-C, exit,
    // panic); the guard kills it on every return path below.
    let mut child = match procs::TiedChild::spawn(
        Command::new(vm::qemu_binary()).args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()),
    ) {
        Ok(c) => c,
        Err(e) => return tcg(format!("cannot start QEMU for the KVM probe: {e}")),
    };
    let started = Instant::now();
    let outcome = loop {
        if std::fs::read_to_string(&serial).is_ok_and(|s| s.contains(PROBE_MARKER)) {
            break AccelChoice {
                accel: Accel::Kvm,
                reason: format!("KVM probe guest booted in {:.1} s", started.elapsed().as_secs_f64()),
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            // The guest may have printed the marker and powered off between our two looks.
            if std::fs::read_to_string(&serial).is_ok_and(|s| s.contains(PROBE_MARKER)) {
                continue;
            }
            let mut err = String::new();
            if let Some(mut e) = child.take_stderr() {
                let _ = e.read_to_string(&mut err);
            }
            break tcg(format!("KVM probe QEMU exited ({status}) without {PROBE_MARKER}: {}", err.trim()));
        }
        if started.elapsed() > timeout {
            break tcg(format!("KVM probe guest did not boot within {} s (nested KVM?)", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(child);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_serialises_lowercase() {
        assert_eq!(serde_json::to_string(&Accel::Kvm).unwrap(), "\"kvm\"");
        assert_eq!(serde_json::from_str::<Accel>("\"tcg\"").unwrap(), Accel::Tcg);
    }

    #[test]
    fn tcg_guests_get_the_tcg_arguments_before_the_nodes_own() {
        let image = "console=ttyS0 root=/dev/vda rw quiet";
        let own = vec!["mitigations=auto".to_string()];
        assert_eq!(
            guest_cmdline(image, Accel::Tcg, &own),
            "console=ttyS0 root=/dev/vda rw quiet mitigations=off init_on_alloc=0 mitigations=auto"
        );
        assert_eq!(guest_cmdline(image, Accel::Kvm, &own), "console=ttyS0 root=/dev/vda rw quiet mitigations=auto");
        assert_eq!(guest_cmdline(image, Accel::Kvm, &[]), image);
    }

    #[test]
    fn cache_key_depends_on_qemu_version_and_kernel_content() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let (k1, k1_copy, k2) = (root.join("img-a/vmlinuz"), root.join("img-b/vmlinuz"), root.join("img-c/vmlinuz"));
        for (k, content) in [(&k1, "kernel one"), (&k1_copy, "kernel one"), (&k2, "kernel two")] {
            std::fs::create_dir_all(k.parent().unwrap()).unwrap();
            std::fs::write(k, content).unwrap();
        }
        let a = cache_file(root, "7.2", &k1);
        // The same kernel in another image's directory shares the outcome.
        assert_eq!(a, cache_file(root, "7.2", &k1_copy));
        assert_ne!(a, cache_file(root, "8.0", &k1));
        assert_ne!(a, cache_file(root, "7.2", &k2));
        assert_ne!(cache_file(root, "7.2", Path::new("/missing/1")), cache_file(root, "7.2", Path::new("/missing/2")));
    }

    #[test]
    fn cached_choice_is_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let kernel = tmp.path().join("vmlinuz");
        std::fs::write(&kernel, b"not a kernel").unwrap();
        let file = cache_file(tmp.path(), "7.2", &kernel);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let c = AccelChoice { accel: Accel::Kvm, reason: "probe ok".into() };
        std::fs::write(&file, serde_json::to_vec(&c).unwrap()).unwrap();
        if forced().is_none() {
            let got = choose(tmp.path(), "7.2", Some(&kernel), None, "console=ttyS0");
            assert_eq!(got.accel, Accel::Kvm);
            assert!(got.reason.contains("cached"));
        }
    }
}
