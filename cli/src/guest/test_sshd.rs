//! A real OpenSSH `sshd` on loopback for the guest-access tests (skipped when /usr/sbin/sshd is missing).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::keys::{generate_client_key, generate_host_key, write_file_atomic, NodeKeys};
use super::session::Session;

const SSHD: &str = "/usr/sbin/sshd";

pub(super) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// One sshd on 127.0.0.1:<free port> with our generated host key and client key; killed by PID on drop.
pub(crate) struct Sshd {
    child: Child,
    pub(super) port: u16,
    pub(super) dir: tempfile::TempDir,
    pub(super) host: NodeKeys,
    pub(super) client_key: PathBuf,
}

impl Sshd {
    pub(crate) fn start() -> Option<Sshd> {
        if !Path::new(SSHD).exists() {
            eprintln!("SKIP: {SSHD} not found (apt-get install openssh-server)");
            return None;
        }
        // sshd started as root insists on its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let dir = tempfile::tempdir().expect("tempdir");
        let host = generate_host_key().expect("host key");
        let host_key_path = dir.path().join("host_ed25519");
        write_file_atomic(&host_key_path, host.host_private_openssh.as_bytes(), 0o600).expect("write host key");
        let client_key = generate_client_key(dir.path()).expect("client key");
        let public = std::fs::read_to_string(dir.path().join("id_ed25519.pub")).expect("read .pub");
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, &public).expect("write authorized_keys");
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nAllowTcpForwarding yes\nLogLevel VERBOSE\n",
            hk = host_key_path.display(),
            ak = authorized.display(),
            pid = dir.path().join("sshd.pid").display(),
        );
        let config_path = dir.path().join("sshd_config");
        std::fs::write(&config_path, config).expect("write sshd_config");
        // -E: log to a file (with -e, debug lines would leak into the sessions' stderr).
        let child = std::process::Command::new(SSHD)
            .arg("-D")
            .arg("-E")
            .arg(dir.path().join("sshd.log"))
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sshd");
        let mut sshd = Sshd { child, port, dir, host, client_key };
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                panic!("sshd exited with {status}: {}", sshd.log());
            }
            assert!(start.elapsed() < Duration::from_secs(10), "sshd not listening after 10 s: {}", sshd.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(sshd)
    }

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    pub(crate) async fn connect(&self) -> Session {
        Session::connect(self.port, &self.client_key, &self.host.host_public_openssh, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("connect: {e}\nsshd log:\n{}", self.log()))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Our own child, by PID (Child::kill signals exactly that PID).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
