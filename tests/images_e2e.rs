//! End to end for container images on a VM lab: `up` of a topology whose pod names `image: busybox` builds
//! the image on the host (cached), copies it to the node and has the node's agent import it (every digest
//! checked); the container then sees the image's files and not the node's. An `up` that repairs the lab
//! finds the image in the node's store and copies nothing. `testbed image load` puts the debian-tools image
//! (built on the host from Debian packages) on the node under another name, and an API pod naming it
//! (`imagePullPolicy: Never`) runs in it with Debian's files and the suites' tools, while one naming an
//! image no node has waits with `ErrImageNeverPull`. A node added with a pod whose image has a corrupt
//! layer fails `up` naming the node, the image and its digest (exit 3), and the node is removed again. VM
//! tests need root and qemu-system-x86_64 (skipped otherwise; under CI=true they fail instead). About 150 s
//! under TCG.
//!
//! The agent: `$TESTBED_AGENT`, else the static build in target/x86_64-unknown-linux-gnu (built if missing).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::{json, Value};
use testbed_test_support::host::can_run_vms;
use testbed_test_support::lab::{ensure_agent, run_testbed, show, LabGuard};

/// The busybox image's whole /etc/passwd (cli/src/image/oci.rs); the node's has many more users.
const IMAGE_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n";

struct ImageLab {
    state_dir: PathBuf,
    lab: String,
}

impl ImageLab {
    fn testbed(&self, args: &[&str]) -> Output {
        run_testbed(env!("CARGO_BIN_EXE_testbed").as_ref(), &self.state_dir, args)
    }

    /// `up -o json` of `topology`; its outcome when it succeeded.
    fn up(&self, topology: &Path) -> (Output, Value) {
        let out = self.testbed(&["up", topology.to_str().expect("utf-8 path"), "-o", "json"]);
        let outcome = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out, outcome)
    }

    /// `testbed exec` of `script` on `node`, which must succeed; its stdout.
    fn exec(&self, node: &str, script: &str) -> String {
        let out = self.testbed(&["exec", "--lab", &self.lab, node, "--", "sh", "-c", script]);
        assert!(out.status.success(), "{}", show(&format!("exec on {node}"), &out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `POST /v1/pods/{pod}/exec` on `node`'s agent: `script` in container `container`.
    fn pod_exec(&self, node: &str, pod: &str, container: &str, script: &str) -> Value {
        let body = json!({"container": container, "command": ["sh", "-c", script], "timeout_secs": 20}).to_string();
        let url = format!("http://127.0.0.1:7070/v1/pods/{pod}/exec");
        let out = self.testbed(&[
            "exec",
            "--lab",
            &self.lab,
            node,
            "--",
            "busybox",
            "wget",
            "-q",
            "-O-",
            "--header",
            "Content-Type: application/json",
            "--post-data",
            &body,
            &url,
        ]);
        assert!(out.status.success(), "{}", show(&format!("exec in {pod}/{container}"), &out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show("pod exec", &out)))
    }
}

/// Seconds `up` spent in stage `stage` on `node` (None: the stage did not run there).
fn stage_seconds(outcome: &Value, node: &str, stage: &str) -> Option<f64> {
    let nodes = outcome["nodes"].as_array()?;
    let n = nodes.iter().find(|n| n["name"] == node)?;
    n["stage_seconds"].as_array()?.iter().find(|s| s[0] == stage).and_then(|s| s[1].as_f64())
}

fn topology(lab: &str, extra_node: Option<&str>) -> String {
    let mut text = format!(
        "name: {lab}\nnodes:\n  node1: {{}}\n{}networks:\n  underlay: {{cidr: 192.168.57.0/24}}\npods:\n  \
         - name: img\n    node: node1\n    containers:\n      - {{name: c, image: busybox, command: [sleep, '100000']}}\n",
        if extra_node.is_some() { "  node2: {}\n" } else { "" }
    );
    if let Some(image) = extra_node {
        text += &format!("  - name: bad\n    node: node2\n    containers:\n      - {{name: c, image: {image}}}\n");
    }
    text
}

/// The cached busybox oci-archive with one byte of its layer blob changed: its index and manifest still name
/// the layer's true digest, so only a check of the layer's bytes catches it.
fn corrupt_busybox(dir: &Path) -> (PathBuf, String) {
    let list =
        Command::new(env!("CARGO_BIN_EXE_testbed")).args(["image", "oci", "build", "busybox", "-o", "json"]).output();
    let list = list.expect("run testbed image oci build");
    assert!(list.status.success(), "{}", show("image oci build busybox", &list));
    let built: Value = serde_json::from_slice(&list.stdout).expect("JSON");
    let built = &built[0];
    let layout = PathBuf::from(built["layout"].as_str().expect("layout"));
    let copy = dir.join("bad-layout");
    let cp = Command::new("cp").arg("-r").arg(&layout).arg(&copy).status().expect("cp");
    assert!(cp.success());
    let manifest_digest = built["digest"].as_str().expect("digest").to_string();
    let manifest_path = copy.join("blobs/sha256").join(manifest_digest.trim_start_matches("sha256:"));
    let manifest: Value = serde_json::from_slice(&std::fs::read(&manifest_path).expect("manifest")).expect("JSON");
    let layer = manifest["layers"][0]["digest"].as_str().expect("layer digest").to_string();
    let layer_path = copy.join("blobs/sha256").join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&layer_path).expect("layer");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&layer_path, bytes).expect("write layer");
    (copy, layer)
}

