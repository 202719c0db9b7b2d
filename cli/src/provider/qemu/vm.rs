//! QEMU command lines, launch, overlays and QMP. One QEMU per node, daemonized (it outlives the CLI), in the
//! host network namespace; its underlay NICs are tap fds opened in the lab netns (see hostnet.rs).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::lab::dir::log_tail;
use crate::lab::Accel;

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot run {program}: {source} (install it: apt-get install -y {package})")]
    Missing { program: String, package: &'static str, source: std::io::Error },
    #[error("`{command}` failed: {stderr}")]
    Tool { command: String, stderr: String },
    #[error("QEMU for node {node} exited with {status} before the VM started; {log}: {tail}")]
    Launch { node: String, status: String, log: PathBuf, tail: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("QMP socket path {0} is longer than the 107 bytes a unix socket allows; use a shorter TESTBED_STATE_DIR")]
    SocketPathTooLong(PathBuf),
    #[error("QMP on {path}: {message}")]
    Qmp { path: PathBuf, message: String },
}

/// `$TESTBED_QEMU` or `qemu-system-x86_64` from PATH.
pub fn qemu_binary() -> PathBuf {
    std::env::var_os("TESTBED_QEMU")
        .filter(|v| !v.is_empty())
        .map_or_else(|| "qemu-system-x86_64".into(), PathBuf::from)
}

/// `7.2.22` from `QEMU emulator version 7.2.22 (Debian ...)`.
pub fn version() -> Result<String, QemuError> {
    let bin = qemu_binary();
    let out = Command::new(&bin).arg("--version").output().map_err(|source| QemuError::Missing {
        program: bin.display().to_string(),
        package: "qemu-system-x86",
        source,
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    Ok(first
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .map_or_else(|| first.trim().to_string(), str::to_string))
}

/// QEMU option values separate sub-options with commas; a literal comma in a path is written twice.
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// Machine, accelerator and CPU: shared by nodes and the accelerator probe so that the probe proves exactly
/// what the nodes will run. `-cpu max` (not `host`: it aborts on some nested hosts, MSR 0x10a). Under TCG
/// without 5-level paging: emulated LA57 page walks made the guest boot to SSH take 19 s instead of 11 s.
/// `q35`, not `pc`: under TCG a `pc` guest spent ~5 s in the ACPI interpreter enabling the PIIX PCI interrupt
/// links (LNKA-D, 0.3-0.9 s each); on q35 the same takes milliseconds and the guest reaches its root filesystem
/// at 4.7 s instead of 8.5 s. (`pc,acpi=off` is faster still, but without ACPI there is no HPET/ACPI PM timer,
/// the TSC fails the clocksource watchdog and the guest falls back to 4 ms jiffies: useless for latency tests.)
pub fn machine_args(accel: Accel) -> Vec<String> {
    let (accel, cpu) = match accel {
        Accel::Kvm => ("kvm", "max"),
        // Multi-threaded TCG: one host thread per vCPU instead of one for all.
        Accel::Tcg => ("tcg,thread=multi", "max,la57=off"),
    };
    ["-machine", "q35", "-accel", accel, "-cpu", cpu, "-nodefaults", "-no-user-config", "-display", "none"]
        .into_iter()
        .map(String::from)
        .collect()
}

/// Kernel, initrd and command line for direct kernel boot; `kernel: None` boots the disk through firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

impl Boot {
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(k) = &self.kernel {
            a.extend(["-kernel".to_string(), k.display().to_string()]);
            if let Some(i) = &self.initrd {
                a.extend(["-initrd".to_string(), i.display().to_string()]);
            }
            a.extend(["-append".to_string(), self.cmdline.clone()]);
        }
        a
    }
}

/// One underlay NIC: the guest MAC and the tap fd QEMU inherits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNic {
    pub mac: String,
    pub fd: RawFd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub node: String,
    /// Process/VM name (`tb-<lab>-<node>`), visible in `ps`.
    pub vm_name: String,
    pub accel: Accel,
    pub memory_mib: u64,
    pub cpus: u32,
    pub boot: Boot,
    pub overlay: PathBuf,
    pub seed: PathBuf,
    pub serial_log: PathBuf,
    pub pidfile: PathBuf,
    pub qmp_socket: PathBuf,
    pub ssh_port: u16,
    pub nics: Vec<VmNic>,
    /// Read-only raw disk holding the agent binary (guest /dev/vdc), copied into place over SSH: a virtio
    /// read is far faster than streaming the binary through SSH and user networking under TCG.
    pub agent_disk: Option<PathBuf>,
}

/// PCI slots are fixed so that guest device order never depends on option order: management NIC first
/// (eth0), then underlay NICs (eth1..), then the disks (vda = overlay, vdb = seed).
const NIC_SLOT_BASE: u32 = 3;
const DISK_SLOT_BASE: u32 = 0x18;

