//! What the real-etcd tests share: etcd on loopback, an API server's configuration over it, and processes
//! killed by PID.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testbed_control_plane::store::etcd::Etcd;
use testbed_control_plane::store::Store;
use testbed_control_plane::tls::Credentials;

/// A child process killed by its PID when the test ends, however it ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// etcd on loopback with its data in `dir`, answering on the returned client URL.
pub fn start_etcd(dir: &Path) -> (Killed, String) {
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("etcd.log")).expect("etcd log"))
        .spawn()
        .expect("etcd must be installed (apt-get install etcd-server; tests/packages.txt)");
    (Killed(child), url)
}

/// Waits (up to 20 s) until etcd answers a list; the panic shows etcd's log from `dir`.
// Each test file compiles this module on its own, and not every one starts its own API server.
#[allow(dead_code)]
pub fn wait_for_etcd(rt: &tokio::runtime::Runtime, etcd: &Etcd, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(etcd.list("/")).is_err() {
        let log = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "etcd did not come up: {log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An API server's configuration over `etcd_url` on a free loopback port, with fresh credentials for
/// 127.0.0.1 (the CA and token a client needs), and the port.
// Each test file compiles this module on its own, and not every one starts its own API server.
#[allow(dead_code)]
pub fn server_config(etcd_url: String) -> (testbed_control_plane::Config, Credentials, u16) {
    let creds = Credentials::generate(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]).expect("credentials");
    let port = free_port();
    let config = testbed_control_plane::Config {
        listen: (Ipv4Addr::LOCALHOST, port).into(),
        etcd: etcd_url,
        token: creds.token.clone(),
        cert_pem: creds.cert_pem.clone().into_bytes(),
        key_pem: creds.key_pem.clone().into_bytes(),
    };
    (config, creds, port)
}
