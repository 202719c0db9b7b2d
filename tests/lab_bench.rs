//! The control plane's figures on a real lab, for docs/benchmarks.md. Ignored: run on purpose, as root, with
//! QEMU and kubectl (each test ups a lab of its own under a test-only name and removes it):
//!
//!   cargo test -p testbed --test lab_bench -- --ignored --nocapture --test-threads=1
//!
//! All times are taken on the host: a create is timed from kubectl's `created` line (printed once the API
//! server has answered), a pod's Running from the watch line that first shows it Running with an IP, and a
//! kernel change from the end of a `testbed exec` poll loop on the node (so that figure is an upper bound: it
//! holds the loop's period, about 20-40 ms under TCG, and the SSH exec's end).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed_test_support::kubectl::Kubectl;
use testbed_test_support::lab::{show, topology_copy, LabGuard};

struct Lab {
    state_dir: PathBuf,
    name: String,
    kubectl: Kubectl,
    _guard: LabGuard,
    _tmp: tempfile::TempDir,
}

impl Lab {
    /// `up` of the bundled `topology` as lab `name`, with `edit` applied to its text.
    fn up(topology: &str, name: &str, edit: impl Fn(String) -> String) -> Lab {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state_dir = tmp.path().join("state");
        let path = topology_copy(tmp.path(), topology, name);
        std::fs::write(&path, edit(std::fs::read_to_string(&path).expect("topology"))).expect("topology");
        let guard =
            LabGuard { binary: env!("CARGO_BIN_EXE_testbed").into(), state_dir: state_dir.clone(), lab: name.into() };
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_testbed"))
            .env("TESTBED_STATE_DIR", &state_dir)
            .args(["up", "-q"])
            .arg(&path)
            .output()
            .expect("up");
        assert!(out.status.success(), "{}", show("up", &out));
        println!("up of {name}: {:.1} s", started.elapsed().as_secs_f64());
        let kubectl = Kubectl::new(&state_dir.join(name).join("kubeconfig"), &tmp.path().join("kube-cache"));
        Lab { state_dir, name: name.into(), kubectl, _guard: guard, _tmp: tmp }
    }

    fn exec_command(&self, node: &str, script: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_testbed"));
        c.env("TESTBED_STATE_DIR", &self.state_dir).args(["exec", "--lab", &self.name, node, "--", script]);
        c
    }

    fn exec(&self, node: &str, script: &str) -> Output {
        self.exec_command(node, script).output().expect("exec")
    }
}

/// The `p`th percentile of `samples` (nearest rank), in the samples' unit.
fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(what: &str, ms: &[f64]) {
    println!(
        "{what}: n={} p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms.len(),
        percentile(ms, 50.0),
        percentile(ms, 99.0),
        percentile(ms, 100.0)
    );
}