pub fn vm_args(cfg: &VmConfig) -> Vec<String> {
    let mut a: Vec<String> = vec!["-name".into(), format!("{},process={}", cfg.vm_name, cfg.vm_name)];
    a.extend(machine_args(cfg.accel));
    a.extend(["-m".into(), cfg.memory_mib.to_string(), "-smp".into(), cfg.cpus.to_string()]);
    a.extend(cfg.boot.args());
    // cache=unsafe: lab disks are throwaway overlays; skipping host flushes makes guest writes much cheaper.
    a.extend([
        "-drive".into(),
        format!("if=none,id=disk0,file={},format=qcow2,cache=unsafe,discard=unmap", opt_path(&cfg.overlay)),
        "-device".into(),
        format!("virtio-blk-pci,drive=disk0,addr={:#x}", DISK_SLOT_BASE),
        "-drive".into(),
        format!("if=none,id=seed,file={},format=raw,readonly=on", opt_path(&cfg.seed)),
        "-device".into(),
        format!("virtio-blk-pci,drive=seed,addr={:#x}", DISK_SLOT_BASE + 1),
    ]);
    if let Some(agent) = &cfg.agent_disk {
        a.extend([
            "-drive".into(),
            format!("if=none,id=agent,file={},format=raw,readonly=on", opt_path(agent)),
            "-device".into(),
            format!("virtio-blk-pci,drive=agent,addr={:#x}", DISK_SLOT_BASE + 2),
        ]);
    }
    a.extend([
        "-netdev".into(),
        format!("user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{}-:22", cfg.ssh_port),
        "-device".into(),
        format!("virtio-net-pci,netdev=mgmt,addr={NIC_SLOT_BASE:#x}"),
    ]);
    for (i, nic) in cfg.nics.iter().enumerate() {
        let id = format!("u{}", i + 1);
        a.extend([
            "-netdev".into(),
            format!("tap,id={id},fd={}", nic.fd),
            "-device".into(),
            format!("virtio-net-pci,netdev={id},mac={},addr={:#x}", nic.mac, NIC_SLOT_BASE + 1 + i as u32),
        ]);
    }
    a.extend([
        "-serial".into(),
        format!("file:{}", cfg.serial_log.display()),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", opt_path(&cfg.qmp_socket)),
        "-pidfile".into(),
        cfg.pidfile.display().to_string(),
        // Forks, setsid()s and returns once the VM is running: the VM outlives the CLI.
        "-daemonize".into(),
    ]);
    a
}

/// Starts the VM and returns QEMU's PID. Blocking (returns when QEMU has daemonized). QEMU's own error
/// output goes to `log`.
pub fn launch(cfg: &VmConfig, log: &Path) -> Result<u32, QemuError> {
    if cfg.qmp_socket.as_os_str().len() > 107 {
        return Err(QemuError::SocketPathTooLong(cfg.qmp_socket.clone()));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| QemuError::Io { path, source }
    };
    let _ = std::fs::remove_file(&cfg.qmp_socket);
    let _ = std::fs::remove_file(&cfg.pidfile);
    let log_file = std::fs::File::create(log).map_err(io(log))?;
    let log_err = log_file.try_clone().map_err(io(log))?;
    let fds: Vec<RawFd> = cfg.nics.iter().map(|n| n.fd).collect();
    let bin = qemu_binary();
    let mut cmd = Command::new(&bin);
    cmd.args(vm_args(cfg)).stdin(Stdio::null()).stdout(log_file).stderr(log_err);
    // SAFETY: the closure runs between fork and exec and only calls fcntl (async-signal-safe) on fds that the
    // parent keeps open for the duration of this call. It clears FD_CLOEXEC so the taps survive exec at
    // the same numbers that `-netdev tap,fd=N` names; every other fd keeps CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let status = cmd.status().map_err(|source| QemuError::Missing {
        program: bin.display().to_string(),
        package: "qemu-system-x86",
        source,
    })?;
    if !status.success() {
        return Err(QemuError::Launch {
            node: cfg.node.clone(),
            status: status.to_string(),
            log: log.to_path_buf(),
            tail: log_tail(log, 2000),
        });
    }
    let text = std::fs::read_to_string(&cfg.pidfile).map_err(io(&cfg.pidfile))?;
    text.trim().parse().map_err(|_| QemuError::Io {
        path: cfg.pidfile.clone(),
        source: std::io::Error::other(format!("not a PID: {text:?}")),
    })
}

