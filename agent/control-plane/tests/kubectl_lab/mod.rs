//! A real etcd on loopback, the API server over it, and the real kubectl driving it with a generated
//! kubeconfig (its discovery cache in the test's directory).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed_control_plane::store::etcd::Etcd;

use crate::common::{server_config, start_etcd, wait_for_etcd, Killed};

pub struct Lab {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    kubeconfig: PathBuf,
    pub etcd: Etcd,
    pub rt: tokio::runtime::Runtime,
    _etcd_process: Killed,
}

impl Lab {
    pub fn start() -> Self {
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

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        // HOME: kubectl's discovery cache goes to the test's directory, not the user's.
        cmd.args(args).env("KUBECONFIG", &self.kubeconfig).env("HOME", &self.root);
        cmd
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("kubectl must be installed")
    }

    /// kubectl that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl that must fail; its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(!out.status.success(), "kubectl {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.root.join(name);
        std::fs::write(&path, text).expect("write");
        path.to_string_lossy().into_owned()
    }
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// (type, name) of every watch event in a stream of JSON objects.
pub fn events(text: &str) -> Vec<(String, String)> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|v| {
            let v = v.expect("watch event JSON");
            let kind = v["type"].as_str().unwrap_or("?").to_string();
            (kind, v["object"]["metadata"]["name"].as_str().unwrap_or("?").to_string())
        })
        .collect()
}

pub fn pod(name: &str, container: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  containers:\n  - {container}\n"
    )
}

/// `kubectl ARGS` (a `get -w`) in the background, its output collected as it comes.
pub fn watch_in_background(lab: &Lab, args: &[&str]) -> (Killed, Arc<Mutex<String>>) {
    let mut child = lab.command(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("kubectl");
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

pub fn wait_for(buf: &Mutex<String>, what: impl Fn(&[(String, String)]) -> bool) -> Vec<(String, String)> {
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

pub fn pair(kind: &str, name: &str) -> (String, String) {
    (kind.to_string(), name.to_string())
}