/// The pod named `name` of `testbed get pods -o json`, once `done` holds for it (None after 90 s).
fn wait_for_pod(t: &ImageLab, name: &str, done: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + std::time::Duration::from_secs(90);
    while Instant::now() < deadline {
        let out = t.testbed(&["get", "pods", "--lab", &t.lab, "-o", "json"]);
        let pods: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        if let Some(pod) = items.into_iter().find(|p| p["metadata"]["name"] == name).filter(|p| done(p)) {
            return Some(pod);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    None
}

/// What the debian-tools image must show inside a container: Debian 12's own files without the node's apt,
/// each tool the suites run, ip and ping on the pod's network (its own address, its gateway on the node's
/// bridge), busybox's httpd serving what its wget fetches. `$1`: the pod's IP as the control plane has it.
const DEBIAN_TOOLS_CHECK: &str = r#"set -e
grep -qx 'VERSION_ID="12"' /etc/os-release; echo debian-12
[ ! -e /usr/bin/apt ] && echo no-apt
iperf3 --version | head -n 1; socat -V | grep -m1 'socat version'; ip -V; ping -V; ps --version
ip -4 -o addr show eth0 | grep -qw "$1" && echo own-ip
gateway=$(ip -4 route show default | cut -d ' ' -f 3)
ping -c 1 -W 5 "$gateway" >/dev/null && echo ping-ok
mkdir -p /tmp/www && echo hi > /tmp/www/index.html && busybox httpd -p 127.0.0.1:8080 -h /tmp/www
for i in 1 2 3 4 5; do busybox wget -q -O - http://127.0.0.1:8080/ 2>/dev/null && break; sleep 1; done"#;

/// `testbed image load debian-tools` (built on the host from Debian packages) under a name of its own; an API
/// pod naming it with `imagePullPolicy: Never` runs in it and has the suites' tools, one naming a name no
/// node has waits with `ErrImageNeverPull`.
fn load_and_run_by_name(t: &ImageLab, dir: &Path) {
    let started = Instant::now();
    let out = t.testbed(&[
        "image",
        "load",
        "debian-tools",
        "--lab",
        &t.lab,
        "--name",
        "registry.local/tools:v1",
        "-o",
        "json",
    ]);
    eprintln!("image load debian-tools: {:.1} s", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "{}", show("image load", &out));
    let loaded: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names = loaded[0]["names"].as_array().cloned().unwrap_or_default();
    assert!(names.contains(&json!("registry.local/tools:v1")), "{loaded}");
    let bad = t.testbed(&["image", "load", "./nowhere", "--lab", &t.lab]);
    assert_eq!(bad.status.code(), Some(2), "{}", show("image load of nothing", &bad));

    let pods = dir.join("named.yaml");
    let pod = |name: &str, image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - {{name: c, image: \
             {image}, imagePullPolicy: Never, command: [sleep, '100000']}}\n"
        )
    };
    let yaml = format!("{}---\n{}", pod("named", "registry.local/tools:v1"), pod("absent", "registry.invalid/none:1"));
    std::fs::write(&pods, yaml).expect("write");
    let out = t.testbed(&["apply", "-f", pods.to_str().expect("utf-8"), "--lab", &t.lab]);
    assert!(out.status.success(), "{}", show("apply", &out));
    let running = wait_for_pod(t, "named", |p| p["status"]["phase"] == "Running");
    assert!(running.is_some(), "the pod naming a loaded image is not Running after 90 s");
    let named = wait_for_pod(t, "named", |p| p["status"]["podIP"].is_string()).expect("a pod IP");
    let ip = named["status"]["podIP"].as_str().expect("podIP");
    let out =
        t.testbed(&["exec", "--lab", &t.lab, "--pod", "named", "--", "bash", "-c", DEBIAN_TOOLS_CHECK, "check", ip]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", show("the debian-tools check in named", &out));
    for part in ["debian-12", "no-apt", "iperf 3.", "socat version 1.7", "iproute2", "iputils", "procps-ng"] {
        assert!(stdout.contains(part), "`{part}` missing: {}", show("the debian-tools check", &out));
    }
    for part in ["own-ip", "ping-ok", "\nhi\n"] {
        assert!(stdout.contains(part), "`{part}` missing: {}", show("the debian-tools check", &out));
    }
    let waiting = |p: &Value| p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImageNeverPull";
    let absent = wait_for_pod(t, "absent", waiting);
    assert!(absent.as_ref().is_some_and(|p| p["status"]["phase"] == "Pending"), "{absent:?}");
    let out = t.testbed(&["delete", "-f", pods.to_str().expect("utf-8"), "--lab", &t.lab]);
    assert!(out.status.success(), "{}", show("delete", &out));
}

#[test]
fn a_busybox_container_gets_its_image_once_and_a_corrupt_one_fails_up() {
    if !can_run_vms() {
        return;
    }
    ensure_agent();
    let tmp = tempfile::tempdir().expect("tempdir");
    let lab = "im-images".to_string();
    let t = ImageLab { state_dir: tmp.path().join("state"), lab: lab.clone() };
    let _guard =
        LabGuard { binary: env!("CARGO_BIN_EXE_testbed").into(), state_dir: t.state_dir.clone(), lab: lab.clone() };
    let one = tmp.path().join("one.yaml");
    std::fs::write(&one, topology(&lab, None)).expect("write");

    let started = Instant::now();
    let (out, outcome) = t.up(&one);
    assert!(out.status.success(), "{}", show("up", &out));
    let cold = stage_seconds(&outcome, "node1", "images").expect("an images stage on node1");
    eprintln!("up: {:.1} s, of which images (cold): {cold:.1} s", started.elapsed().as_secs_f64());

    // The container sees its image's files, not the node's.
    let passwd = t.pod_exec("node1", "img", "c", "cat /etc/passwd; [ -e /usr/bin/apt ] && echo node-file");
    assert_eq!(passwd["exit_code"], 1, "the node's /usr/bin/apt is absent: {passwd}");
    assert_eq!(passwd["stdout"], IMAGE_PASSWD, "{passwd}");
    let store = t.exec("node1", "ls /var/lib/testbed-agent/images/images/");
    assert_eq!(store.lines().count(), 1, "one image in node1's store: {store}");
    let stamp = || t.exec("node1", "stat -c %Y /var/lib/testbed-agent/images/images/*.json");
    let imported_at = stamp();

    // A repairing `up` (node1 recorded as not Ready: its VM is reused) copies nothing.
    let state_path = t.state_dir.join(&lab).join("state.json");
    let state = std::fs::read_to_string(&state_path).expect("state.json");
    let mut state_json: Value = serde_json::from_str(&state).expect("JSON");
    state_json["nodes"]["node1"]["stage"] = json!("pods");
    std::fs::write(&state_path, state_json.to_string()).expect("write state.json");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (out, outcome) = t.up(&one);
    assert!(out.status.success(), "{}", show("repairing up", &out));
    let warm = stage_seconds(&outcome, "node1", "images").expect("an images stage on node1");
    eprintln!("repairing up: images (warm): {warm:.1} s");
    assert_eq!(stamp(), imported_at, "the image was imported again");

    load_and_run_by_name(&t, tmp.path());

    // A node added with a corrupt image: up fails naming node, image and digest, and node2 goes again.
    let (bad, layer) = corrupt_busybox(tmp.path());
    let two = tmp.path().join("two.yaml");
    std::fs::write(&two, topology(&lab, Some(bad.to_str().expect("utf-8")))).expect("write");
    let (out, _) = t.up(&two);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{}", show("up with a corrupt image", &out));
    for part in ["node node2: images:", &bad.display().to_string(), &layer, "nothing of it was stored"] {
        assert!(stderr.contains(part), "`{part}` missing: {}", show("up with a corrupt image", &out));
    }
    let state: Value = serde_json::from_slice(&std::fs::read(&state_path).expect("state.json")).expect("JSON");
    assert!(state["nodes"].get("node2").is_none(), "node2 still recorded: {state}");
    assert!(!t.state_dir.join(&lab).join("nodes/node2").exists(), "node2's directory remains");
    eprintln!("whole test: {:.1} s", started.elapsed().as_secs_f64());
}
