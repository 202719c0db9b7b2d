//! `testbed get/apply/delete/describe` against the real thing: a real etcd on loopback, the control plane's
//! API server over it, and the `testbed` binary talking to it through a generated kubeconfig; where kubectl
//! (v1.32, a different client) can read the same objects, its view is compared with testbed's.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed_control_plane::tls::Credentials;
use testbed_test_support::etcd::{free_port, start_etcd, Killed};

struct ControlPlane {
    _dir: tempfile::TempDir,
    root: PathBuf,
    kubeconfig: PathBuf,
    _rt: tokio::runtime::Runtime,
    _etcd: Killed,
}

impl ControlPlane {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let (etcd, etcd_url) = start_etcd(&root);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let creds = Credentials::generate(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]).expect("credentials");
        let port = free_port();
        let config = testbed_control_plane::Config {
            listen: (Ipv4Addr::LOCALHOST, port).into(),
            etcd: vec![etcd_url],
            etcd_tls: None,
            service_cidr: testbed_control_plane::apiserver::DEFAULT_SERVICE_CIDR.parse().expect("cidr"),
            token: creds.token.clone(),
            cert_pem: creds.cert_pem.clone().into_bytes(),
            key_pem: creds.key_pem.clone().into_bytes(),
        };
        // The server bootstraps its namespaces in etcd first, which fails until etcd answers: retry.
        rt.spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Err(e) = testbed_control_plane::serve(config.clone(), std::future::pending()).await {
                assert!(Instant::now() < deadline, "apiserver: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let kubeconfig = root.join("kubeconfig");
        let server = format!("https://127.0.0.1:{port}");
        std::fs::write(&kubeconfig, testbed_control_plane::kubeconfig("lab", &server, &creds.ca_pem, &creds.token))
            .expect("kubeconfig");
        let cp = Self { _dir: dir, root, kubeconfig, _rt: rt, _etcd: etcd };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cp.testbed(&["get", "ns"]).status.success() {
            assert!(Instant::now() < deadline, "the API server did not come up: {}", log(&cp.root.join("etcd.log")));
            std::thread::sleep(Duration::from_millis(200));
        }
        cp
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_testbed"));
        cmd.args(args).arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    fn testbed(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run testbed")
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.root)
            .output()
            .expect("kubectl must be installed")
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.root.join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    }
}

fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

#[track_caller]
fn fails_with(out: Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{}{stderr}", stdout(&out));
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
}

const OBJECTS: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: team-a
  labels: {owner: a}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: lock, namespace: team-a}
spec: {holderIdentity: first, leaseDurationSeconds: 40}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: team-a
  labels: {app: web}
