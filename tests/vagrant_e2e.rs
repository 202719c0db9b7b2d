//! End to end for the repository's Vagrantfile on real vagrant-libvirt VMs, and the proof that it leaves the host's
//! network alone: `testbed image box` + `vagrant box add`, `vagrant up` of the default topology (renamed), `vagrant
//! ssh node1 -c 'ip -br addr'` shows the plan's underlay address, node1 pings node2 over the underlay, `vagrant
//! destroy -f`; then no domain, disk or seed of the lab remains. The host namespace (links, addresses, routes,
//! nftables, iptables, listening sockets) is captured before `up`, while the lab runs and after `destroy`: any
//! difference fails the test, except sockets on 127.0.0.0/8 while the lab runs.
//!
//! Needs root, vagrant with vagrant-libvirt and libvirtd (tests/packages.txt); skipped otherwise, failed under
//! CI. A libvirtd already listening on the system socket is used; else the test starts virtlogd and libvirtd and
//! stops them (by PID) at the end. `TESTBED_E2E_VAGRANTFILE` runs another Vagrantfile (to show the checks
//! failing against a faulty one). About 3 minutes under TCG.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use testbed_test_support::host::is_root;
use testbed_test_support::host_snapshot::HostSnapshot;
use testbed_test_support::lab::{show, topology_copy, workspace_root};

const LAB: &str = "e2e-vagrant";
const SYSTEM_SOCKET: &str = "/run/libvirt/libvirt-sock";

/// True when vagrant, its libvirt plugin and libvirtd are installed and the test runs as root; otherwise prints
/// why the test is skipped, and fails under CI (`CI=true`).
fn can_run_vagrant() -> bool {
    let ok = |p: &str, a: &[&str]| Command::new(p).args(a).output().is_ok_and(|o| o.status.success());
    let plugin = Command::new("vagrant")
        .args(["plugin", "list"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("vagrant-libvirt"));
    let can = is_root() && plugin && ok("libvirtd", &["--version"]) && ok("virsh", &["--version"]);
    if !can {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but this host cannot run the Vagrant lab (root, vagrant, vagrant-libvirt, libvirtd)"
        );
        eprintln!("skipped: needs root, vagrant, vagrant-libvirt and libvirtd (tests/packages.txt)");
    }
    can
}

/// The daemons this test started (none when a libvirtd was already running); stopped by PID when dropped.
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for child in self.0.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn libvirtd_listening() -> bool {
    std::os::unix::net::UnixStream::connect(SYSTEM_SOCKET).is_ok()
}

