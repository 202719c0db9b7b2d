//! The real thing: a real etcd (Debian's `etcd-server`) on loopback, the API server over it, and the real
//! kubectl driving it with a generated kubeconfig. Every step checks what kubectl printed or what the
//! server then holds. `cargo test --features fault-ignore-resource-version` shows the stale-replace check
//! failing against a server that ignores resourceVersion.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed_control_plane::store::etcd::Etcd;
use testbed_control_plane::store::Store;

mod common;

use common::{server_config, start_etcd, wait_for_etcd, Killed};

struct Lab {
    _dir: tempfile::TempDir,
    root: PathBuf,
    kubeconfig: PathBuf,
    etcd: Etcd,
    rt: tokio::runtime::Runtime,
    _etcd_process: Killed,
}

impl Lab {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let (etcd_process, etcd_url) = start_etcd(&root);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        let etcd = Etcd::new(std::slice::from_ref(&etcd_url), None).expect("etcd client");
        wait_for_etcd(&rt, &etcd, &root);
        let (config, creds, port) = server_config(etcd_url);
        rt.spawn(async move {
            if let Err(e) = testbed_control_plane::serve(config, std::future::pending()).await {
                panic!("apiserver: {e}");
            }
        });
        let server = format!("https://127.0.0.1:{port}");
        let kubeconfig = root.join("kubeconfig");
        std::fs::write(&kubeconfig, testbed_control_plane::kubeconfig("lab", &server, &creds.ca_pem, &creds.token))
            .expect("kubeconfig");
        let wrong = testbed_control_plane::kubeconfig("lab", &server, &creds.ca_pem, "not-the-token");
        std::fs::write(root.join("wrong-kubeconfig"), wrong).expect("kubeconfig");
        let lab = Self { _dir: dir, root, kubeconfig, etcd, rt, _etcd_process: etcd_process };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !lab.kubectl(&["get", "--raw", "/api"]).status.success() {
            assert!(Instant::now() < deadline, "the API server did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        lab
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        // HOME: kubectl's discovery cache goes to the test's directory, not the user's.
        cmd.args(args).env("KUBECONFIG", &self.kubeconfig).env("HOME", &self.root);
        cmd
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("kubectl must be installed")
    }

    /// kubectl that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl that must fail; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(!out.status.success(), "kubectl {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.root.join(name);
        std::fs::write(&path, text).expect("write");
        path.to_string_lossy().into_owned()
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// (type, name) of every watch event in a stream of JSON objects.
fn events(text: &str) -> Vec<(String, String)> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|v| {
            let v = v.expect("watch event JSON");
            let kind = v["type"].as_str().unwrap_or("?").to_string();
            (kind, v["object"]["metadata"]["name"].as_str().unwrap_or("?").to_string())
        })
        .collect()
}

fn pod(name: &str, container: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  containers:\n  - {container}\n"
    )
}