spec:
  nodeName: node2
  terminationGracePeriodSeconds: 0
  containers:
  - {name: srv, command: [sleep, \"3600\"]}
";

#[test]
fn apply_get_describe_and_delete_round_trip_through_the_api() {
    let cp = ControlPlane::start();
    let file = cp.write("objects.yaml", OBJECTS);

    let applied = ok(cp.testbed(&["apply", "-f", &file]));
    assert_eq!(applied, "namespace/team-a created\nlease.coordination.k8s.io/lock created\npod/web created\n");
    let again = ok(cp.testbed(&["apply", "-f", &file]));
    assert_eq!(again, "namespace/team-a unchanged\nlease.coordination.k8s.io/lock unchanged\npod/web unchanged\n");
    let changed = cp.write("changed.yaml", &OBJECTS.replace("holderIdentity: first", "holderIdentity: second"));
    let configured = ok(cp.testbed(&["apply", "-f", &changed]));
    assert_eq!(
        configured,
        "namespace/team-a unchanged\nlease.coordination.k8s.io/lock configured\npod/web unchanged\n"
    );

    // The table, and the same objects as kubectl reads them.
    let table = ok(cp.testbed(&["get", "leases", "-n", "team-a"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("HOLDER"), "{table}");
    assert!(lines[1].starts_with("lock") && lines[1].contains("second"), "{table}");
    let pods: Value = serde_json::from_str(&ok(cp.testbed(&["get", "pods", "-A", "-o", "json"]))).expect("json");
    let kubectl: Value = serde_json::from_str(&ok(cp.kubectl(&["get", "pods", "-A", "-o", "json"]))).expect("json");
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(names(&pods), vec!["web"]);
    assert_eq!(names(&pods), names(&kubectl));
    let wide = ok(cp.testbed(&["get", "pod/web", "-n", "team-a", "-o", "wide"]));
    assert!(wide.lines().nth(1).is_some_and(|l| l.starts_with("web") && l.trim_end().ends_with("node2")), "{wide}");
    let yaml = ok(cp.testbed(&["get", "ns", "team-a", "-o", "yaml"]));
    assert!(yaml.contains("owner: a") && yaml.contains("kind: Namespace"), "{yaml}");
    let described = ok(cp.testbed(&["describe", "pod", "web", "-n", "team-a"]));
    assert!(
        described.contains("Node:") && described.contains("node2") && described.contains("sleep 3600"),
        "{described}"
    );

    // Deleting (at once: grace 0, as no kubelet runs here to finish a graceful deletion), and what is gone
    // is a clear error with exit 2.
    assert_eq!(ok(cp.testbed(&["delete", "pod/web", "-n", "team-a"])), "pod/web deleted\n");
    fails_with(cp.testbed(&["get", "pod", "web", "-n", "team-a"]), 2, "404");
    fails_with(cp.testbed(&["delete", "pod", "web", "-n", "team-a"]), 2, "404");
    assert!(ok(cp.testbed(&["delete", "pod", "web", "-n", "team-a", "--ignore-not-found"])).is_empty());
    let deleted = ok(cp.testbed(&["delete", "-f", &file, "--ignore-not-found"]));
    assert_eq!(
        deleted, "lease.coordination.k8s.io/lock deleted\nnamespace/team-a deleted\n",
        "in reverse order; the pod was already gone"
    );

    // A bound pod with the default grace is only marked: Terminating until its kubelet (none here) ends it.
    let graceful = cp.write(
        "graceful.yaml",
        &OBJECTS[OBJECTS.rfind("---").unwrap_or(0) + 4..]
            .replace("  namespace: team-a\n", "")
            .replace("  terminationGracePeriodSeconds: 0\n", ""),
    );
    ok(cp.testbed(&["apply", "-f", &graceful]));
    assert_eq!(ok(cp.testbed(&["delete", "pod/web"])), "pod/web deleted\n");
    let table = ok(cp.testbed(&["get", "pods"]));
    let row: Vec<&str> = table.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(row.get(..3), Some(&["web", "0/1", "Terminating"][..]), "{table}");
}

const POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    ports:
    - {port: 5432}
";

#[test]
fn network_policies_through_testbed_and_kubectl() {
    let cp = ControlPlane::start();
    let file = cp.write("policy.yaml", POLICY);
    assert_eq!(ok(cp.testbed(&["apply", "-f", &file])), "networkpolicy.networking.k8s.io/db-from-web created\n");
    assert_eq!(ok(cp.testbed(&["apply", "-f", &file])), "networkpolicy.networking.k8s.io/db-from-web unchanged\n");
    let deny = cp.write(
        "deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny}\nspec: {podSelector: {}}\n",
    );
    assert!(ok(cp.kubectl(&["create", "-f", &deny])).contains("networkpolicy.networking.k8s.io/deny created"));

    let table = ok(cp.testbed(&["get", "netpol"]));
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["NAME", "POD-SELECTOR", "AGE"], "{table}");
    assert_eq!((lines[1][0], lines[1][1]), ("db-from-web", "app=db"), "{table}");
    assert_eq!((lines[2][0], lines[2][1]), ("deny", "<none>"), "{table}");
    let kubectl = ok(cp.kubectl(&["get", "networkpolicies"]));
    // kubectl's own columns (NAME, AGE): the server answers no Table format, for any kind.
    assert!(kubectl.contains("db-from-web") && kubectl.contains("deny"), "{kubectl}");
    let described = ok(cp.testbed(&["describe", "netpol", "db-from-web"]));
    for part in ["Allowing ingress traffic:", "To Port: 5432/TCP", "PodSelector: app=web", "Policy Types: Ingress"] {
        assert!(described.contains(part), "`{part}` in:\n{described}");
    }

    let bad = cp.write("bad.yaml", &POLICY.replace("{port: 5432}", "{port: 5432, endPort: 80}"));
    let out = cp.kubectl(&["create", "-f", &bad]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("spec.ingress[0].ports[0].endPort"), "{stderr}");

    assert_eq!(ok(cp.testbed(&["delete", "netpol/deny"])), "networkpolicy.networking.k8s.io/deny deleted\n");
    assert!(ok(cp.kubectl(&["delete", "-f", &file])).contains("deleted"));
    fails_with(cp.testbed(&["get", "netpol", "db-from-web"]), 2, "404");
}

#[test]
fn bad_input_names_the_place_and_exits_2_and_an_unreachable_server_exits_3() {
    let cp = ControlPlane::start();
    let unknown = cp.write("cm.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: d}\n");
    fails_with(
        cp.testbed(&["apply", "-f", &unknown]),
        2,
        "cm.yaml:5: the server doesn't have a resource type `v1 ConfigMap`",
    );
    assert!(!stdout(&cp.testbed(&["get", "ns"])).contains("\nok "), "nothing of a refused file is sent");
    let invalid = cp.write(
        "invalid.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: srv, image: busybox}\n",
    );
    fails_with(cp.testbed(&["apply", "-f", &invalid]), 2, "invalid.yaml:1: pod/p: the server answered 422");
    fails_with(cp.testbed(&["get", "configmaps"]), 2, "`configmaps`");

    let closed = cp.root.join("closed-kubeconfig");
    let text = std::fs::read_to_string(&cp.kubeconfig).expect("kubeconfig");
    let port = free_port();
    let text = regex_free_server(&text, &format!("https://127.0.0.1:{port}"));
    std::fs::write(&closed, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(["get", "ns", "--kubeconfig"])
        .arg(&closed)
        .output()
        .expect("testbed");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The kubeconfig with its `server:` line pointing elsewhere.
fn regex_free_server(kubeconfig: &str, server: &str) -> String {
    kubeconfig
        .lines()
        .map(|l| if l.trim_start().starts_with("server:") { format!("    server: {server}") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn get_watch_prints_each_change() {
    let cp = ControlPlane::start();
    let file = cp.write("objects.yaml", OBJECTS);
    ok(cp.testbed(&["apply", "-f", &file]));
    let mut child = cp
        .command(&["get", "leases", "-n", "team-a", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("testbed get -w");
    let stdout = child.stdout.take().expect("stdout");
    let _watcher = Killed(child);
    // Lines arrive through a channel so that a watch that prints nothing fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| "<nothing within 30 s>".into());
    assert!(next().starts_with("NAME"));
    assert!(next().contains("first"));
    let changed = cp.write("changed.yaml", &OBJECTS.replace("holderIdentity: first", "holderIdentity: second"));
    ok(cp.testbed(&["apply", "-f", &changed]));
    let line = next();
    assert!(line.starts_with("lock") && line.contains("second"), "the watch printed: {line}");
}

#[test]
fn wide_and_yaml_are_for_get_only_and_a_lab_without_a_kubeconfig_is_named() {
    let state = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_testbed"))
            .args(args)
            .env("TESTBED_STATE_DIR", state.path())
            .output()
            .expect("testbed")
    };
    fails_with(run(&["status", "-o", "wide"]), 2, "--output wide and --output yaml apply to `testbed get` only");
    fails_with(run(&["plan", "topologies/default.yaml", "-o", "yaml"]), 2, "apply to `testbed get` only");
    fails_with(run(&["get", "nodes", "--lab", "nosuch"]), 2, "no lab named `nosuch`");
    // A lab directory whose control plane never came up: the missing kubeconfig is named.
    std::fs::create_dir_all(state.path().join("half")).expect("lab dir");
    fails_with(run(&["get", "pods", "--lab", "half"]), 2, "lab `half` has no kubeconfig at");
}
