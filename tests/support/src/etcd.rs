//! A real etcd (Debian's `etcd-server`) on loopback for the control-plane tests, and child processes that
//! are killed by their PID when the test ends, however it ends.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A child process killed by its PID when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port free on 127.0.0.1 at the time of asking, and never handed out before in this process: the
/// tests of one binary run in parallel, and a port given to one test's etcd and freed again until etcd binds
/// it must not go to another test meanwhile.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// etcd on loopback with its data in `dir` (log in `dir/etcd.log`), answering on the returned client URL.
pub fn start_etcd(dir: &Path) -> (Killed, String) {
    start_etcd_on(dir, free_port())
}

/// As [`start_etcd`], on client port `port` (a test that starts a client of it first picks the port).
pub fn start_etcd_on(dir: &Path, port: u16) -> (Killed, String) {
    start(dir, "http", port, &[])
}

/// The PEM files of a TLS etcd: the CA it trusts for clients and peers, and its own certificate and key.
pub struct EtcdTlsFiles<'a> {
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// etcd on loopback as a lab runs it: both ports HTTPS, taking only clients with a certificate of `tls.ca`
/// (the flags of `launch_script` in cli/src/lab/control_plane.rs). Returns its `https://` client URL.
pub fn start_etcd_tls(dir: &Path, tls: &EtcdTlsFiles<'_>) -> (Killed, String) {
    let [ca, cert, key] = [tls.ca, tls.cert, tls.key].map(|p| p.to_str().expect("UTF-8 path").to_string());
    let flags = [
        ("--cert-file", &cert),
        ("--key-file", &key),
        ("--trusted-ca-file", &ca),
        ("--peer-cert-file", &cert),
        ("--peer-key-file", &key),
        ("--peer-trusted-ca-file", &ca),
    ];
    let mut args: Vec<String> = flags.iter().flat_map(|(f, v)| [f.to_string(), v.to_string()]).collect();
    args.extend(["--client-cert-auth".to_string(), "--peer-client-cert-auth".to_string()]);
    start(dir, "https", free_port(), &args)
}

fn start(dir: &Path, scheme: &str, client: u16, extra: &[String]) -> (Killed, String) {
    let peer = free_port();
    let url = format!("{scheme}://127.0.0.1:{client}");
    let peer_url = format!("{scheme}://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("etcd.log")).expect("etcd log"))
        .spawn()
        .expect("etcd must be installed (apt-get install etcd-server; tests/packages.txt)");
    (Killed(child), url)
}
