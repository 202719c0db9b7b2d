//! End to end for adding a node to a running lab and removing it again (`up` of the file with one more node,
//! then of the file without it), on real QEMU VMs, per backend: the new node gets its subnet lease (its
//! Node's podCIDR), a pod on node1 reaches a pod on the new node, the nodes that stay keep their VMs and get
//! no `PUT /v1/node` from the CLI (their agents count them: NodeStatus.node_puts), and once the node is
//! removed its VM, tap and directory are gone and node1's routes no longer name its subnet. VM tests need
//! root and qemu-system-x86_64 (skipped otherwise; under CI=true they fail instead). `none` routes no pod
//! traffic between nodes, so it has no test here. Each backend's test takes about 100 s under TCG.
//!
//! The agent: `$TESTBED_AGENT`, else the static build in target/x86_64-unknown-linux-gnu (built if missing).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testbed_test_support::host::can_run_vms;
use testbed_test_support::lab::{ensure_agent, run_testbed, show, topology_copy, LabGuard};

/// How long the new node's pod may take to be reached once `up` returned (the agents' watch and apply).
const REACH_WITHIN: Duration = Duration::from_secs(60);
/// How long node1 may take to drop the removed node's route once `up` returned.
const FORGET_WITHIN: Duration = Duration::from_secs(30);

struct GrowLab {
    state_dir: PathBuf,
    lab: String,
}

impl GrowLab {
    fn testbed(&self, args: &[&str]) -> Output {
        run_testbed(env!("CARGO_BIN_EXE_testbed").as_ref(), &self.state_dir, args)
    }

    fn up(&self, topology: &Path) -> Output {
        self.testbed(&["up", topology.to_str().expect("utf-8 path")])
    }

