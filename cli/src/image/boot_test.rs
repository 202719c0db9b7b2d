//! Real boots of the built `debian-12` image under QEMU (TCG, as on hosts without working KVM). Ignored by
//! default: they build the image when it is not cached (about a minute, root) and boot VMs.
//!
//! ```text
//! cargo test -p testbed image::boot_test -- --ignored --nocapture --test-threads 1
//! TESTBED_BOOT_RUNS=5 [TESTBED_BOOT_CPU=max,la57=off] cargo test -p testbed image::boot_test::bench_boot_to_ssh -- --ignored --nocapture
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::seed::{write_seed, SeedConfig, SeedNic};
use super::{ensure, probe_cmdline, ImageArtifacts, PROBE_OK};
use crate::plan::ImageRef;
use crate::ui::{OutputFormat, Ui};

const UNDERLAY_MAC: &str = "52:54:00:aa:00:01";

fn artifacts() -> ImageArtifacts {
    let ui = Ui::new(OutputFormat::Text, false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(ensure(&ui, &ImageRef::Named("debian-12".into()))).expect("build or find debian-12")
}

fn keygen(path: &Path) -> (String, String) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
    (std::fs::read_to_string(path).unwrap(), std::fs::read_to_string(path.with_extension("pub")).unwrap())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A VM killed (by PID) when dropped.
struct Vm {
    child: Child,
    serial: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Node {
    dir: tempfile::TempDir,
    port: u16,
    client_key: PathBuf,
    host_pub: String,
}

fn prepare(a: &ImageArtifacts) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let client_key = dir.path().join("id_ed25519");
    let (_, client_pub) = keygen(&client_key);
    let (host_priv, host_pub) = keygen(&dir.path().join("host"));
    let seed = SeedConfig {
        hostname: "bootnode".into(),
        host_key_ed25519_private: host_priv,
        host_key_ed25519_public: host_pub.clone(),
        authorized_keys: vec![client_pub],
        nics: vec![SeedNic {
            name: "eth1".into(),
            mac: UNDERLAY_MAC.into(),
            address: Ipv4Addr::new(192, 168, 77, 2),
            prefix_len: 24,
            mtu: 1400,
        }],
    };
    write_seed(&dir.path().join("seed.img"), &seed).unwrap();
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&a.disk)
        .arg(dir.path().join("overlay.qcow2"))
        .status()
        .unwrap();
    assert!(st.success());
    Node { port: free_port(), client_key, host_pub, dir }
}

/// A TCG guest booted straight into the image's kernel and initramfs, its console in `serial`.
fn direct_boot(a: &ImageArtifacts, serial: &Path, memory_mib: u32, cmdline: &str) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-smp", "1", "-m", &memory_mib.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-kernel")
        .arg(a.kernel.as_ref().unwrap())
        .arg("-initrd")
        .arg(a.initrd.as_ref().unwrap())
        .args(["-append", cmdline]);
    qemu
}

