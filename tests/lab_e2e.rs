//! End to end for the lab lifecycle on real QEMU VMs: `up` of the default topology, `exec` across nodes over
//! the underlay, `status`, idempotent `up`, `down`; then nothing of the lab may remain (QEMU by recorded PID,
//! netns, lab directory). Also: invalid input creates nothing (exit 2), and `down` cleans up after an `up`
//! that was SIGKILLed mid-way. VM tests need root and qemu-system-x86_64 (skipped otherwise; CI runs them).
//!
//! The agent: `$TESTBED_AGENT`, else the static build in target/x86_64-unknown-linux-gnu (built here if
//! missing). Each test uses its own lab name and state dir, so a user's labs are never touched.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed_test_support::host::can_run_vms;
use testbed_test_support::lab::{ensure_agent, netns_exists, show, topology_copy, LabGuard};

fn testbed(state_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_testbed"));
    c.env("TESTBED_STATE_DIR", state_dir);
    c
}

fn proc_start_time(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    if fields.next() == Some("Z") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// (pid, start time) of every VM the lab's state records.
fn recorded_vms(state_dir: &Path, lab: &str) -> Vec<(u64, u64)> {
    let Ok(bytes) = std::fs::read(state_dir.join(lab).join("state.json")) else { return Vec::new() };
    let state: serde_json::Value = serde_json::from_slice(&bytes).expect("state.json is JSON");
    state["nodes"]
        .as_object()
        .map(|nodes| nodes.values().filter_map(|n| Some((n["pid"].as_u64()?, n["pid_start_time"].as_u64()?))).collect())
        .unwrap_or_default()
}

fn assert_nothing_left(state_dir: &Path, lab: &str, vms: &[(u64, u64)]) {
    for (pid, start) in vms {
        assert_ne!(proc_start_time(*pid), Some(*start), "QEMU pid {pid} of lab {lab} still runs");
    }
    assert!(!netns_exists(&format!("tb-{lab}")), "netns tb-{lab} remains");
    assert!(!state_dir.join(lab).exists(), "lab directory remains");
}

#[test]
fn up_exec_status_down_leaves_nothing() {
    if !can_run_vms() {
        return;
    }
    ensure_agent();
    let tmp = tempfile::tempdir().expect("tempdir");
    let state_dir = tmp.path().join("state");
    let lab = "e2e-lab";
    let topo = topology_copy(tmp.path(), "default.yaml", lab);
    let _guard =
        LabGuard { binary: env!("CARGO_BIN_EXE_testbed").into(), state_dir: state_dir.clone(), lab: lab.into() };

    let started = Instant::now();
    let up = testbed(&state_dir).arg("up").arg(&topo).output().expect("run up");
    assert!(up.status.success(), "{}", show("up", &up));
    eprintln!("up of 2 nodes: {:.1} s", started.elapsed().as_secs_f64());
    let vms = recorded_vms(&state_dir, lab);
    assert_eq!(vms.len(), 2, "two recorded VMs");
    for (pid, start) in &vms {
        assert_eq!(proc_start_time(*pid), Some(*start), "recorded VM {pid} runs");
    }
    assert!(netns_exists(&format!("tb-{lab}")));

    // node1 -> node2 over the underlay bridge in the lab netns.
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.join(lab).join("plan.json")).expect("plan.json"))
            .expect("json");
    let node2_ip = plan["nodes"][1]["nics"][0]["ip"].as_str().expect("node2 underlay ip").to_string();
    let ping = testbed(&state_dir)
        .args(["exec", "--lab", lab, "node1", "--", "ping", "-c", "3", "-W", "2", &node2_ip])
        .output()
        .expect("run exec");
    assert!(ping.status.success(), "{}", show("exec ping", &ping));
    assert!(String::from_utf8_lossy(&ping.stdout).contains("3 received"), "{}", show("exec ping", &ping));

    // The remote exit code is testbed's exit code.
    let code = testbed(&state_dir).args(["exec", "--lab", lab, "node2", "--", "exit 7"]).output().expect("exec");
    assert_eq!(code.status.code(), Some(7), "{}", show("exec exit 7", &code));

    let status = testbed(&state_dir).args(["status", "--lab", lab, "--output", "json"]).output().expect("status");
    assert!(status.status.success(), "{}", show("status", &status));
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(doc["lab"], lab);
    assert!(doc["accelerator"] == "kvm" || doc["accelerator"] == "tcg", "{doc}");
    assert_eq!(doc["healthy"], true, "{doc:#}");
    assert_eq!(doc["nodes"].as_array().map(Vec::len), Some(2));
    for n in doc["nodes"].as_array().into_iter().flatten() {
        assert_eq!(n["alive"], true, "{n}");
        assert_eq!(n["agent"]["healthy"], true, "{n}");
    }
    // The topology's pods (web on node1, client on node2) are listed with their phase and IP.
    let pods: Vec<(String, String, bool)> = doc["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|n| n["agent"]["pod_status"].as_array().cloned().unwrap_or_default())
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["phase"].as_str().unwrap_or("").to_string(),
                p["ip"].is_string(),
            )
        })
        .collect();
    assert!(pods.contains(&("web".into(), "Running".into(), true)), "{pods:?}");
    assert!(pods.contains(&("client".into(), "Running".into(), true)), "{pods:?}");
    let text = testbed(&state_dir).args(["status", "--lab", lab]).output().expect("status");
    let text_out = String::from_utf8_lossy(&text.stdout);
    assert!(
        text_out.contains("POD") && text_out.lines().any(|l| l.starts_with("web ") && l.contains("Running")),
        "{}",
        show("status", &text)
    );

    // A pod's container, found through the control plane (topology pods are mirror pods `<name>-<node>`):
    // its log, and a command in it whose output and exit code come back.
    let logs = testbed(&state_dir).args(["logs", "--lab", lab, "web-node1"]).output().expect("logs");
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("serving /tmp/default-web on 8080"),
        "{}",
        show("logs", &logs)
    );
    let on_node = testbed(&state_dir).args(["logs", "--lab", lab, "--node", "node1", "web", "-c", "httpd"]).output();
    let on_node = on_node.expect("logs --node");
    assert_eq!(on_node.stdout, logs.stdout, "{}", show("logs --node", &on_node));
    let exec =
        ["exec", "--lab", lab, "--pod", "web-node1", "-c", "httpd", "--", "sh", "-c", "hostname; echo e >&2; exit 3"];
    let exec = testbed(&state_dir).args(exec).output().expect("exec --pod");
    assert_eq!(exec.status.code(), Some(3), "{}", show("exec --pod", &exec));
    assert_eq!(
        (exec.stdout.as_slice(), exec.stderr.as_slice()),
        (&b"web\n"[..], &b"e\n"[..]),
        "{}",
        show("exec --pod", &exec)
    );
    let missing = testbed(&state_dir).args(["logs", "--lab", lab, "no-such-pod"]).output().expect("logs");
    assert_eq!(missing.status.code(), Some(2), "{}", show("logs of a missing pod", &missing));
    // `--previous` of a container that never restarted: kubectl's refusal, bad input; with `--follow`, a usage
    // error (a previous instance's log does not grow).
    let previous =
        testbed(&state_dir).args(["logs", "--lab", lab, "web-node1", "--previous"]).output().expect("logs -p");
    assert_eq!(previous.status.code(), Some(2), "{}", show("logs --previous", &previous));
    let said = String::from_utf8_lossy(&previous.stderr);
    assert!(said.contains("previous terminated container \"httpd\""), "{}", show("logs --previous", &previous));
    let both = testbed(&state_dir).args(["logs", "--lab", lab, "web-node1", "-p", "-f"]).output().expect("logs -p -f");
    assert_eq!(both.status.code(), Some(2), "{}", show("logs -p -f", &both));

    // A second `up` of a healthy lab changes nothing.
    let again = testbed(&state_dir).arg("up").arg(&topo).output().expect("up again");
    assert!(again.status.success(), "{}", show("second up", &again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to do"), "{}", show("second up", &again));
    assert_eq!(recorded_vms(&state_dir, lab), vms, "the same VMs");

    // `down` works from the lab directory alone: the topology file is gone.
    std::fs::remove_file(&topo).expect("remove topology");
    let down = testbed(&state_dir).args(["down", "--lab", lab]).output().expect("down");
    assert!(down.status.success(), "{}", show("down", &down));
    assert_nothing_left(&state_dir, lab, &vms);
    let down2 = testbed(&state_dir).args(["down", "--lab", lab]).output().expect("down again");
    assert!(down2.status.success(), "{}", show("second down", &down2));
}

#[test]
fn invalid_topology_exits_2_and_creates_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state_dir = tmp.path().join("state");
    let topo = tmp.path().join("bad.yaml");
    std::fs::write(&topo, "name: e2e-bad\nnodes:\n  node1: {memory: lots}\n").expect("write");
    let before = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    let out = testbed(&state_dir).arg("up").arg(&topo).output().expect("run up");
    assert_eq!(out.status.code(), Some(2), "{}", show("up invalid", &out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml:"), "{}", show("up invalid", &out));
    assert!(!state_dir.exists() || std::fs::read_dir(&state_dir).expect("read").next().is_none(), "state created");
    let after = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    assert_eq!(before, after, "a netns appeared");
    assert!(!netns_exists("tb-e2e-bad"));
}

/// `--lab` is a name, never a path: `down` must not delete anything outside the state dir, nor the state dir
/// itself, nor a directory in it that is not a lab. Needs no VM and no root.
#[test]
fn down_refuses_lab_names_that_are_paths() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state_dir = tmp.path().join("state");
    let victim = tmp.path().join("victim");
    let foreign = state_dir.join("photos");
    std::fs::create_dir_all(&victim).expect("victim");
    std::fs::create_dir_all(&foreign).expect("foreign dir in the state dir");
    for bad in ["../victim", "/", "", "..", "photos/..", "Victim"] {
        let out = testbed(&state_dir).args(["down", "--lab", bad]).output().expect("down");
        assert_eq!(out.status.code(), Some(2), "{}", show(&format!("down --lab {bad:?}"), &out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("not a lab name"), "{}", show("down", &out));
        let st = testbed(&state_dir).args(["status", "--lab", bad]).output().expect("status");
        assert_eq!(st.status.code(), Some(2), "{}", show(&format!("status --lab {bad:?}"), &st));
    }
    // Without --lab, a directory that is not a lab (no plan.json, no lock) is not "the only lab".
    let out = testbed(&state_dir).arg("down").output().expect("down");
    assert!(out.status.success(), "{}", show("down with no lab", &out));
    assert!(victim.is_dir() && foreign.is_dir() && state_dir.is_dir(), "something outside a lab was removed");
}

#[test]
fn down_cleans_up_after_up_was_sigkilled() {
    if !can_run_vms() {
        return;
    }
    ensure_agent();
    let tmp = tempfile::tempdir().expect("tempdir");
    let state_dir = tmp.path().join("state");
    let lab = "e2e-kill";
    let topo = topology_copy(tmp.path(), "default.yaml", lab);
    let _guard =
        LabGuard { binary: env!("CARGO_BIN_EXE_testbed").into(), state_dir: state_dir.clone(), lab: lab.into() };

    let mut up =
        testbed(&state_dir).arg("up").arg(&topo).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn up");
    // Wait until both VMs run (recorded in state.json), then kill `up` without a chance to clean up.
    let deadline = Instant::now() + Duration::from_secs(120);
    let vms = loop {
        let vms = recorded_vms(&state_dir, lab);
        if vms.len() == 2 {
            break vms;
        }
        assert!(Instant::now() < deadline, "VMs not recorded within 120 s");
        if let Ok(Some(st)) = up.try_wait() {
            panic!("up ended before the VMs were recorded: {st}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    up.kill().expect("SIGKILL up");
    let _ = up.wait();
    for (pid, start) in &vms {
        assert_eq!(proc_start_time(*pid), Some(*start), "the VMs outlive the killed CLI");
    }
    // Also kill one VM behind testbed's back: down must cope with a dead recorded PID. Signalled only while it
    // is still that process (same start time), never a recycled PID.
    let (dead, dead_start) = vms[0];
    assert_eq!(proc_start_time(dead), Some(dead_start), "VM {dead} changed under us");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(dead as i32), nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_start_time(dead) == Some(dead_start) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }

    // `status` of a lab with a dead VM: the report (one JSON document), and exit 3.
    let status = testbed(&state_dir).args(["status", "--lab", lab, "--output", "json"]).output().expect("status");
    assert_eq!(status.status.code(), Some(3), "{}", show("status with a dead VM", &status));
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).expect("one status JSON document");
    assert_eq!(doc["healthy"], false, "{doc:#}");
    assert!(doc["nodes"].as_array().into_iter().flatten().any(|n| n["alive"] == false), "{doc:#}");

    let down = testbed(&state_dir).args(["down", "--lab", lab]).output().expect("down");
    assert!(down.status.success(), "{}", show("down", &down));
    assert_nothing_left(&state_dir, lab, &vms);
}

/// QEMU processes whose command line names `dir` (the test's own state dir, so never someone else's VM).
fn qemus_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let cmd = String::from_utf8_lossy(&std::fs::read(p.path().join("cmdline")).ok()?).replace('\0', " ");
            (cmd.contains("qemu") && cmd.contains(&needle)).then_some(pid)
        })
        .collect()
}

