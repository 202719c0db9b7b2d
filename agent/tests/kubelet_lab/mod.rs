//! One node of a cluster on this host, with the real parts: etcd (Debian's `etcd-server`), the API server
//! (`testbed-agent apiserver`) and the node agent (`testbed-agent serve`), all in a network namespace the
//! test thread unshares (so cni0, veths and the ports never touch the host's), cgroups in a private subtree.
//! Every process is killed by its PID when the test ends.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testbed_api::NodeSpec;
use testbed_control_plane::client::Client;
use testbed_control_plane::tls::Credentials;
use testbed_test_support::agent_http::{request as http, try_request as try_http};
use testbed_test_support::host::cgroup_roots;
use testbed_test_support::node_spec::loopback_node_spec;

pub const NODE: &str = "n1";
/// The API server the node follows, and a second one over the same etcd that it does not know.
pub const API_PORT: u16 = 6443;
pub const SIDE_API_PORT: u16 = 6444;

pub struct Killed(Option<Child>);

impl Killed {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub creds: Credentials,
    pub rt: tokio::runtime::Runtime,
    pub cgroup_name: String,
    pub agent: Killed,
    pub apiserver: Killed,
    pub side_apiserver: Killed,
    etcd: Killed,
}

fn spawn(cmd: &mut Command, log: &Path) -> Killed {
    let log = std::fs::File::create(log).expect("log file");
    Killed(Some(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("spawn")))
}

pub fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// etcd's `/health` answers `"health":"true"` once it serves (the API server's bootstrap needs that).
fn etcd_healthy() -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:2379") else { return false };
    let mut answer = String::new();
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.contains("\"health\":\"true\"")
}

impl Cluster {
    /// etcd, the API server, the agent with the loopback NodeSpec applied and joined to the API server.
    pub fn start(test: &str) -> Self {
        Self::start_with(test, &loopback_node_spec(), &[])
    }

    /// The same with `spec` applied, after the `ip` commands of `setup` ran in the test's fresh network
    /// namespace (e.g. the underlay interface `spec` names).
    pub fn start_with(test: &str, spec: &NodeSpec, setup: &[&[&str]]) -> Self {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        for args in [&["link", "set", "lo", "up"][..]].iter().chain(setup) {
            assert!(Command::new("ip").args(*args).status().expect("ip").success(), "ip {args:?}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = spawn(
            Command::new("etcd")
                .arg("--data-dir")
                .arg(dir.path().join("etcd"))
                .args([
                    "--listen-client-urls",
                    "http://127.0.0.1:2379",
                    "--advertise-client-urls",
                    "http://127.0.0.1:2379",
                ])
                .args([
                    "--listen-peer-urls",
                    "http://127.0.0.1:2380",
                    "--initial-advertise-peer-urls",
                    "http://127.0.0.1:2380",
                ])
                .args(["--initial-cluster", "default=http://127.0.0.1:2380"]),
            &dir.path().join("etcd.log"),
        );
        wait_for("etcd healthy", 30, etcd_healthy);
        let creds = Credentials::generate(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]).expect("credentials");
        for (file, content) in [("token", &creds.token), ("cert.pem", &creds.cert_pem), ("key.pem", &creds.key_pem)] {
            std::fs::write(dir.path().join(file), content).expect("write");
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let mut c = Cluster {
            state_dir: dir.path().join("state"),
            cgroup_name: format!("tbtest-{}-{test}", std::process::id()),
            dir,
            creds,
            rt,
            agent: Killed(None),
            apiserver: Killed(None),
            side_apiserver: Killed(None),
            etcd,
        };
        c.apiserver = c.start_apiserver(API_PORT);
        c.side_apiserver = c.start_apiserver(SIDE_API_PORT);
        c.start_agent();
        let (code, body) = http("PUT", "/v1/node", Some(serde_json::to_value(spec).expect("spec")));
        assert_eq!(code, 200, "{body}");
        let join = json!({"servers": [format!("https://127.0.0.1:{API_PORT}")], "ca_pem": c.creds.ca_pem,
            "token": c.creds.token, "node_name": NODE});
        let (code, body) = http("PUT", "/v1/control-plane", Some(join));
        assert_eq!(code, 200, "{body}");
        c
    }

    /// The API server on `port` over the cluster's etcd, once it answers.
    pub fn start_apiserver(&self, port: u16) -> Killed {
        let d = self.dir.path();
        let proc = spawn(
            Command::new(env!("CARGO_BIN_EXE_testbed-agent"))
                .args(["apiserver", "--listen", &format!("127.0.0.1:{port}"), "--token-file"])
                .arg(d.join("token"))
                .arg("--tls-cert-file")
                .arg(d.join("cert.pem"))
                .arg("--tls-key-file")
                .arg(d.join("key.pem")),
            &d.join(format!("apiserver-{port}.log")),
        );
        let api = self.client(port);
        wait_for("the API server answering", 30, || {
            self.rt.block_on(api.list::<testbed_api::objects::Namespace>("/api/v1/namespaces", &[])).is_ok()
        });
        proc
    }

    pub fn start_agent(&mut self) {
        let log = self.dir.path().join("agent.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("agent log");
        let child = Command::new(env!("CARGO_BIN_EXE_testbed-agent"))
            .args(["serve", "--kill-grace-secs", "1", "--cgroup-name", &self.cgroup_name, "--state-dir"])
            .arg(&self.state_dir)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        self.agent = Killed(Some(child));
        wait_for("the agent answering", 10, || matches!(try_http("GET", "/healthz", None), Ok((200, _))));
    }

    pub fn client(&self, port: u16) -> Arc<Client> {
        let server = format!("https://127.0.0.1:{port}");
        Arc::new(Client::new(&[server], &self.creds.ca_pem, &self.creds.token).expect("client"))
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.agent.0.is_some() {
            // Stop following first: the loop would bring its pods back.
            let _ = try_http("DELETE", "/v1/control-plane", None);
            if let Ok((200, Value::Array(pods))) = try_http("GET", "/v1/pods", None) {
                for p in pods {
                    let name = p["name"].as_str().unwrap_or("");
                    let _ = try_http("DELETE", &format!("/v1/pods/{name}?grace_period_secs=0"), None);
                }
            }
        }
        self.agent.kill();
        self.apiserver.kill();
        self.side_apiserver.kill();
        self.etcd.kill();
        for root in cgroup_roots(&self.cgroup_name) {
            let _ = std::fs::remove_dir(root);
        }
    }
}
