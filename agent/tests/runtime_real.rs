//! Real runtime tests: the agent binary on this host's kernel, with real namespaces, cgroups and veths.
//! Every test runs in a network namespace of its own (the test thread unshares one, and the agent it starts
//! inherits it), so cni0 and the veths never appear in the host's namespace. Cgroups go to a private subtree
//! (`--cgroup-name tbtest-<pid>-<test>`). Skipped unless root.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod test_agent;

use test_agent::TestAgent;
use testbed_test_support::agent_http::{request as http, send_and_hang_up};

use testbed_test_support::node_spec::loopback_node_spec;

fn node_spec() -> Value {
    serde_json::to_value(loopback_node_spec()).expect("a NodeSpec serializes")
}

fn container(name: &str, cmd: &[&str]) -> Value {
    json!({"name": name, "command": cmd})
}

fn create(pod: Value) -> Value {
    let (code, body) = http("POST", "/v1/pods", Some(pod));
    assert_eq!(code, 201, "{body}");
    body
}

fn exec(pod: &str, req: Value) -> Value {
    let (code, body) = http("POST", &format!("/v1/pods/{pod}/exec"), Some(req));
    assert_eq!(code, 200, "{body}");
    body
}

fn ns(pid: u64, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

/// Exists and is not a zombie (dead processes of the test netns are reaped by whoever inherits them).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !matches!(s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()), Some('Z') | None))
        .unwrap_or(false)
}

fn running_pid(status: &Value, container: usize) -> u64 {
    let st = &status["containers"][container]["state"];
    assert_eq!(st["state"], "running", "{status}");
    st["pid"].as_u64().unwrap()
}

/// Polls the pod until `done` holds (or panics after `secs`).
fn wait_pod(name: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (_, st) = http("GET", &format!("/v1/pods/{name}"), None);
        if done(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "pod {name} did not reach the expected state: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cgroup directory of `pid` in the cpu hierarchy (v2: the unified one).
fn cpu_cgroup_of(pid: u64) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (_, ctrls, path) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let path = path.trim_start_matches('/');
        if v2 && ctrls.is_empty() {
            return Path::new("/sys/fs/cgroup").join(path);
        }
        if !v2 && ctrls.split(',').any(|c| c == "cpu") {
            let mount = if Path::new("/sys/fs/cgroup/cpu,cpuacct").exists() { "cpu,cpuacct" } else { "cpu" };
            return Path::new("/sys/fs/cgroup").join(mount).join(path);
        }
    }
    panic!("no cpu cgroup for {pid}");
}