/// Each line of `child`'s stdout with the instant the test read it.
fn timed_lines(child: &mut Child) -> mpsc::Receiver<(Instant, String)> {
    let lines = BufReader::new(child.stdout.take().expect("stdout piped"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// `kubectl create -f -` of `yaml`, its stdout read line by line: when each `KIND/NAME created` arrived.
fn create_timed(lab: &Lab, yaml: &str) -> HashMap<String, Instant> {
    let mut child = lab
        .kubectl
        .command()
        .args(["create", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kubectl create");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(yaml.as_bytes()).expect("kubectl stdin");
    drop(stdin);
    let created = timed_lines(&mut child)
        .iter()
        .filter_map(|(at, line)| {
            let name = line.strip_suffix(" created")?.split_once('/')?.1.to_string();
            Some((name, at))
        })
        .collect();
    assert!(child.wait().expect("kubectl create").success(), "kubectl create failed");
    created
}

/// A pod running `sleep infinity`, labelled `bench=<set>`, bound to `node` (or left to the scheduler).
fn pod(name: &str, set: &str, node: Option<&str>) -> String {
    let node = node.map(|n| format!("  nodeName: {n}\n")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{bench: {set}}}}}\nspec:\n{node}  containers:\n  - {{name: c, command: [sleep, infinity]}}\n---\n"
    )
}

/// Watches the pods of `bench=<set>`: when each was first seen Running with an IP, and on which node.
struct RunningWatch {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    running: HashMap<String, (Instant, String)>,
}

impl RunningWatch {
    fn start(lab: &Lab, set: &str) -> Self {
        let selector = format!("bench={set}");
        let columns = "custom-columns=N:.metadata.name,P:.status.phase,IP:.status.podIP,NODE:.spec.nodeName";
        let mut child = lab
            .kubectl
            .command()
            .args(["get", "pods", "-l", &selector, "-w", "--no-headers", "-o", columns])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl get -w");
        let lines = timed_lines(&mut child);
        Self { child, lines, running: HashMap::new() }
    }

    /// Reads the watch until `name` is Running (panics after `within`); the instant it was seen.
    fn wait(&mut self, name: &str, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        while !self.running.contains_key(name) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = self.lines.recv_timeout(left).unwrap_or_else(|_| panic!("{name} not Running in time"));
            if let [n, "Running", ip, node] = line.split_whitespace().collect::<Vec<_>>()[..] {
                if ip != "<none>" {
                    self.running.entry(n.to_string()).or_insert((at, node.to_string()));
                }
            }
        }
        self.running[name].0
    }
}

impl Drop for RunningWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Create -> Running (ms) of `count` pods of set `set`: one at a time (each create once the previous pod
/// runs), or all in one `kubectl create` (they queue on the node); the nodes they ran on.
fn pods_to_running(
    lab: &Lab,
    set: &str,
    count: usize,
    node: Option<&str>,
    one_by_one: bool,
) -> (Vec<f64>, BTreeMap<String, usize>) {
    let mut watch = RunningWatch::start(lab, set);
    let names: Vec<String> = (0..count).map(|i| format!("{set}-{i}")).collect();
    let mut created = HashMap::new();
    if one_by_one {
        for name in &names {
            created.extend(create_timed(lab, &pod(name, set, node)));
            watch.wait(name, Duration::from_secs(120));
        }
    } else {
        created = create_timed(lab, &names.iter().map(|n| pod(n, set, node)).collect::<String>());
    }
    let ms = names
        .iter()
        .map(|n| watch.wait(n, Duration::from_secs(600)).saturating_duration_since(created[n]).as_secs_f64() * 1e3)
        .collect();
    let mut per_node = BTreeMap::new();
    for (_, node) in watch.running.values() {
        *per_node.entry(node.clone()).or_insert(0) += 1;
    }
    lab.kubectl.ok(&["delete", "pods", "-l", &format!("bench={set}"), "--wait=false"], None);
    (ms, per_node)
}

/// A Node only the API knows, as flannel's subnet lease: its podCIDR and flannel's annotations (vxlan).
fn virtual_node(i: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: virt-{i}\n  annotations:\n    flannel.alpha.coreos.com/public-ip: 192.168.50.{}\n    flannel.alpha.coreos.com/backend-type: vxlan\n    flannel.alpha.coreos.com/backend-data: '{{\"VNI\":1,\"VtepMAC\":\"02:00:00:00:01:{i:02x}\"}}'\nspec: {{podCIDR: 10.244.{}.0/24}}\n",
        200 + i,
        200 + i
    )
}

/// Node lease created in the API -> its route through flannel.1 on every node of `nodes` (ms, one sample
/// per node and lease); samples whose poll loop had not started before the route came are left out.
fn lease_to_routes(lab: &Lab, nodes: &[&str], count: usize) -> Vec<f64> {
    let mut ms = Vec::new();
    for i in 0..count {
        let cidr = format!("10.244.{}.0/24", 200 + i);
        let poll = format!(
            "n=0; while ! ip route show {cidr} | grep -q flannel.1; do n=$((n+1)); [ $n -lt 3000 ] || exit 1; sleep 0.01; done; echo $n"
        );
        let mut pollers: Vec<Child> =
            nodes.iter().map(|n| lab.exec_command(n, &poll).stdout(Stdio::piped()).spawn().expect("exec")).collect();
        // `testbed exec` returns its output at the end, so the loops cannot say they have started: give the SSH
        // sessions time, and drop a sample whose loop found the route on its first look.
        std::thread::sleep(Duration::from_secs(3));
        let created = create_timed(lab, &virtual_node(i))[&format!("virt-{i}")];
        let mut ended: Vec<Option<Instant>> = vec![None; pollers.len()];
        let deadline = Instant::now() + Duration::from_secs(60);
        while ended.iter().any(Option::is_none) {
            assert!(Instant::now() < deadline, "lease {i}: a node never showed the route");
            for (p, end) in pollers.iter_mut().zip(ended.iter_mut()) {
                if end.is_none() && p.try_wait().expect("try_wait").is_some() {
                    *end = Some(Instant::now());
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for (node, (p, end)) in nodes.iter().zip(pollers.into_iter().zip(ended)) {
            let out = p.wait_with_output().expect("poller");
            let looks: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
            assert!(out.status.success(), "lease {i}: {node}: the poll loop failed");
            if looks == 0 {
                println!("lease {i}: {node}: the loop started after the route came; sample left out");
                continue;
            }
            let sample = end.expect("ended").saturating_duration_since(created).as_secs_f64() * 1e3;
            println!("lease {i}: {node}: {sample:.0} ms ({looks} looks)");
            ms.push(sample);
        }
    }
    ms
}

const ROLLING: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: roll}
spec:
  replicas: 20
  selector: {matchLabels: {app: roll}}
  template:
    metadata: {labels: {app: roll}}
    spec:
      containers:
      - {name: c, command: [sleep, infinity], env: [{name: V, value: '1'}]}
";

/// The Deployment `roll` of 20 replicas (default strategy: maxSurge 5, maxUnavailable 5) rolled to a new
/// template: seconds to done, and the most pods and fewest Ready pods a watch saw meanwhile.
fn rolling_update(lab: &Lab) -> (f64, usize, usize) {
    create_timed(lab, ROLLING);
    lab.kubectl.ok(&["rollout", "status", "deployment/roll", "--timeout=900s"], None);
    let mut child = lab
        .kubectl
        .command()
        .args(["get", "pods", "-l", "app=roll", "-w", "--output-watch-events", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for event in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>().map_while(Result::ok) {
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    let mut pods: HashMap<String, bool> = HashMap::new();
    let apply = |event: Value, pods: &mut HashMap<String, bool>| {
        let name = event["object"]["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if event["type"] == "DELETED" {
            pods.remove(&name);
        } else {
            let conditions = event["object"]["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let ready = conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
            pods.insert(name, ready);
        }
    };
    while pods.values().filter(|r| **r).count() < 20 {
        apply(rx.recv_timeout(Duration::from_secs(60)).expect("the watch lists the pods"), &mut pods);
    }
    let started = Instant::now();
    lab.kubectl.ok(
        &[
            "patch",
            "deployment",
            "roll",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/template/spec/containers/0/env/0/value","value":"2"}]"#,
        ],
        None,
    );
    let mut status = lab
        .kubectl
        .command()
        .args(["rollout", "status", "deployment/roll", "--timeout=900s"])
        .stdout(Stdio::null())
        .spawn()
        .expect("rollout status");
    let (mut most, mut fewest_ready) = (pods.len(), 20);
    let seconds = loop {
        while let Ok(event) = rx.recv_timeout(Duration::from_millis(50)) {
            apply(event, &mut pods);
            most = most.max(pods.len());
            fewest_ready = fewest_ready.min(pods.values().filter(|r| **r).count());
        }
        if let Some(done) = status.try_wait().expect("rollout status") {
            assert!(done.success(), "kubectl rollout status failed");
            break started.elapsed().as_secs_f64();
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    lab.kubectl.ok(&["delete", "deployment", "roll"], None);
    (seconds, most, fewest_ready)
}

/// RSS and PSS (kB) of etcd and the API server on `node`.
fn control_plane_memory(lab: &Lab, node: &str) -> String {
    let script = "for s in etcd apiserver; do p=$(cat /run/testbed-$s.pid); \
                  echo \"$s $(awk '/^(Rss|Pss):/ {printf \"%s %s kB  \", $1, $2}' /proc/$p/smaps_rollup)\"; done";
    let out = lab.exec(node, script);
    assert!(out.status.success(), "{}", show("memory", &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The default lab: 20 Node leases created one at a time, each timed to its route on both nodes.
#[test]
#[ignore = "a benchmark: run on purpose with --ignored --nocapture"]
fn default_lab_lease_to_routes() {
    let lab = Lab::up("default.yaml", "bench-lease", |t| t);
    summary("lease -> route on node1 and node2", &lease_to_routes(&lab, &["node1", "node2"], 20));
}

/// The default lab (2 nodes, TCG when KVM does not work here): create -> Running on node2
/// (one by one and in a burst), a 20-replica rolling update, and the control plane's memory with 1,000
/// pods' objects stored.
#[test]
#[ignore = "a benchmark: run on purpose with --ignored --nocapture"]
fn default_lab_control_plane_figures() {
    let lab = Lab::up("default.yaml", "bench-cp", |t| t);
    let (ms, _) = pods_to_running(&lab, "one", 100, Some("node2"), true);
    summary("create -> Running on node2, one by one", &ms);
    let (ms, _) = pods_to_running(&lab, "burst", 100, Some("node2"), false);
    summary("create -> Running on node2, 100 in one kubectl create", &ms);
    let (seconds, most, fewest) = rolling_update(&lab);
    println!(
        "rolling update of 20 (bounds 25 pods, 15 Ready): {seconds:.1} s, most pods {most}, fewest Ready {fewest}"
    );

    println!("before 1,000 pods: {}", control_plane_memory(&lab, "node1"));
    // Pending pods no scheduler picks (schedulerName none): objects only, nothing runs them.
    let many: String = (0..1000)
        .map(|i| pod(&format!("mem-{i}"), "mem", None).replace("  containers:", "  schedulerName: none\n  containers:"))
        .collect();
    let started = Instant::now();
    assert_eq!(create_timed(&lab, &many).len(), 1000);
    println!("1,000 creates through kubectl: {:.1} s", started.elapsed().as_secs_f64());
    println!("with 1,000 pods: {}", control_plane_memory(&lab, "node1"));
}

/// Three nodes (the default lab with a third): 10 pods left to the scheduler, create -> Running, and where
/// they ran.
#[test]
#[ignore = "a benchmark: run on purpose with --ignored --nocapture"]
fn three_nodes_create_to_running() {
    let lab = Lab::up("default.yaml", "bench-cp3", |t| t.replace("  node2: {}\n", "  node2: {}\n  node3: {}\n"));
    let (ms, per_node) = pods_to_running(&lab, "spread", 10, None, false);
    summary("create -> Running, 10 pods in one kubectl create, scheduled over 3 nodes", &ms);
    println!("pods per node: {per_node:?}");
    let (ms, per_node) = pods_to_running(&lab, "spread1", 10, None, true);
    summary("create -> Running, 10 pods one by one, scheduled over 3 nodes", &ms);
    println!("pods per node: {per_node:?}");
}