    /// A JSON document from the agent on `node` (`GET` or, with a body, `POST` of `path`).
    fn agent(&self, node: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let url = format!("http://127.0.0.1:7070{path}");
        let mut cmd = vec!["exec", "--lab", &self.lab, node, "--", "busybox", "wget", "-q", "-O-"];
        let body = body.map(Value::to_string);
        if let Some(b) = &body {
            cmd.extend(["--header", "Content-Type: application/json", "--post-data", b]);
        }
        cmd.push(&url);
        let out = self.testbed(&cmd);
        if !out.status.success() {
            return Err(show(&format!("{node} {path}"), &out));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{node} {path}: {e}: {}", show("agent", &out)))
    }

    fn node_status(&self, node: &str) -> Value {
        self.agent(node, "/v1/node", None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn file(&self, name: &str) -> Value {
        let path = self.state_dir.join(&self.lab).join(name);
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .expect("JSON")
    }
}

/// The default topology as lab `lab` on `backend`, and the same with a third node running the pod `probe`.
fn topologies(dir: &Path, lab: &str, backend: &str) -> (PathBuf, PathBuf) {
    let two = topology_copy(dir, "default.yaml", lab);
    let text = std::fs::read_to_string(&two).expect("read").replace("backend: vxlan", &format!("backend: {backend}"));
    std::fs::write(&two, &text).expect("write");
    let probe = "  - name: probe\n    node: node3\n    containers:\n      - name: httpd\n        command: [sh, -c, \
                 \"mkdir -p /tmp/probe && echo probe > /tmp/probe/index.html && exec busybox httpd -f -p 8080 -h \
                 /tmp/probe\"]\n";
    let three =
        text.replace("  node2: {}\n", "  node2: {}\n  node3: {}\n").replace("pods:\n", &format!("pods:\n{probe}"));
    assert_ne!(three, text);
    let path = dir.join(format!("{lab}-3.yaml"));
    std::fs::write(&path, three).expect("write");
    (two, path)
}

/// Whether process `pid` runs (a zombie does not: a daemonized QEMU's parent may reap it late).
fn runs(pid: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    stat.rfind(')').is_some_and(|i| stat[i + 1..].split_whitespace().next() != Some("Z"))
}

fn vm_pid(state: &Value, node: &str) -> u64 {
    state["nodes"][node]["pid"].as_u64().unwrap_or_else(|| panic!("no pid of {node}: {state}"))
}

fn grow_and_shrink(backend: &str) {
    if !can_run_vms() {
        return;
    }
    ensure_agent();
    let tmp = tempfile::tempdir().expect("tempdir");
    let lab = format!("gr-grow-{}", backend.replace('-', ""));
    let t = GrowLab { state_dir: tmp.path().join("state"), lab: lab.clone() };
    let _guard =
        LabGuard { binary: env!("CARGO_BIN_EXE_testbed").into(), state_dir: t.state_dir.clone(), lab: lab.clone() };
    let (two, three) = topologies(tmp.path(), &lab, backend);
    let started = Instant::now();

    let up = t.up(&two);
    assert!(up.status.success(), "{}", show("up of 2 nodes", &up));
    eprintln!("[{backend}] up of 2 nodes: {:.1} s", started.elapsed().as_secs_f64());
    let before = t.file("state.json");
    let puts: Vec<u64> =
        ["node1", "node2"].iter().map(|n| t.node_status(n)["node_puts"].as_u64().expect("node_puts")).collect();
    assert!(puts.iter().all(|p| *p >= 1), "the first up applies every node: {puts:?}");

    // One more node.
    let grow = Instant::now();
    let up = t.up(&three);
    assert!(up.status.success(), "{}", show("up of 3 nodes", &up));
    let grow_secs = grow.elapsed().as_secs_f64();
    let after = t.file("state.json");
    for node in ["node1", "node2"] {
        assert_eq!(vm_pid(&after, node), vm_pid(&before, node), "{node}'s VM was replaced");
    }
    let plan = t.file("plan.json");
    let node3 = plan["nodes"].as_array().into_iter().flatten().find(|n| n["name"] == "node3").expect("node3 planned");
    let subnet = node3["pod_subnet"].as_str().expect("pod_subnet").to_string();
    let tap = node3["nics"][0]["tap"].as_str().expect("tap").to_string();
    let api_node = t.testbed(&["get", "node/node3", "--lab", &lab, "-o", "json"]);
    assert!(api_node.status.success(), "{}", show("get node/node3", &api_node));
    let api_node: Value = serde_json::from_slice(&api_node.stdout).expect("Node JSON");
    assert_eq!(api_node["spec"]["podCIDR"], subnet.as_str(), "node3's lease: {api_node}");

    // A pod on node1 reaches node3's pod; node1 learnt the route from the API only.
    let probe_ip = t.node_status("node3")["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "probe")
        .and_then(|p| p["ip"].as_str().map(str::to_string))
        .expect("probe's IP");
    // The conformance suite's HTTP probe, through a shell as there (busybox's wget run directly by the exec
    // was killed by SIGSEGV in the guest).
    let probe = format!("timeout 5 busybox wget -q -O- http://{probe_ip}:8080/");
    let exec = json!({"command": ["sh", "-c", probe], "timeout_secs": 10});
    let reach_started = Instant::now();
    let mut last = String::new();
    let reached = loop {
        match t.agent("node1", "/v1/pods/web/exec", Some(&exec)) {
            Ok(r) if r["stdout"].as_str().is_some_and(|s| s.contains("probe")) => break true,
            Ok(r) => last = r.to_string(),
            Err(e) => last = e,
        }
        if reach_started.elapsed() > REACH_WITHIN {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let routes = t.node_status("node1")["network"]["routes"].clone();
    assert!(reached, "web on node1 never reached probe {probe_ip} on node3: {last}\nnode1's routes: {routes}");
    eprintln!(
        "[{backend}] up adding node3: {grow_secs:.1} s; web on node1 reached probe on node3 {:.1} s after it returned",
        reach_started.elapsed().as_secs_f64()
    );
    for (node, first) in ["node1", "node2"].iter().zip(&puts) {
        assert_eq!(t.node_status(node)["node_puts"].as_u64(), Some(*first), "the CLI applied {node} again");
    }

    // node3 goes again.
    let shrink = Instant::now();
    let up = t.up(&two);
    assert!(up.status.success(), "{}", show("up without node3", &up));
    eprintln!("[{backend}] up removing node3: {:.1} s", shrink.elapsed().as_secs_f64());
    let state = t.file("state.json");
    assert!(state["nodes"].get("node3").is_none(), "node3 still recorded: {state}");
    let node3_pid = vm_pid(&after, "node3");
    assert!(!runs(node3_pid), "node3's VM (pid {node3_pid}) still runs");
    let links = Command::new("ip").args(["-n", &format!("tb-{lab}"), "-br", "link"]).output().expect("ip link");
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&tap), "node3's tap {tap} remains");
    assert!(!t.state_dir.join(&lab).join("nodes/node3").exists(), "node3's directory remains");
    let forget = Instant::now();
    let routes = loop {
        let routes = t.node_status("node1")["network"]["routes"].to_string();
        if !routes.contains(&subnet) || forget.elapsed() > FORGET_WITHIN {
            break routes;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(!routes.contains(&subnet), "node1 still routes node3's subnet {subnet}: {routes}");
    for (node, first) in ["node1", "node2"].iter().zip(&puts) {
        assert_eq!(t.node_status(node)["node_puts"].as_u64(), Some(*first), "the CLI applied {node} again");
    }
    eprintln!("[{backend}] whole test: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn a_node_joins_and_leaves_a_running_vxlan_lab() {
    grow_and_shrink("vxlan");
}

#[test]
fn a_node_joins_and_leaves_a_running_host_gw_lab() {
    grow_and_shrink("host-gw");
}

#[test]
fn a_node_joins_and_leaves_a_running_udp_lab() {
    grow_and_shrink("udp");
}