#[test]
fn pods_namespaces_exec_and_delete() {
    testbed_test_support::require_root!();
    let agent = TestAgent::start("ns", &["--kill-grace-secs", "1"]);

    // Invalid specs are refused with the field, before anything is touched.
    let mut bad = node_spec();
    bad["pod_subnet"] = json!("10.99.0.0/24");
    let (code, body) = http("PUT", "/v1/node", Some(bad));
    assert_eq!((code, body["field"].as_str()), (400, Some("pod_subnet")), "{body}");
    let out = Command::new("ip").args(["-br", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("cni0"), "a 400 must not touch the kernel");

    // No NodeSpec yet: only hostNetwork pods.
    let (code, _) =
        http("POST", "/v1/pods", Some(json!({"name": "early", "containers": [container("c", &["sleep", "100"])]})));
    assert_eq!(code, 409);
    agent.apply_node();
    let (code, body) =
        http("POST", "/v1/pods", Some(json!({"name": "Bad", "containers": [container("c", &["true"])]})));
    assert_eq!((code, body["field"].as_str()), (400, Some("name")), "{body}");

    let spec_a = json!({"name": "a", "containers": [container("one", &["sleep", "1000"]), container("two", &["sleep", "1000"])]});
    let a = create(spec_a.clone());
    assert_eq!(a["phase"], "Running", "{a}");
    assert_eq!(a["qos_class"], "BestEffort");
    assert!(a["ip"].as_str().unwrap().starts_with("10.244.1."), "{a}");
    // Same spec again: 200, a different spec under the name: 409.
    assert_eq!(http("POST", "/v1/pods", Some(spec_a)).0, 200);
    let (code, _) = http("POST", "/v1/pods", Some(json!({"name": "a", "containers": [container("x", &["true"])]})));
    assert_eq!(code, 409);
    let b = create(json!({"name": "b", "containers": [container("one", &["sleep", "1000"])]}));

    let (a1, a2, b1) = (running_pid(&a, 0), running_pid(&a, 1), running_pid(&b, 0));
    let infra_a = a["infra_pid"].as_u64().unwrap();
    // Containers of a pod share the infra's net, UTS and IPC namespaces; each has its own PID and mount ns.
    for kind in ["net", "uts", "ipc"] {
        assert_eq!(ns(a1, kind), ns(a2, kind), "{kind}");
        assert_eq!(ns(a1, kind), ns(infra_a, kind), "{kind}");
        assert_ne!(ns(a1, kind), ns(b1, kind), "pods must not share {kind}");
    }
    for kind in ["pid", "mnt"] {
        assert_ne!(ns(a1, kind), ns(a2, kind), "{kind}");
        assert_ne!(ns(a1, kind), ns(b1, kind), "{kind}");
    }
    assert_ne!(ns(a1, "net"), ns(agent.pid() as u64, "net"));

    // exec: pod namespaces (hostname, eth0 with the pod IP), stdin, exit code.
    let r = exec(
        "a",
        json!({"command": ["sh", "-c", "hostname; ip -4 -o addr show dev eth0; cat; exit 3"], "stdin": "from-stdin"}),
    );
    let stdout = r["stdout"].as_str().unwrap();
    assert_eq!(r["exit_code"], 3, "{r}");
    assert!(stdout.starts_with("a\n"), "{r}");
    assert!(stdout.contains(a["ip"].as_str().unwrap()), "{r}");
    assert!(stdout.contains("from-stdin"), "{r}");
    // exec into a container: its PID namespace (the container is PID 1 there) and its cgroup.
    let r = exec(
        "a",
        json!({"container": "two", "command": ["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; cat /proc/self/cgroup"]}),
    );
    let stdout = r["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("sleep 1000"), "{r}");
    assert!(stdout.contains("/pod-a/two"), "{r}");
    // Timeout kills the command.
    let t0 = Instant::now();
    let r = exec("a", json!({"command": ["sleep", "30"], "timeout_secs": 1}));
    assert_eq!(r["timed_out"], true, "{r}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    // Unknown pod / container.
    assert_eq!(http("POST", "/v1/pods/nope/exec", Some(json!({"command": ["true"]}))).0, 404);
    assert_eq!(http("POST", "/v1/pods/a/exec", Some(json!({"container": "zz", "command": ["true"]}))).0, 400);

    // shareProcessNamespace: containers see each other.
    let s = create(json!({"name": "shared", "share_process_namespace": true,
        "containers": [container("one", &["sleep", "1001"]), container("two", &["sleep", "1002"])]}));
    let (s1, s2) = (running_pid(&s, 0), running_pid(&s, 1));
    assert_eq!(ns(s1, "pid"), ns(s2, "pid"));
    assert_eq!(ns(s1, "pid"), ns(s["infra_pid"].as_u64().unwrap(), "pid"));
    let r = exec("shared", json!({"container": "one", "command": ["sh", "-c", "cat /proc/*/cmdline | tr '\\0' ' '"]}));
    assert!(r["stdout"].as_str().unwrap().contains("sleep 1002"), "{r}");
    // An orphan in the shared PID namespace is re-parented to the infra process, which reaps it.
    exec("shared", json!({"container": "one", "command": ["sh", "-c", "sleep 0.2 & exit 0"]}));
    std::thread::sleep(Duration::from_millis(800));
    let r = exec("shared", json!({"container": "one", "command": ["sh", "-c", "cat /proc/[0-9]*/stat"]}));
    let zombies: Vec<&str> = r["stdout"].as_str().unwrap().lines().filter(|l| l.contains(") Z ")).collect();
    assert!(zombies.is_empty(), "zombies in the pod: {zombies:?}");
    assert_eq!(std::fs::read_to_string(format!("/proc/{}/comm", s["infra_pid"])).unwrap().trim(), "memfd:tb-infra");

    // hostNetwork pod: the node's network namespace.
    let h = create(json!({"name": "host", "host_network": true, "containers": [container("c", &["sleep", "1000"])]}));
    assert_eq!(ns(running_pid(&h, 0), "net"), ns(agent.pid() as u64, "net"));
    assert_eq!(ns(running_pid(&h, 0), "uts"), ns(agent.pid() as u64, "uts"));
    assert_ne!(ns(running_pid(&h, 0), "ipc"), ns(agent.pid() as u64, "ipc"));

    // Node status lists the pods and the observed network.
    let (_, node) = http("GET", "/v1/node", None);
    assert_eq!(node["pods"].as_array().unwrap().len(), 4, "{node}");
    assert!(node["network"]["links"].to_string().contains("cni0"), "{node}");
    assert!(node["cgroup_version"] == "v1" || node["cgroup_version"] == "v2");

    // Delete: processes, veth, cgroups and state are gone.
    let veth = a["host_veth"].as_str().unwrap().to_string();
    let cgroup = PathBuf::from(a["cgroup"].as_str().unwrap());
    assert!(cgroup.exists());
    assert_eq!(http("DELETE", "/v1/pods/a", None).0, 204);
    assert_eq!(http("GET", "/v1/pods/a", None).0, 404);
    for pid in [a1, a2, infra_a] {
        assert!(!alive(pid), "pid {pid} still runs");
    }
    assert!(!cgroup.exists(), "{} still exists", cgroup.display());
    let out = Command::new("ip").args(["-br", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&veth), "veth {veth} still exists");
    assert!(!agent.state_dir.path().join("pods/a.json").exists());

    // Grace period (kubectl --grace-period): `sleep` is PID 1 of its PID namespace and ignores SIGTERM, so
    // it dies by SIGKILL only when the grace period ends; 0 kills at once (the agent's default here is 1 s).
    assert_eq!(http("DELETE", "/v1/pods/b?grace_period_secs=soon", None).0, 400);
    let b1 = running_pid(&b, 0);
    let t = Instant::now();
    assert_eq!(http("DELETE", "/v1/pods/b?grace_period_secs=0", None).0, 204);
    assert!(t.elapsed() < Duration::from_secs(1), "grace 0 waited {:?}", t.elapsed());
    assert!(!alive(b1), "pid {b1} still runs");
    let h1 = running_pid(&h, 0);
    let t = Instant::now();
    assert_eq!(http("DELETE", "/v1/pods/host?grace_period_secs=2", None).0, 204);
    assert!(t.elapsed() >= Duration::from_secs(2), "grace 2 ended after {:?}", t.elapsed());
    assert!(!alive(h1), "pid {h1} still runs");
    drop(agent);
}

/// `readlink /proc/self/ns/<kind>` in the exec'd command, for these kinds.
const EXEC_NS: [&str; 6] = ["net", "uts", "ipc", "pid", "mnt", "cgroup"];

#[test]
fn exec_into_a_container_reads_the_container_itself() {
    testbed_test_support::require_root!();
    let agent = TestAgent::start("execns", &["--kill-grace-secs", "1"]);
    agent.apply_node();
    // `rogue` leaves the pod's network and UTS namespaces (the fault the sandbox checks must see); exec used
    // to join the infra's whatever container was named, and reported the pod's instead.
    let rogue = ["unshare", "-n", "-u", "sh", "-c", "hostname rogue; exec sleep 1000"];
    let p =
        create(json!({"name": "p", "containers": [container("ok", &["sleep", "1000"]), container("rogue", &rogue)]}));
    let infra = p["infra_pid"].as_u64().unwrap();
    let script = format!("readlink {}; hostname", EXEC_NS.map(|k| format!("/proc/self/ns/{k}")).join(" "));
    // The container is reported running once its process exists, maybe before its shell set the hostname.
    let deadline = Instant::now() + Duration::from_secs(5);
    while exec("p", json!({"container": "rogue", "command": ["hostname"]}))["stdout"] != "rogue\n" {
        assert!(Instant::now() < deadline, "rogue never set its hostname");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (idx, name, hostname) in [(0, "ok", "p"), (1, "rogue", "rogue")] {
        let pid = running_pid(&p, idx);
        let r = exec("p", json!({"container": name, "command": ["sh", "-c", script]}));
        let lines: Vec<&str> = r["stdout"].as_str().unwrap().lines().collect();
        for (i, kind) in EXEC_NS.iter().enumerate() {
            assert_eq!(Path::new(lines[i]), ns(pid, kind), "exec into {name}: {kind}\n{r}");
        }
        assert_eq!(lines[EXEC_NS.len()], hostname, "{r}");
    }
    let rogue_pid = running_pid(&p, 1);
    assert_ne!(ns(rogue_pid, "net"), ns(infra, "net"), "the fault is in place");
    assert_eq!(ns(running_pid(&p, 0), "net"), ns(infra, "net"));
    drop(agent);
}

#[test]
fn a_delete_outlasting_the_grace_period_with_one_container_gone_removes_everything() {
    testbed_test_support::require_root!();
    let agent = TestAgent::start("mixed", &["--kill-grace-secs", "1"]);
    agent.apply_node();
    // `quits` ends on SIGTERM, `stays` (PID 1 of its PID namespace: SIGTERM has no default action there)
    // outlives the grace period, so the delete waits for the supervisors twice: once for the grace period, once
    // after the SIGKILL, while one of them has already finished.
    let quits = container("quits", &["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"]);
    let p = create(json!({"name": "mixed", "containers": [quits, container("stays", &["sleep", "1000"])]}));
    let veth = p["host_veth"].as_str().unwrap().to_string();
    let cgroup = PathBuf::from(p["cgroup"].as_str().unwrap());
    let p = wait_pod("mixed", 10, |s| (0..2).all(|i| s["containers"][i]["state"]["state"] == "running"));
    let pids = [running_pid(&p, 0), running_pid(&p, 1)];

    let (code, body) = http("DELETE", "/v1/pods/mixed?grace_period_secs=1", None);
    assert_eq!(code, 204, "{body}");
    assert_eq!(http("GET", "/v1/pods/mixed", None).0, 404);
    for pid in pids {
        assert!(!alive(pid), "pid {pid} still runs");
    }
    assert!(!cgroup.exists(), "{} still exists", cgroup.display());
    let out = Command::new("ip").args(["-br", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&veth), "veth {veth} still exists");
    drop(agent);
}

#[test]
fn a_delete_that_leaks_answers_500_and_the_reconcile_finishes_it() {
    testbed_test_support::require_root!();
    let agent = TestAgent::start("leak", &["--kill-grace-secs", "1"]);
    agent.apply_node();
    let p = create(json!({"name": "leaky", "containers": [container("c", &["sleep", "1000"])]}));
    let (ip, veth) = (p["ip"].as_str().unwrap(), p["host_veth"].as_str().unwrap());
    let cgroup = PathBuf::from(p["containers"][0]["cgroup"].as_str().unwrap());
    // Faults: a directory where the lease file was (its removal fails), and a process the agent did not start
    // in the container's cgroup (rmdir fails while it is there).
    let lease = agent.state_dir.path().join("ipam").join(ip);
    std::fs::remove_file(&lease).unwrap();
    std::fs::create_dir_all(lease.join("x")).unwrap();
    let mut stray = Command::new("sleep").arg("1000").spawn().unwrap();
    std::fs::write(cgroup.join("cgroup.procs"), stray.id().to_string()).unwrap();

    let (code, body) = http("DELETE", "/v1/pods/leaky?grace_period_secs=0", None);
    assert_eq!(code, 500, "{body}");
    let leaked: Vec<(&str, &str)> = body["leaked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["kind"].as_str().unwrap(), l["name"].as_str().unwrap()))
        .collect();
    assert!(leaked.contains(&("lease", ip)) && leaked.contains(&("cgroup", cgroup.to_str().unwrap())), "{body}");
    assert!(!leaked.iter().any(|(kind, _)| *kind == "veth"), "the veth was removed: {body}");
    let out = Command::new("ip").args(["-br", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(veth));
    assert_eq!(http("GET", "/v1/pods/leaky", None).0, 404);
    let spec = json!({"name": "leaky", "containers": [container("c", &["sleep", "1000"])]});
    assert_eq!(http("POST", "/v1/pods", Some(spec.clone())).0, 409, "the name is taken until nothing is left");

    // The faults go; the reconcile loop (3 s) finishes the teardown without another request.
    stray.kill().unwrap();
    stray.wait().unwrap();
    std::fs::remove_dir_all(&lease).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cgroup.exists() || std::fs::read_dir(agent.state_dir.path().join("teardown")).unwrap().next().is_some() {
        assert!(Instant::now() < deadline, "the unfinished teardown was not finished");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(http("DELETE", "/v1/pods/leaky", None).0, 404);
    create(spec);
    drop(agent);
}

#[test]
fn limits_oom_and_throttling() {
    testbed_test_support::require_root!();
    let agent = TestAgent::start("limits", &["--kill-grace-secs", "1"]);
    agent.apply_node();
    let mi = 1u64 << 20;
    let oom = create(json!({"name": "oom", "restart_policy": "Never", "containers": [{
        "name": "dd", "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        "resources": {"limits": {"memory_bytes": 16 * mi, "cpu_millis": 500}}
    }]}));
    assert_eq!(oom["qos_class"], "Guaranteed", "{oom}");
    let st = wait_pod("oom", 30, |s| s["containers"][0]["state"]["state"] == "terminated");
    assert_eq!(st["containers"][0]["state"]["reason"], "OOMKilled", "{st}");
    assert_eq!(st["phase"], "Failed", "{st}");

    let cpu = create(json!({"name": "cpu", "containers": [{
        "name": "spin", "command": ["sh", "-c", "while :; do :; done"],
        "resources": {"requests": {"cpu_millis": 50}, "limits": {"cpu_millis": 100}}, "pids_limit": 20
    }]}));
    assert_eq!(cpu["qos_class"], "Burstable");
    let dir = cpu_cgroup_of(running_pid(&cpu, 0));
    assert!(dir.ends_with("pod-cpu/spin"), "{}", dir.display());
    let v2 = dir.join("cpu.max").exists();
    if v2 {
        assert_eq!(std::fs::read_to_string(dir.join("cpu.max")).unwrap().trim(), "10000 100000");
        assert_eq!(std::fs::read_to_string(dir.join("cpu.weight")).unwrap().trim(), "2");
    } else {
        assert_eq!(std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).unwrap().trim(), "10000");
        assert_eq!(std::fs::read_to_string(dir.join("cpu.shares")).unwrap().trim(), "51");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).unwrap();
    let throttled: u64 =
        stat.lines().find_map(|l| l.strip_prefix("nr_throttled ").map(|v| v.trim().parse().unwrap())).unwrap();
    assert!(throttled > 0, "cpu.stat: {stat}");
    drop(agent);
}

#[test]
fn restart_policies_readoption_and_drift() {
    testbed_test_support::require_root!();
    let mut agent = TestAgent::start("restart", &["--kill-grace-secs", "1"]);
    agent.apply_node();
    create(json!({"name": "ok", "restart_policy": "Never", "containers": [container("c", &["true"])]}));
    let st = wait_pod("ok", 20, |s| s["phase"] == "Succeeded");
    assert_eq!(st["containers"][0]["state"]["reason"], "Completed");
    create(json!({"name": "fail", "restart_policy": "Never", "containers": [container("c", &["sh", "-c", "exit 3"])]}));
    let st = wait_pod("fail", 20, |s| s["phase"] == "Failed");
    assert_eq!(st["containers"][0]["state"]["exit_code"], 3, "{st}");
    assert_eq!(st["containers"][0]["state"]["reason"], "Error");
    create(
        json!({"name": "again", "restart_policy": "OnFailure", "containers": [container("c", &["sh", "-c", "sleep 0.2; exit 1"])]}),
    );
    let st = wait_pod("again", 20, |s| s["containers"][0]["restart_count"].as_u64() >= Some(2));
    assert_eq!(st["phase"], "Running", "{st}");

    // Agent restart: the pod keeps its infra process and container, and the new agent adopts them.
    let keep = create(json!({"name": "keep", "containers": [container("c", &["sleep", "1000"])]}));
    let (infra, pid) = (keep["infra_pid"].as_u64().unwrap(), running_pid(&keep, 0));
    let old_agent = agent.pid();
    agent.kill();
    assert!(alive(infra) && alive(pid), "pods must survive the agent");
    agent.spawn();
    assert_ne!(agent.pid(), old_agent);
    let st = wait_pod("keep", 10, |s| s["containers"][0]["state"]["state"] == "running");
    assert_eq!((st["infra_pid"].as_u64(), running_pid(&st, 0)), (Some(infra), pid), "{st}");
    let (_, node) = http("GET", "/v1/node", None);
    assert_eq!(node["spec"]["node_name"], "n1", "the NodeSpec survives a restart");
    // An adopted container that dies is noticed and restarted (restartPolicy Always).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let st = wait_pod("keep", 20, |s| {
        s["containers"][0]["restart_count"] == 1 && s["containers"][0]["state"]["state"] == "running"
    });
    assert_ne!(running_pid(&st, 0), pid);

    // Drift: a deleted pod veth comes back within 10 s.
    let veth = st["host_veth"].as_str().unwrap().to_string();
    let ok = Command::new("ip").args(["link", "del", &veth]).status().unwrap().success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("ip").args(["-br", "link", "show", "dev", &veth]).output().unwrap();
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "veth {veth} was not repaired within 10 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, node) = http("GET", "/v1/node", None);
    assert!(node["drift_repairs"].as_u64().unwrap() >= 1, "{node}");
    let r = exec("keep", json!({"command": ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]}));
    assert!(r["stdout"].as_str().unwrap().contains(st["ip"].as_str().unwrap()), "{r}");

    // A killed infra process: the pod is created again with a new sandbox.
    let old_infra = st["infra_pid"].as_u64().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old_infra as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let st = wait_pod("keep", 20, |s| {
        s["infra_pid"].as_u64().is_some_and(|p| p != old_infra) && s["containers"][0]["state"]["state"] == "running"
    });
    let r = exec("keep", json!({"command": ["hostname"]}));
    assert_eq!(r["stdout"], "keep\n", "{st}");

    // As the kubelet: a finished pod whose sandbox dies is not run again, and a restartPolicy Never pod whose
    // container runs ends Failed instead of being started over. The agent restarts in between, too.
    let once =
        create(json!({"name": "once", "restart_policy": "Never", "containers": [container("c", &["sleep", "1000"])]}));
    let (once_infra, once_pid) = (once["infra_pid"].as_u64().unwrap(), running_pid(&once, 0));
    let ok_infra = wait_pod("ok", 1, |s| s["phase"] == "Succeeded")["infra_pid"].as_u64().unwrap();
    for pid in [ok_infra, once_infra] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    let st = wait_pod("once", 20, |s| s["phase"] == "Failed");
    assert_eq!(st["containers"][0]["state"]["exit_code"], 137, "{st}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(once_pid) {
        assert!(Instant::now() < deadline, "the container of a lost Never pod still runs");
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.kill();
    agent.spawn();
    // Two reconcile periods later both are still as they ended, with no new sandbox.
    std::thread::sleep(Duration::from_secs(7));
    for (name, phase, infra) in [("ok", "Succeeded", ok_infra), ("once", "Failed", once_infra)] {
        let (_, st) = http("GET", &format!("/v1/pods/{name}"), None);
        assert_eq!(st["phase"], phase, "{st}");
        assert_eq!(st["infra_pid"].as_u64(), Some(infra), "{name} got a new sandbox: {st}");
        assert_eq!(st["containers"][0]["restart_count"], 0, "{st}");
    }
    let (_, node) = http("GET", "/v1/node", None);
    assert_eq!(node["converged"], true, "finished pods must not keep the node from converging: {node}");

    // A pod that cannot be brought back at once (here: the agent restarts without its NodeSpec while the
    // pod's infra is gone) stays Pending and visible, and is created as soon as that can work.
    let infra = wait_pod("keep", 1, |_| true)["infra_pid"].as_u64().unwrap();
    agent.kill();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(infra as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    std::fs::remove_file(agent.state_dir.path().join("node.json")).unwrap();
    agent.spawn();
    let st = wait_pod("keep", 10, |s| s["phase"] == "Pending");
    assert_eq!(st["containers"][0]["state"]["reason"], "CreatePodSandboxError", "{st}");
    agent.apply_node();
    let st = wait_pod("keep", 20, |s| s["containers"][0]["state"]["state"] == "running");
    assert_ne!(st["infra_pid"].as_u64(), Some(infra), "{st}");
    drop(agent);
}

/// PIDs of live infra processes of `pod` (found through /proc, not through the API).
fn infra_pids_of(pod: &str) -> Vec<u64> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u64>() else { continue };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let argv: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        if argv.len() >= 4 && argv[1] == b"infra" && argv[2] == b"--pod" && argv[3] == pod.as_bytes() {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn cancelled_and_concurrent_requests() {
    testbed_test_support::require_root!();
    let agent = TestAgent::start("cancel", &["--kill-grace-secs", "1"]);
    agent.apply_node();
    let sleeper = |name: &str| json!({"name": name, "containers": [container("c", &["sleep", "1000"])]});

    // A DELETE whose client hangs up during the grace period still deletes the pod, and the name can be
    // used again.
    let p = create(sleeper("gone"));
    let (pid, infra) = (running_pid(&p, 0), p["infra_pid"].as_u64().unwrap());
    send_and_hang_up("DELETE", "/v1/pods/gone?grace_period_secs=1", None, Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(10);
    while http("GET", "/v1/pods/gone", None).0 != 404 {
        assert!(Instant::now() < deadline, "a cancelled DELETE left the pod behind");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!alive(pid) && !alive(infra), "the pod's processes survived a cancelled DELETE");
    assert!(!PathBuf::from(p["cgroup"].as_str().unwrap()).exists());
    let again = create(sleeper("gone"));
    assert_eq!(again["phase"], "Running", "{again}");

    // A second DELETE during the first one's grace period answers only once the pod is gone.
    let first = std::thread::spawn(|| http("DELETE", "/v1/pods/gone?grace_period_secs=2", None).0);
    std::thread::sleep(Duration::from_millis(300));
    let pid = running_pid(&again, 0);
    assert_eq!(http("DELETE", "/v1/pods/gone", None).0, 204);
    assert!(!alive(pid), "204 came while the container still ran");
    assert_eq!(http("GET", "/v1/pods/gone", None).0, 404);
    assert_eq!(first.join().unwrap(), 204);

    // A create whose client hangs up still ends with a complete, running pod (not a Pending ghost). Many
    // containers make the create last long enough to be cut.
    let many: Vec<Value> = (0..30).map(|i| container(&format!("c{i}"), &["sleep", "1000"])).collect();
    send_and_hang_up(
        "POST",
        "/v1/pods",
        Some(json!({"name": "orphan", "containers": many})),
        Duration::from_millis(30),
    );
    let st = wait_pod("orphan", 20, |s| s["phase"] == "Running");
    let infra = st["infra_pid"].as_u64().unwrap();
    assert_eq!(infra_pids_of("orphan"), vec![infra]);
    assert_eq!(http("DELETE", "/v1/pods/orphan", None).0, 204);
    assert!(!alive(infra));

    // A create racing a delete of the same name: whatever the order, no pod lives on that the API does not
    // show, and a pod the API shows is complete.
    for (i, delay_ms) in [0u64, 1, 3, 6, 10, 20].into_iter().enumerate() {
        let name = format!("race{i}");
        let spec = sleeper(&name);
        let creator = std::thread::spawn(move || http("POST", "/v1/pods", Some(spec)).0);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let deleted = http("DELETE", &format!("/v1/pods/{name}?grace_period_secs=0"), None).0;
        let created = creator.join().unwrap();
        assert!(deleted == 204 || deleted == 404, "DELETE {name}: {deleted}");
        assert!(created == 201 || created == 409, "POST {name}: {created}");
        let (code, st) = http("GET", &format!("/v1/pods/{name}"), None);
        let live = infra_pids_of(&name);
        if code == 404 {
            assert!(live.is_empty(), "{name}: infra {live:?} lives on, invisible to the API");
        } else {
            assert_eq!(st["phase"], "Running", "{st}");
            assert_eq!(live, vec![st["infra_pid"].as_u64().unwrap()], "{st}");
            assert_eq!(http("DELETE", &format!("/v1/pods/{name}?grace_period_secs=0"), None).0, 204);
        }
    }
    drop(agent);
}

#[test]
fn failed_apply_is_kept_and_retried() {
    testbed_test_support::require_root!();
    let mut agent = TestAgent::start("retry", &["--kill-grace-secs", "1"]);
    // Valid, but its underlay interface does not exist yet: 500, and the spec is the node's desired state.
    let mut spec = node_spec();
    spec["underlay"]["interface"] = json!("tbretry0");
    let (code, body) = http("PUT", "/v1/node", Some(spec));
    assert_eq!(code, 500, "{body}");
    let (_, node) = http("GET", "/v1/node", None);
    assert_eq!(node["spec"]["underlay"]["interface"], "tbretry0", "{node}");
    assert_eq!(node["converged"], false, "{node}");
    assert!(node["last_error"].as_str().unwrap().contains("tbretry0"), "{node}");
    // Still so after an agent restart (the stored spec failed again at start) ...
    agent.kill();
    agent.spawn();
    let (_, node) = http("GET", "/v1/node", None);
    assert_eq!(node["spec"]["underlay"]["interface"], "tbretry0", "{node}");
    // ... and the periodic reconcile converges once the interface appears (in this test's own netns).
    let ok = Command::new("ip")
        .args(["link", "add", "tbretry0", "type", "veth", "peer", "name", "tbretry1"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, node) = http("GET", "/v1/node", None);
        if node["converged"] == true {
            assert!(node["last_error"].is_null(), "{node}");
            assert!(node["network"]["links"].to_string().contains("cni0"), "{node}");
            break;
        }
        assert!(Instant::now() < deadline, "never converged: {node}");
        std::thread::sleep(Duration::from_millis(200));
    }
    create(json!({"name": "p", "containers": [container("c", &["sleep", "1000"])]}));
    drop(agent);
}

/// PIDs whose argv is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<u64> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u64>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want) && alive(*pid))
        .collect()
}

#[test]
fn exec_timeout_and_hang_up_kill_the_whole_command() {
    testbed_test_support::require_root!();
    let agent = TestAgent::start("execkill", &["--kill-grace-secs", "1"]);
    agent.apply_node();
    create(json!({"name": "x", "containers": [container("c", &["sleep", "1000"])]}));

    // A timed-out exec kills the command's background children too (they would hold its pipes open).
    let r = exec("x", json!({"command": ["sh", "-c", "sleep 3001 & echo $!; sleep 3002"], "timeout_secs": 1}));
    assert_eq!(r["timed_out"], true, "{r}");
    let bg: u64 = r["stdout"].as_str().unwrap().trim().parse().unwrap_or_else(|_| panic!("no background pid: {r}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(bg) {
        assert!(Instant::now() < deadline, "background child {bg} of a timed-out exec survived");
        std::thread::sleep(Duration::from_millis(50));
    }

    // An exec whose client hangs up is killed with its children.
    let body = json!({"command": ["sh", "-c", "sleep 3003 & sleep 3004"]}).to_string();
    let mut s = TcpStream::connect(("127.0.0.1", 7070)).unwrap();
    write!(s, "POST /v1/pods/x/exec HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids_running(&["sleep", "3003"]).is_empty() || pids_running(&["sleep", "3004"]).is_empty() {
        assert!(Instant::now() < deadline, "the exec did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.shutdown(std::net::Shutdown::Both).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = [pids_running(&["sleep", "3003"]), pids_running(&["sleep", "3004"])].concat();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "exec processes {left:?} outlived their request");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(agent);
}

#[test]
fn launcher_refuses_a_pid_that_is_not_the_pods_infra() {
    testbed_test_support::require_root!();
    // As if the infra process had died and its PID gone to a stranger (here: this test process).
    let out = Command::new(env!("CARGO_BIN_EXE_testbed-agent"))
        .args(["run-container", "--exec", "--pod", "x", "--infra-pid", &std::process::id().to_string(), "--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{stderr}");
    assert!(stderr.contains("is no longer the infra process of pod x"), "{stderr}");
}
