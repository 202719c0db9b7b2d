//! End to end for the lab's control plane on real QEMU VMs with the real kubectl: `up` of the default topology
//! gives a kubeconfig that plain `kubectl` uses (through the API forwarder on the host's loopback) to list,
//! create and watch; killing the forwarder cuts kubectl off and `up` brings it back; `down` leaves no
//! forwarder and no lab directory. (A three-member etcd: node_death_e2e's lab.) Needs root, QEMU and kubectl:
//! skipped without them, except under CI (`CI=true`), where that is a failure.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testbed_test_support::host::can_run_vms;
use testbed_test_support::kubectl::Kubectl;
use testbed_test_support::lab::{show, topology_copy, LabGuard};

fn testbed(state_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_testbed"));
    c.env("TESTBED_STATE_DIR", state_dir);
    c
}

/// Root, QEMU and kubectl; under CI a missing kubectl fails instead of skipping.
fn can_run() -> bool {
    if !can_run_vms() {
        return false;
    }
    let kubectl = Command::new("sh").args(["-c", "command -v kubectl"]).output().is_ok_and(|o| o.status.success());
    if !kubectl {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but kubectl is missing (tests/packages.txt)");
        eprintln!("skipped: needs kubectl");
    }
    kubectl
}

/// kubectl with the lab's kubeconfig; its discovery cache in the test's directory, not the user's.
fn kubectl_of(kubeconfig: &Path) -> Kubectl {
    let tmp = kubeconfig.ancestors().nth(3).expect("<tmp>/state/<lab>/kubeconfig");
    Kubectl::new(kubeconfig, &tmp.join("kube-cache"))
}

fn kubectl_command(kubeconfig: &Path) -> Command {
    kubectl_of(kubeconfig).command()
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    kubectl_of(kubeconfig).run(args, stdin)
}

/// PIDs of every `testbed forward-api --lab <lab>` process on the host.
fn forwarders(lab: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&&b"forward-api"[..]) && args.windows(2).any(|w| w[0] == b"--lab" && w[1] == lab.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

fn up(state_dir: &Path, topo: &Path) -> PathBuf {
    let started = Instant::now();
    let out = testbed(state_dir).arg("up").arg(topo).output().expect("run up");
    assert!(out.status.success(), "{}", show("up", &out));
    eprintln!("up: {:.1} s", started.elapsed().as_secs_f64());
    let path = testbed(state_dir).args(["kubeconfig"]).output().expect("kubeconfig");
    assert!(path.status.success(), "{}", show("kubeconfig", &path));
    PathBuf::from(String::from_utf8_lossy(&path.stdout).trim())
}

const OBJECTS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: cp-e2e}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: first, namespace: cp-e2e}
spec: {holderIdentity: node1, leaseDurationSeconds: 40}
";

#[test]
fn default_lab_serves_kubectl_and_down_leaves_nothing() {
    if !can_run() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let state_dir = tmp.path().join("state");
    let lab = "cpl-e2e";
    let topo = topology_copy(tmp.path(), "default.yaml", lab);
    let _guard =
        LabGuard { binary: env!("CARGO_BIN_EXE_testbed").into(), state_dir: state_dir.clone(), lab: lab.into() };
    let kubeconfig = up(&state_dir, &topo);
    assert_eq!(kubeconfig, state_dir.join(lab).join("kubeconfig"));

    let ns = kubectl(&kubeconfig, &["get", "namespaces"], None);
    assert!(
        ns.status.success() && String::from_utf8_lossy(&ns.stdout).contains("kube-system"),
        "{}",
        show("get ns", &ns)
    );
    let created = kubectl(&kubeconfig, &["create", "-f", "-"], Some(OBJECTS));
    assert!(created.status.success(), "{}", show("create -f", &created));

    // A watch started now sees a Lease created after it.
    let mut watch = kubectl_command(&kubeconfig)
        .args(["get", "leases", "-n", "cp-e2e", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let lines = BufReader::new(watch.stdout.take().expect("stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || lines.lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).as_deref(), Ok("lease.coordination.k8s.io/first"));
    let second = OBJECTS.split("---\n").nth(1).expect("lease").replace("first", "second");
    let created = kubectl(&kubeconfig, &["create", "-f", "-"], Some(&second));
    assert!(created.status.success(), "{}", show("create second", &created));
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).as_deref(), Ok("lease.coordination.k8s.io/second"));
    let _ = watch.kill();
    let _ = watch.wait();

    // Control: without the forwarder kubectl cannot reach the API; `up` of the running lab starts it again.
    let before = forwarders(lab);
    assert_eq!(before.len(), 1, "one forwarder: {before:?}");
    let _ = Command::new("kill").arg(before[0].to_string()).status();
    std::thread::sleep(Duration::from_millis(500));
    let cut = kubectl(&kubeconfig, &["get", "namespaces"], None);
    assert!(!cut.status.success(), "kubectl reached the API without the forwarder: {}", show("get ns", &cut));
    let kubeconfig = up(&state_dir, &topo);
    let back = kubectl(&kubeconfig, &["get", "lease", "first", "-n", "cp-e2e", "-o", "name"], None);
    assert!(back.status.success(), "{}", show("get lease after up", &back));

    let down = testbed(&state_dir).args(["down", "--lab", lab]).output().expect("down");
    assert!(down.status.success(), "{}", show("down", &down));
    assert!(forwarders(lab).is_empty(), "forwarder left running: {:?}", forwarders(lab));
    assert!(!state_dir.join(lab).exists(), "lab directory remains");
}