fn start_libvirtd() -> Daemons {
    if libvirtd_listening() {
        return Daemons(Vec::new());
    }
    let spawn = |p: &str| {
        Command::new(p)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {p}: {e}"))
    };
    let daemons = Daemons(vec![spawn("virtlogd"), spawn("libvirtd")]);
    let since = Instant::now();
    while !libvirtd_listening() {
        assert!(since.elapsed() < Duration::from_secs(30), "libvirtd does not listen on {SYSTEM_SOCKET} after 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    daemons
}

fn testbed() -> Command {
    Command::new(env!("CARGO_BIN_EXE_testbed"))
}

/// Vagrant on the test's copy of the Vagrantfile, with its own `.vagrant` directory.
fn vagrant(dir: &Path, topology: &Path) -> Command {
    let mut c = Command::new("vagrant");
    c.current_dir(dir)
        .env("VAGRANT_CWD", dir)
        .env("TESTBED_TOPOLOGY", topology)
        .env("TESTBED_BIN", env!("CARGO_BIN_EXE_testbed"))
        .env("VAGRANT_NO_COLOR", "1");
    c
}

/// Runs `vagrant destroy -f` when dropped, so a failed assertion leaves no VM behind.
struct Destroy(PathBuf, PathBuf);

impl Drop for Destroy {
    fn drop(&mut self) {
        let _ = vagrant(&self.0, &self.1).args(["destroy", "-f"]).output();
    }
}

/// Vagrant's output without its progress bars, for assertion messages.
fn shown(what: &str, out: &Output) -> String {
    show(what, out).lines().filter(|l| !l.contains("Progress:")).collect::<Vec<_>>().join("\n")
}

fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh").args(["-c", "qemu:///system"]).args(args).output().expect("run virsh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True unless Vagrant holds box `name` added from `file` or later: a new `box add` makes vagrant-libvirt upload
/// the disk into libvirt once more, under a new volume name.
fn box_is_older(name: &str, file: &Path) -> bool {
    let home = std::env::var_os("VAGRANT_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".vagrant.d"));
    let installed = home.join("boxes").join(name.replace('/', "-VAGRANTSLASH-")).join("0/libvirt/box.img");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (mtime(&installed), mtime(file)) {
        (Some(have), Some(made)) => have < made,
        _ => true,
    }
}

fn assert_same(what: &str, now: &HostSnapshot, earlier: &HostSnapshot) {
    let d = now.differences(earlier);
    assert!(d.is_empty(), "the host's network namespace changed {what}:\n{}", d.join("\n"));
}

#[test]
fn vagrantfile_up_ssh_destroy_leaves_the_host_alone() {
    if !can_run_vagrant() {
        return;
    }
    // Before libvirtd starts: starting it must not touch the host's network either.
    let before = HostSnapshot::take();
    let _daemons = start_libvirtd();
    let tmp = tempfile::tempdir().expect("tempdir");
    let topo = topology_copy(tmp.path(), "default.yaml", LAB);
    let vagrantfile = std::env::var_os("TESTBED_E2E_VAGRANTFILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("Vagrantfile"));
    std::fs::copy(&vagrantfile, tmp.path().join("Vagrantfile")).expect("copy the Vagrantfile");

    let made = testbed().args(["-o", "json", "image", "box"]).output().expect("run testbed image box");
    assert!(made.status.success(), "{}", show("image box", &made));
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).expect("image box prints JSON");
    let (name, file) = (made["name"].as_str().expect("box name"), made["file"].as_str().expect("box file"));
    if box_is_older(name, Path::new(file)) {
        let add = Command::new("vagrant")
            .args(["box", "add", "--force", "--name", name, file])
            .output()
            .expect("run vagrant box add");
        assert!(add.status.success(), "{}", shown("vagrant box add", &add));
    }

    let _destroy = Destroy(tmp.path().to_path_buf(), topo.clone());
    let started = Instant::now();
    let up = vagrant(tmp.path(), &topo).args(["up", "--no-parallel"]).output().expect("run vagrant up");
    assert!(up.status.success(), "{}", shown("vagrant up", &up));
    eprintln!("vagrant up of 2 nodes: {:.1} s", started.elapsed().as_secs_f64());
    assert_same("while the Vagrant lab runs", &HostSnapshot::take(), &before);

    let plan = testbed().args(["plan", "-o", "json"]).arg(&topo).output().expect("run testbed plan");
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("plan JSON");
    let ip = |i: usize| plan["nodes"][i]["nics"][0]["ip"].as_str().expect("underlay ip").to_string();
    let addr = vagrant(tmp.path(), &topo).args(["ssh", "node1", "-c", "ip -br addr"]).output().expect("vagrant ssh");
    assert!(addr.status.success(), "{}", shown("vagrant ssh node1", &addr));
    let text = String::from_utf8_lossy(&addr.stdout);
    assert!(text.contains(&format!("{}/24", ip(0))), "node1 lacks its plan address {}:\n{text}", ip(0));
    let ping = vagrant(tmp.path(), &topo)
        .args(["ssh", "node1", "-c", &format!("ping -c 3 -W 2 {}", ip(1))])
        .output()
        .expect("vagrant ssh ping");
    assert!(ping.status.success(), "node1 cannot reach node2 over the underlay:\n{}", shown("ping", &ping));

    let destroy = vagrant(tmp.path(), &topo).args(["destroy", "-f"]).output().expect("run vagrant destroy");
    assert!(destroy.status.success(), "{}", shown("vagrant destroy", &destroy));
    let prefix = format!("tbv-{LAB}-");
    let domains = virsh(&["list", "--all", "--name"]);
    assert!(!domains.contains(&prefix), "domains of the lab remain:\n{domains}");
    let volumes = virsh(&["vol-list", "testbed"]);
    assert!(!volumes.contains(&prefix), "disks of the lab remain:\n{volumes}");
    let seeds = Path::new("/var/lib/testbed/vagrant").join(LAB);
    assert!(!seeds.exists(), "{} remains", seeds.display());
    assert_same("after vagrant destroy", &HostSnapshot::take(), &before);
}