/// `qemu-img create -f qcow2 -F qcow2 -b <base> <overlay>` (replaces an existing overlay).
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<(), QemuError> {
    let _ = std::fs::remove_file(overlay);
    let base_s = base.display().to_string();
    let overlay_s = overlay.display().to_string();
    let args = ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base_s.as_str(), overlay_s.as_str()];
    let out = Command::new("qemu-img").args(args).output().map_err(|source| QemuError::Missing {
        program: "qemu-img".into(),
        package: "qemu-utils",
        source,
    })?;
    if !out.status.success() {
        return Err(QemuError::Tool {
            command: format!("qemu-img {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Asks QEMU to quit over QMP (clean exit: the pidfile and socket go away).
pub fn qmp_quit(socket: &Path) -> Result<(), QemuError> {
    let err = |message: String| QemuError::Qmp { path: socket.to_path_buf(), message };
    let stream = UnixStream::connect(socket).map_err(|e| err(format!("connect: {e}")))?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| err(e.to_string()))?;
    stream.set_write_timeout(Some(Duration::from_secs(2))).map_err(|e| err(e.to_string()))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| err(e.to_string()))?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| err(format!("greeting: {e}")))?;
    if !line.contains("QMP") {
        return Err(err(format!("unexpected greeting {line:?}")));
    }
    for command in [r#"{"execute":"qmp_capabilities"}"#, r#"{"execute":"quit"}"#] {
        writer.write_all(command.as_bytes()).and_then(|()| writer.write_all(b"\n")).map_err(|e| err(e.to_string()))?;
        // Skip asynchronous events until the command's answer.
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => return Ok(()), // QEMU closed the socket: it is quitting.
                Ok(_) if line.contains("\"return\"") => break,
                Ok(_) if line.contains("\"error\"") => return Err(err(line.trim().to_string())),
                Ok(_) => continue,
                Err(e) => return Err(err(e.to_string())),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig {
            node: "node1".into(),
            vm_name: "tb-lab-node1".into(),
            accel: Accel::Tcg,
            memory_mib: 512,
            cpus: 2,
            boot: Boot {
                kernel: Some("/c/vmlinuz".into()),
                initrd: Some("/c/initrd".into()),
                cmdline: "console=ttyS0 root=/dev/vda rw".into(),
            },
            overlay: "/l/n1/overlay.qcow2".into(),
            seed: "/l/n1/seed.img".into(),
            serial_log: "/l/n1/serial.log".into(),
            pidfile: "/l/n1/qemu.pid".into(),
            qmp_socket: "/l/n1/qmp.sock".into(),
            ssh_port: 2201,
            nics: vec![VmNic { mac: "52:54:00:00:00:01".into(), fd: 7 }],
            agent_disk: Some("/l/agent.img".into()),
        }
    }

    #[test]
    fn vm_args_follow_the_boot_contract() {
        let a = vm_args(&cfg()).join(" ");
        for want in [
            "-accel tcg,thread=multi",
            "-cpu max,la57=off",
            "-nodefaults -no-user-config -display none",
            "-m 512 -smp 2",
            "-kernel /c/vmlinuz -initrd /c/initrd -append console=ttyS0 root=/dev/vda rw",
            "user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:2201-:22",
            "virtio-net-pci,netdev=mgmt,addr=0x3",
            "-netdev tap,id=u1,fd=7",
            "virtio-net-pci,netdev=u1,mac=52:54:00:00:00:01,addr=0x4",
            "file=/l/n1/overlay.qcow2,format=qcow2",
            "virtio-blk-pci,drive=disk0,addr=0x18",
            "file=/l/n1/seed.img,format=raw,readonly=on",
            "virtio-blk-pci,drive=seed,addr=0x19",
            "file=/l/agent.img,format=raw,readonly=on",
            "virtio-blk-pci,drive=agent,addr=0x1a",
            "-serial file:/l/n1/serial.log",
            "-qmp unix:/l/n1/qmp.sock,server=on,wait=off",
            "-pidfile /l/n1/qemu.pid -daemonize",
        ] {
            assert!(a.contains(want), "missing {want:?} in {a}");
        }
    }

    #[test]
    fn kvm_only_when_asked_and_no_kernel_means_firmware_boot() {
        let mut c = cfg();
        c.accel = Accel::Kvm;
        c.boot.kernel = None;
        let a = vm_args(&c).join(" ");
        assert!(a.contains("-accel kvm -cpu max ") && !a.contains("tcg"));
        assert!(!a.contains("-kernel") && !a.contains("-append"));
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        assert_eq!(opt_path(Path::new("/a,b/c")), "/a,,b/c");
    }

    #[test]
    fn overlay_on_a_real_base() {
        if Command::new("qemu-img").arg("--version").output().is_err() {
            eprintln!("skipped: no qemu-img");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base.qcow2");
        let st = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("64M").status().unwrap();
        assert!(st.success());
        let ov = tmp.path().join("ov.qcow2");
        create_overlay(&base, &ov).unwrap();
        let info = Command::new("qemu-img").arg("info").arg(&ov).output().unwrap();
        assert!(String::from_utf8_lossy(&info.stdout).contains("backing file: "));
    }
}