fn boot(a: &ImageArtifacts, node: &Node) -> Vm {
    let serial = node.dir.path().join("serial.log");
    let child = direct_boot(a, &serial, 512, &a.cmdline)
        // TESTBED_BOOT_CPU compares CPU models (QEMU's default qemu64 vs the provider's `max,la57=off`).
        .args(std::env::var("TESTBED_BOOT_CPU").map(|cpu| vec!["-cpu".to_string(), cpu]).unwrap_or_default())
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", node.dir.path().join("overlay.qcow2").display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw,readonly=on", node.dir.path().join("seed.img").display()))
        .args(["-netdev", &format!("user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{}-:22", node.port)])
        .args(["-device", "virtio-net-pci,netdev=mgmt"])
        // An underlay NIC with no peer: enough to check renaming and addressing by MAC.
        .args(["-netdev", "user,id=u1,restrict=on", "-device", &format!("virtio-net-pci,netdev=u1,mac={UNDERLAY_MAC}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    Vm { child, serial }
}

fn ssh(node: &Node, command: &str) -> std::process::Output {
    let known = node.dir.path().join("known_hosts");
    std::fs::write(&known, format!("[127.0.0.1]:{} {}", node.port, node.host_pub)).unwrap();
    Command::new("ssh")
        .arg("-i")
        .arg(&node.client_key)
        .args([
            "-p",
            &node.port.to_string(),
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=3",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .args(["root@127.0.0.1", command])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Seconds from QEMU start until `ssh root@ true` succeeds with the pinned host key.
fn time_to_ssh(a: &ImageArtifacts, node: &Node) -> (Vm, f64) {
    let start = Instant::now();
    let mut vm = boot(a, node);
    loop {
        if ssh(node, "true").status.success() {
            return (vm, start.elapsed().as_secs_f64());
        }
        if let Some(st) = vm.child.try_wait().unwrap() {
            panic!("qemu exited ({st}); serial:\n{}", std::fs::read_to_string(&vm.serial).unwrap_or_default());
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no SSH after 120 s; serial:\n{}",
            std::fs::read_to_string(&vm.serial).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "boots a real VM; needs the debian-12 image (built on first use, root)"]
fn guest_follows_the_boot_contract() {
    let a = artifacts();
    let node = prepare(&a);
    let (_vm, secs) = time_to_ssh(&a, &node);
    eprintln!("SSH ready after {secs:.1} s");
    let script = "hostname; ip -br addr show eth1; ip -o link show eth1; echo routes:; ip route; ip -6 route; cat /sys/fs/cgroup/cgroup.subtree_control; \
                  modprobe br_netfilter && echo modprobe-ok; ps -o args= -p 1; pgrep -f testbed-agent-supervisor >/dev/null && echo supervisor-ok; \
                  pgrep -x etcd >/dev/null && echo etcd-runs-unasked; \
                  for t in ip bridge tc ss ping iperf3 nc httpd wget ps dd ethtool nsenter unshare modprobe etcd; do command -v $t >/dev/null || echo missing $t; done";
    let out = ssh(&node, script);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("bootnode"));
    assert!(text.contains("192.168.77.2/24"), "eth1 address: {text}");
    assert!(text.contains("mtu 1400"), "eth1 MTU: {text}");
    assert!(!text.lines().any(|l| l.starts_with("default")), "no default route: {text}");
    assert!(!text.contains("fec0:"), "no address from router advertisements: {text}");
    assert!(text.contains("cpu memory pids"), "cgroup controllers: {text}");
    assert!(text.contains("modprobe-ok") && text.contains("supervisor-ok"), "{text}");
    assert!(!text.contains("missing"), "{text}");
    // etcd is in the image for the control-plane nodes, where `up` starts it; nothing starts it at boot.
    assert!(!text.contains("etcd-runs-unasked"), "{text}");

    // The supervisor starts an agent once the file exists and restarts it after it exits.
    let fake_agent = "printf '#!/bin/sh\\necho started >>/tmp/agent-runs\\nexec sleep 1000\\n' >/usr/local/bin/testbed-agent.tmp && \
                      chmod 755 /usr/local/bin/testbed-agent.tmp && mv /usr/local/bin/testbed-agent.tmp /usr/local/bin/testbed-agent && \
                      sleep 2.5 && kill $(cat /run/testbed-agent.pid) && sleep 2.5 && wc -l </tmp/agent-runs && test -s /run/testbed-agent.pid && echo pid-ok";
    let out = ssh(&node, fake_agent);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2\n") && text.contains("pid-ok"),
        "agent restarts: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "boots a real VM; needs the debian-12 image (built on first use, root)"]
fn probe_mode_prints_ok_and_powers_off() {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let start = Instant::now();
    let mut child = direct_boot(&a, &serial, 256, &probe_cmdline(&a.cmdline)).stdin(Stdio::null()).spawn().unwrap();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("probe guest still running after 60 s: {}", std::fs::read_to_string(&serial).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&serial).unwrap();
    eprintln!("probe: QEMU exited ({status}) after {:.1} s", start.elapsed().as_secs_f64());
    assert!(log.contains(PROBE_OK), "{log}");
}

#[test]
#[ignore = "benchmark: boots TESTBED_BOOT_RUNS (default 5) VMs one after another"]
fn bench_boot_to_ssh() {
    let a = artifacts();
    let runs: usize = std::env::var("TESTBED_BOOT_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let mut times = Vec::new();
    for i in 0..runs {
        let node = prepare(&a);
        let (vm, secs) = time_to_ssh(&a, &node);
        drop(vm);
        eprintln!("run {}: SSH ready after {secs:.2} s", i + 1);
        times.push(secs);
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "boot to SSH, TCG, 1 vCPU, 512 MiB, {runs} runs: median {:.2} s, min {:.2} s, max {:.2} s",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}