/// `kubectl get pods -w` in the background, its output collected as it comes.
fn watch_in_background(lab: &Lab) -> (Killed, Arc<Mutex<String>>) {
    let mut child = lab
        .command(&["get", "pods", "-w", "--output-watch-events", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl");
    let mut stdout = child.stdout.take().expect("stdout");
    let buf = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&buf);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().expect("lock").push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    (Killed(child), buf)
}

fn wait_for(buf: &Mutex<String>, what: impl Fn(&[(String, String)]) -> bool) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = events(&buf.lock().expect("lock"));
        if what(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "the watch saw only {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pair(kind: &str, name: &str) -> (String, String) {
    (kind.to_string(), name.to_string())
}

#[test]
fn kubectl_against_real_etcd() {
    let lab = Lab::start();

    // Credentials are checked: a wrong token gets nothing.
    let denied = lab
        .command(&["get", "pods", "--kubeconfig", &lab.root.join("wrong-kubeconfig").to_string_lossy()])
        .output()
        .expect("kubectl");
    assert!(!denied.status.success(), "a wrong token was accepted");

    // Discovery and an empty list, then a node registered through the API.
    let nodes = lab.kubectl(&["get", "nodes"]);
    assert!(nodes.status.success() && String::from_utf8_lossy(&nodes.stderr).contains("No resources found"));
    let node =
        lab.write("node.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\nspec: {podCIDR: 10.244.1.0/24}\n");
    lab.ok(&["create", "-f", &node]);
    assert!(lab.ok(&["get", "nodes"]).contains("node1"));

    let start = json(&lab.ok(&["get", "--raw", "/api/v1/namespaces/default/pods"]));
    let start_rv = start["metadata"]["resourceVersion"].as_str().expect("list resourceVersion").to_string();

    // create -f, and the server-set metadata as kubectl reads it back.
    let web = lab.write("web.yaml", &pod("web", "{name: srv, image: busybox, command: [sleep, \"3600\"]}"));
    assert!(lab.ok(&["create", "-f", &web]).contains("pod/web created"));
    let list = json(&lab.ok(&["get", "pods", "-o", "json"]));
    let item = &list["items"][0];
    assert_eq!(item["metadata"]["name"], "web");
    assert_eq!(item["metadata"]["generation"], 1);
    assert_eq!(item["status"]["phase"], "Pending");
    assert!(item["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(item["metadata"]["creationTimestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(item["metadata"]["resourceVersion"].as_str().is_some_and(|rv| rv.parse::<i64>().is_ok()));

    // Validation names the field, and nothing is stored.
    let bad = lab.write("bad.yaml", &pod("bad", "{name: srv, image: busybox}"));
    let err = lab.fails(&["create", "-f", &bad]);
    assert!(err.contains("spec.containers[0].command"), "{err}");
    assert!(lab.fails(&["get", "pod", "bad"]).contains("NotFound"));
    let unknown = lab.write("unknown.yaml", &pod("unk", "{name: srv, command: [sleep], ports: [{containerPort: 80}]}"));
    let err = lab.fails(&["create", "-f", &unknown]);
    assert!(err.contains("unknown field \"spec.containers[0].ports\""), "{err}");

    // kubectl get -w sees every change from here on.
    let (_watcher, seen) = watch_in_background(&lab);
    wait_for(&seen, |ev| ev.contains(&pair("ADDED", "web")));

    // replace -f with the current resourceVersion, then the same (now stale) file again: 409.
    let current = lab.ok(&["get", "pod", "web", "-o", "json"]);
    let edited = lab.write("web-edited.json", &current.replace("\"app\": \"web\"", "\"app\": \"web2\""));
    assert!(lab.ok(&["replace", "-f", &edited]).contains("pod/web replaced"));
    assert_eq!(json(&lab.ok(&["get", "pod", "web", "-o", "json"]))["metadata"]["labels"]["app"], "web2");
    let stale = lab.fails(&["replace", "-f", &edited]);
    assert!(stale.contains("Conflict") && stale.contains("the object has been modified"), "{stale}");

    // A second pod: created, merge-patched, deleted.
    let w2 = lab.write("w2.yaml", &pod("w2", "{name: srv, command: [sleep, \"1\"]}"));
    lab.ok(&["create", "-f", &w2]);
    lab.ok(&["patch", "pod", "w2", "--type=merge", "-p", "{\"metadata\":{\"labels\":{\"tier\":\"x\"}}}"]);
    assert!(lab.ok(&["delete", "pod", "w2"]).contains("pod \"w2\" deleted"));
    let watched = wait_for(&seen, |ev| ev.contains(&pair("DELETED", "w2")));
    for want in [pair("MODIFIED", "web"), pair("ADDED", "w2"), pair("MODIFIED", "w2"), pair("DELETED", "w2")] {
        assert!(watched.contains(&want), "get -w missed {want:?}: {watched:?}");
    }
    lab.ok(&["delete", "pod", "web"]);
    assert!(lab.fails(&["get", "pod", "web"]).contains("NotFound"));

    // A watch resumed from the revision of the first list sees every change after it, in order.
    let path = format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={start_rv}&timeoutSeconds=2");
    let resumed = events(&lab.ok(&["get", "--raw", &path]));
    let expected = [
        ("ADDED", "web"),
        ("MODIFIED", "web"),
        ("ADDED", "w2"),
        ("MODIFIED", "w2"),
        ("DELETED", "w2"),
        ("DELETED", "web"),
    ];
    assert_eq!(resumed, expected.map(|(k, n)| pair(k, n)), "resumed watch");

    // After a compaction, resuming from the old revision is 410 Gone ("too old resource version").
    let (_, now) = lab.rt.block_on(lab.etcd.list("/registry/")).expect("list");
    lab.rt.block_on(lab.etcd.compact(now)).expect("compact");
    let gone = lab.fails(&["get", "--raw", &path]);
    assert!(gone.contains("Expired") && gone.contains("too old resource version"), "{gone}");
}