/// SIGTERM while the first QEMU is being launched: `up` must wait for every launch still under way before
/// it rolls back, so no VM, netns or lab directory survives it.
#[test]
fn interrupted_up_rolls_back_everything() {
    if !can_run_vms() {
        return;
    }
    ensure_agent();
    let tmp = tempfile::tempdir().expect("tempdir");
    let state_dir = tmp.path().join("state");
    let lab = "e2e-intr";
    let topo = topology_copy(tmp.path(), "default.yaml", lab);
    let _guard =
        LabGuard { binary: env!("CARGO_BIN_EXE_testbed").into(), state_dir: state_dir.clone(), lab: lab.into() };
    let mut up = testbed(&state_dir).arg("up").arg(&topo).stdout(Stdio::null()).spawn().expect("spawn up");
    // qemu.log is created right before QEMU is started: the launch is under way.
    let launching = state_dir.join(lab).join("nodes/node1/qemu.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !launching.exists() {
        assert!(Instant::now() < deadline, "no launch within 120 s");
        if let Ok(Some(st)) = up.try_wait() {
            panic!("up ended before launching: {st}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(up.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let status = up.wait().expect("wait up");
    assert_eq!(status.code(), Some(3), "an interrupted up is an infrastructure failure");
    assert!(qemus_under(&state_dir).is_empty(), "QEMU left running: {:?}", qemus_under(&state_dir));
    assert!(!netns_exists(&format!("tb-{lab}")), "netns tb-{lab} remains");
    assert!(!state_dir.join(lab).exists(), "lab directory remains");
}

/// Benchmark, not a timed test: `up` of 2 and 3 nodes (default topology, plus node3) until every agent is
/// ready, then `down`. Prints seconds and the per-node stage times. Run:
/// `cargo test -p testbed --test lab_e2e -- --ignored --nocapture bench_up`
#[test]
#[ignore]
fn bench_up_2_and_3_nodes() {
    if !can_run_vms() {
        return;
    }
    ensure_agent();
    let tmp = tempfile::tempdir().expect("tempdir");
    let state_dir = tmp.path().join("state");
    let mut report = Vec::new();
    for nodes in [2usize, 3] {
        let lab = format!("bench-{nodes}");
        let topo = topology_copy(tmp.path(), "default.yaml", &lab);
        if nodes == 3 {
            let text = std::fs::read_to_string(&topo).expect("read");
            let text = text.replace("  node2: {}\n", "  node2: {}\n  node3: {}\n");
            assert!(text.contains("node3"), "default topology layout changed");
            std::fs::write(&topo, text).expect("write");
        }
        let _guard =
            LabGuard { binary: env!("CARGO_BIN_EXE_testbed").into(), state_dir: state_dir.clone(), lab: lab.clone() };
        let started = Instant::now();
        let up = testbed(&state_dir).args(["up", "--output", "json"]).arg(&topo).output().expect("up");
        let wall = started.elapsed().as_secs_f64();
        assert!(up.status.success(), "{}", show("up", &up));
        let doc: serde_json::Value = serde_json::from_slice(&up.stdout).expect("up json");
        let stages: Vec<String> = doc["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                let s: Vec<String> = n["stage_seconds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{} {:.1}", p[0].as_str().unwrap_or("?"), p[1].as_f64().unwrap_or(0.0)))
                    .collect();
                format!("{}: {}", n["name"].as_str().unwrap_or("?"), s.join(", "))
            })
            .collect();
        report.push(format!(
            "{nodes} nodes ({}): up {wall:.1} s wall, {:.1} s in testbed\n    {}",
            doc["accelerator"].as_str().unwrap_or("?"),
            doc["seconds"].as_f64().unwrap_or(0.0),
            stages.join("\n    ")
        ));
        let down = testbed(&state_dir).args(["down", "--lab", &lab]).output().expect("down");
        assert!(down.status.success(), "{}", show("down", &down));
    }
    eprintln!("BENCH up to all agents ready:\n{}", report.join("\n"));
}
