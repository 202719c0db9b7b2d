//! SSH to the guests: key generation, host-key pinning, exec, atomic upload, port forwarding, agent push.
//!
//! Every guest is reached through QEMU's user-mode `hostfwd` on `127.0.0.1:<port>`, always as `root`, always by
//! public key. The guest's host key is generated here, injected through the seed and pinned: the server must
//! present exactly that key, anything else is a hard error (no trust-on-first-use, no retry).
//!
//! The client is russh (pure Rust, `ring` backend); the interactive `testbed ssh` uses the system `ssh` with a
//! lab-local known_hosts file instead, because a real terminal is what people expect there.

use std::ffi::OsStr;
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use russh::client;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};
use sha2::{Digest as _, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use crate::agent_client::{AgentClient, AgentError};

/// The only user testbed logs in as.
const USER: &str = "root";
/// One connect attempt (TCP + banner + kex + auth). Generous because a TCG guest under load is slow.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between attempts while the guest boots (slirp accepts the TCP connection and then resets it).
const RETRY_PAUSE: Duration = Duration::from_millis(300);
/// First wait for sshd's banner. slirp accepts on the host at once and only then SYNs the guest, with TCP backoff
/// while the guest has no network yet; a fresh connection beats waiting out that backoff. Doubles after every
/// silent attempt (up to ATTEMPT_TIMEOUT) so a guest that is merely slow still gets through.
const FIRST_BANNER_TIMEOUT: Duration = Duration::from_secs(4);
/// sshd allows 10 session channels per connection (MaxSessions); 8 leaves room for the sessions of timed-out
/// commands that sshd keeps until their process group is killed.
const MAX_CONCURRENT_EXECS: usize = 8;
/// Keepalive so a dead guest is noticed within ~30 s instead of hanging a suite.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_MAX: usize = 6;
/// Safety net: with keepalives answered the connection is never idle, so this only fires on a silent peer.
const INACTIVITY_TIMEOUT: Duration = Duration::from_secs(90);
/// Where the image's supervisor expects the agent, and where it writes the agent's PID.
pub const AGENT_REMOTE_PATH: &str = "/usr/local/bin/testbed-agent";
const AGENT_PID_FILE: &str = "/run/testbed-agent.pid";
const AGENT_LOG_FILE: &str = "/var/log/testbed-agent.log";
/// How long the restarted agent may take to answer /healthz (supervisor backoff is 1 s; TCG is slow).
const AGENT_START_DEADLINE: Duration = Duration::from_secs(60);
/// The command that builds the agent the way `locate_agent_binary` wants it.
pub const AGENT_BUILD_HINT: &str =
    "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build -p testbed-agent --release --target x86_64-unknown-linux-gnu";

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SSH key {what}: {message}")]
    Key { what: String, message: String },
    #[error("host key of 127.0.0.1:{port} is not the pinned one: expected `{expected}`, got `{got}`")]
    HostKeyMismatch { port: u16, expected: String, got: String },
    #[error("no SSH session to 127.0.0.1:{port} within {waited:.1?} ({attempts} attempts); last error: {last}")]
    ConnectTimeout { port: u16, waited: Duration, attempts: u32, last: String },
    #[error("127.0.0.1:{port} refused public-key authentication of {USER} with {}", key.display())]
    AuthRefused { port: u16, key: PathBuf },
    #[error("SSH 127.0.0.1:{port}: {step}: {source}")]
    Protocol {
        port: u16,
        step: String,
        #[source]
        source: russh::Error,
    },
    #[error("SSH 127.0.0.1:{port}: `{command}` did not finish within {timeout:?}")]
    ExecTimeout { port: u16, command: String, timeout: Duration },
    #[error("SSH 127.0.0.1:{port}: the session is closing")]
    SessionClosed { port: u16 },
    #[error("SSH 127.0.0.1:{port}: `{command}` ended without an exit status")]
    NoExitStatus { port: u16, command: String },
    #[error("SSH 127.0.0.1:{port}: {step} failed with exit code {exit_code}: {stderr}")]
    Remote { port: u16, step: String, exit_code: i32, stderr: String },
    #[error("SSH 127.0.0.1:{port}: forward to guest port {remote_port}: {source}")]
    Forward {
        port: u16,
        remote_port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("agent binary: {0}")]
    AgentBinary(String),
    #[error("agent on 127.0.0.1:{port} did not become healthy within {waited:.1?}: {last}\n--- tail of {log_file} ---\n{log_tail}")]
    AgentNotHealthy { port: u16, waited: Duration, last: Box<AgentError>, log_file: String, log_tail: String },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SshError + 'a {
    move |source| SshError::Io { action, path: path.to_path_buf(), source }
}

/// A node's SSH host key pair, generated on the host and injected through the seed.
#[derive(Clone)]
pub struct NodeKeys {
    /// OpenSSH private key (`-----BEGIN OPENSSH PRIVATE KEY-----`), goes to the guest's /etc/ssh.
    pub host_private_openssh: String,
    /// `ssh-ed25519 AAAA... comment`: what the client pins and what known_hosts holds.
    pub host_public_openssh: String,
}

impl fmt::Debug for NodeKeys {
    // The private half never lands in logs or panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKeys").field("host_public_openssh", &self.host_public_openssh).finish_non_exhaustive()
    }
}

fn random_ed25519(comment: &str) -> Result<PrivateKey, SshError> {
    use rand::RngCore as _;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let keypair = Ed25519Keypair::from_seed(&seed);
    seed.fill(0);
    PrivateKey::new(KeypairData::Ed25519(keypair), comment)
        .map_err(|e| SshError::Key { what: "generation".into(), message: e.to_string() })
}

fn private_openssh(key: &PrivateKey) -> Result<String, SshError> {
    key.to_openssh(LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| SshError::Key { what: "encoding (private)".into(), message: e.to_string() })
}

fn public_openssh(key: &PublicKey) -> Result<String, SshError> {
    key.to_openssh().map_err(|e| SshError::Key { what: "encoding (public)".into(), message: e.to_string() })
}

/// Writes `contents` to `path` with `mode` atomically (temp file in the same directory, then rename).
fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), SshError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".testbed-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io_err("create a temporary file in", dir))?;
    tmp.write_all(contents).map_err(io_err("write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err("sync", tmp.path()))?;
    tmp.persist(path).map_err(|e| SshError::Io {
        action: "rename into place",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// The lab's client key: `<lab_dir>/id_ed25519` (0600, OpenSSH format) with `id_ed25519.pub` beside it.
/// Idempotent: an existing valid key is kept (the running guests trust it), its `.pub` rewritten from it.
pub fn generate_client_key(lab_dir: &Path) -> Result<PathBuf, SshError> {
    let path = lab_dir.join("id_ed25519");
    let pub_path = lab_dir.join("id_ed25519.pub");
    let key = if path.exists() {
        russh::keys::load_secret_key(&path, None)
            .map_err(|e| SshError::Key { what: path.display().to_string(), message: e.to_string() })?
    } else {
        let key = random_ed25519("testbed-client")?;
        // create_new + 0600 from the start: the private key is never world-readable, not even for a moment.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("create", &path))?;
        file.write_all(private_openssh(&key)?.as_bytes()).map_err(io_err("write", &path))?;
        file.sync_all().map_err(io_err("sync", &path))?;
        key
    };
    let public = format!("{}\n", public_openssh(key.public_key())?);
    write_file_atomic(&pub_path, public.as_bytes(), 0o644)?;
    Ok(path)
}

/// A fresh ed25519 host key pair for one node.
pub fn generate_host_key() -> Result<NodeKeys, SshError> {
    let key = random_ed25519("testbed-host")?;
    Ok(NodeKeys {
        host_private_openssh: private_openssh(&key)?,
        host_public_openssh: public_openssh(key.public_key())?,
    })
}

/// Parses an OpenSSH public key line (`ssh-ed25519 AAAA... [comment]`).
fn parse_public(line: &str) -> Result<PublicKey, SshError> {
    PublicKey::from_openssh(line.trim())
        .map_err(|e| SshError::Key { what: format!("`{}` (pinned host key)", line.trim()), message: e.to_string() })
}

/// `[127.0.0.1]:<port> <type> <base64>` lines for the system ssh; comments stripped. Written atomically, 0644.
pub fn write_known_hosts(path: &Path, entries: &[(u16, String)]) -> Result<(), SshError> {
    let mut text = String::new();
    for (port, public) in entries {
        let mut key = parse_public(public)?;
        key.set_comment("");
        text.push_str(&format!("[127.0.0.1]:{port} {}\n", public_openssh(&key)?.trim_end()));
    }
    write_file_atomic(path, text.as_bytes(), 0o644)
}

/// The system `ssh` for an interactive shell (or a one-off command in `remote_args`) on a node. Strict host key
/// checking against the lab's own known_hosts, only the lab key, no user or global config surprises.
pub fn interactive_ssh_command<S: AsRef<OsStr>>(
    port: u16,
    key: &Path,
    known_hosts: &Path,
    extra_args: &[S],
) -> std::process::Command {
    let mut cmd = std::process::Command::new("ssh");
    cmd.arg("-i").arg(key).arg("-p").arg(port.to_string());
    // ssh splits this option's value at spaces: quoted, a state directory like `/home/Jo Doe/...` still works.
    let mut kh = std::ffi::OsString::from("UserKnownHostsFile=\"");
    kh.push(known_hosts);
    kh.push("\"");
    cmd.arg("-o").arg(kh);
    for opt in [
        "StrictHostKeyChecking=yes",
        "GlobalKnownHostsFile=/dev/null",
        "IdentitiesOnly=yes",
        "PreferredAuthentications=publickey",
        "LogLevel=ERROR",
    ] {
        cmd.arg("-o").arg(opt);
    }
    cmd.arg(format!("{USER}@127.0.0.1"));
    if !extra_args.is_empty() {
        // ssh parses options after the host too: a command starting with `-` must not become one.
        cmd.arg("--");
    }
    cmd.args(extra_args);
    cmd
}

/// russh handler that accepts exactly the pinned host key and records what it saw otherwise.
struct PinnedHost {
    expected: PublicKey,
    mismatch: Arc<Mutex<Option<String>>>,
}

impl client::Handler for PinnedHost {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let got = match server {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                // Compare key material only: the comment is not part of the identity.
                if key.key_data() == self.expected.key_data() {
                    return Ok(true);
                }
                key.to_openssh().unwrap_or_else(|e| format!("<unencodable key: {e}>"))
            }
            PublicKeyOrCertificate::Certificate(cert) => {
                format!("a certificate for {}", cert.public_key().algorithm())
            }
        };
        if let Ok(mut slot) = self.mismatch.lock() {
            *slot = Some(got);
        }
        Ok(false)
    }
}

struct Inner {
    handle: client::Handle<PinnedHost>,
    port: u16,
    /// Listener tasks of `forward()`; aborted when the last Session clone goes away.
    forwards: Mutex<Vec<AbortHandle>>,
    /// Bounds concurrent exec channels below sshd's MaxSessions (10 per connection): beyond it sshd refuses
    /// the channel, so callers queue here instead of failing.
    exec_slots: Semaphore,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(tasks) = self.forwards.get_mut() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}

/// An authenticated SSH connection to one guest. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("port", &self.inner.port).finish_non_exhaustive()
    }
}

/// Output of a remote command. `exit_code` is 128+signal when the command was killed by a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

enum AttemptError {
    /// Worth another try while the guest boots (refused, reset, EOF before the banner, ...).
    Retry(String),
    /// The port accepted but sshd said nothing within the banner timeout.
    NoBanner(String),
    Fatal(SshError),
}

/// One connection attempt; every stage is bounded by its own timeout and by the overall deadline `end`.
struct Attempt<'a> {
    port: u16,
    key_path: &'a Path,
    key: &'a Arc<PrivateKey>,
    expected: &'a PublicKey,
    end: Instant,
}

impl Attempt<'_> {
    fn left(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    async fn run(&self, config: Arc<client::Config>, banner_timeout: Duration) -> Result<Session, AttemptError> {
        let port = self.port;
        let tcp_timeout = self.left().min(ATTEMPT_TIMEOUT);
        let stream = match tokio::time::timeout(tcp_timeout, TcpStream::connect(("127.0.0.1", port))).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(AttemptError::Retry(format!("TCP: {e}"))),
            Err(_) => return Err(AttemptError::Retry(format!("TCP connect did not complete within {tcp_timeout:?}"))),
        };
        if let Err(e) = stream.set_nodelay(true) {
            return Err(AttemptError::Retry(format!("TCP_NODELAY: {e}")));
        }
        // sshd speaks first; peek (not read) so russh still sees the whole banner.
        let banner_timeout = banner_timeout.min(self.left());
        match tokio::time::timeout(banner_timeout, stream.peek(&mut [0u8; 1])).await {
            Err(_) => return Err(AttemptError::NoBanner(format!("no SSH banner within {banner_timeout:?}"))),
            Ok(Ok(0)) => return Err(AttemptError::Retry("connection closed before the SSH banner".into())),
            Ok(Err(e)) => return Err(AttemptError::Retry(format!("waiting for the SSH banner: {e}"))),
            Ok(Ok(_)) => {}
        }
        let handshake_timeout = self.left().min(ATTEMPT_TIMEOUT);
        match tokio::time::timeout(handshake_timeout, self.handshake(config, stream)).await {
            Ok(result) => result,
            Err(_) => Err(AttemptError::Retry(format!(
                "SSH key exchange and authentication did not complete within {handshake_timeout:?}"
            ))),
        }
    }

    async fn handshake(&self, config: Arc<client::Config>, stream: TcpStream) -> Result<Session, AttemptError> {
        let port = self.port;
        let mismatch = Arc::new(Mutex::new(None));
        let handler = PinnedHost { expected: self.expected.clone(), mismatch: mismatch.clone() };
        let connected = client::connect_stream(config, stream, handler).await;
        let seen = mismatch.lock().ok().and_then(|mut slot| slot.take());
        if let Some(got) = seen {
            let expected = self.expected.to_openssh().unwrap_or_else(|e| format!("<unencodable key: {e}>"));
            return Err(AttemptError::Fatal(SshError::HostKeyMismatch { port, expected, got }));
        }
        let mut handle = connected.map_err(|e| AttemptError::Retry(format!("handshake: {e}")))?;
        let auth = handle
            .authenticate_publickey(USER, PrivateKeyWithHashAlg::new(self.key.clone(), None))
            .await
            .map_err(|e| AttemptError::Retry(format!("authentication: {e}")))?;
        if !auth.success() {
            // The host key matched, so this sshd has our seed: a refusal is a configuration error, not boot noise.
            return Err(AttemptError::Fatal(SshError::AuthRefused { port, key: self.key_path.to_path_buf() }));
        }
        Ok(Session {
            inner: Arc::new(Inner {
                handle,
                port,
                forwards: Mutex::new(Vec::new()),
                exec_slots: Semaphore::new(MAX_CONCURRENT_EXECS),
            }),
        })
    }
}

fn client_config() -> client::Config {
    client::Config {
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        inactivity_timeout: Some(INACTIVITY_TIMEOUT),
        nodelay: true,
        ..Default::default()
    }
}

/// POSIX single-quoting for a remote `sh -c` command line.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn signal_number(sig: &Sig) -> i32 {
    match sig {
        Sig::ABRT => libc::SIGABRT,
        Sig::ALRM => libc::SIGALRM,
        Sig::FPE => libc::SIGFPE,
        Sig::HUP => libc::SIGHUP,
        Sig::ILL => libc::SIGILL,
        Sig::INT => libc::SIGINT,
        Sig::KILL => libc::SIGKILL,
        Sig::PIPE => libc::SIGPIPE,
        Sig::QUIT => libc::SIGQUIT,
        Sig::SEGV => libc::SIGSEGV,
        Sig::TERM => libc::SIGTERM,
        Sig::USR1 => libc::SIGUSR1,
        Sig::Custom(name) => match name.as_str() {
            "USR2" => libc::SIGUSR2,
            "BUS" => libc::SIGBUS,
            "TRAP" => libc::SIGTRAP,
            "SYS" => libc::SIGSYS,
            "XCPU" => libc::SIGXCPU,
            "XFSZ" => libc::SIGXFSZ,
            "STOP" => libc::SIGSTOP,
            "TSTP" => libc::SIGTSTP,
            "TTIN" => libc::SIGTTIN,
            "TTOU" => libc::SIGTTOU,
            "VTALRM" => libc::SIGVTALRM,
            "PROF" => libc::SIGPROF,
            // An unnamed signal still must not look like success.
            _ => 127,
        },
    }
}

impl Session {
    /// Connects to `127.0.0.1:port` as root with `client_key`, retrying (refused, reset, no banner yet) with
    /// short pauses until `deadline` has passed. The server must present `pinned_host_public`; a different key
    /// is [`SshError::HostKeyMismatch`] at once, and refused authentication is [`SshError::AuthRefused`].
    pub async fn connect(
        port: u16,
        client_key: &Path,
        pinned_host_public: &str,
        deadline: Duration,
    ) -> Result<Session, SshError> {
        let expected = parse_public(pinned_host_public)?;
        let key = russh::keys::load_secret_key(client_key, None)
            .map_err(|e| SshError::Key { what: client_key.display().to_string(), message: e.to_string() })?;
        let key = Arc::new(key);
        let config = Arc::new(client_config());
        let start = Instant::now();
        let end = start + deadline;
        let mut attempts = 0u32;
        let mut last = String::from("no attempt made (zero deadline)");
        let mut banner_timeout = FIRST_BANNER_TIMEOUT;
        loop {
            if Instant::now() >= end {
                return Err(SshError::ConnectTimeout { port, waited: start.elapsed(), attempts, last });
            }
            attempts += 1;
            let attempt = Attempt { port, key_path: client_key, key: &key, expected: &expected, end };
            match attempt.run(config.clone(), banner_timeout).await {
                Ok(session) => return Ok(session),
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Retry(msg)) => last = msg,
                Err(AttemptError::NoBanner(msg)) => {
                    last = msg;
                    banner_timeout = (banner_timeout * 2).min(ATTEMPT_TIMEOUT);
                }
            }
            tokio::time::sleep(RETRY_PAUSE.min(end.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// The forwarded SSH port this session is connected to.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    fn protocol(&self, step: impl Into<String>) -> impl FnOnce(russh::Error) -> SshError {
        let port = self.inner.port;
        let step = step.into();
        move |source| SshError::Protocol { port, step, source }
    }

    /// Runs `command` through the guest's shell; writes `stdin` (if any) and then EOF; collects everything.
    pub async fn exec(&self, command: &str, stdin: Option<&[u8]>) -> Result<ExecOutput, SshError> {
        let _slot = self.exec_slot().await?;
        let (mut read, write) = self.open_exec(command).await?;
        run_channel(self.inner.port, command, &mut read, &write, stdin).await
    }

    /// [`exec`](Self::exec) bounded by `timeout`; on expiry the remote command and everything it started are
    /// killed and [`SshError::ExecTimeout`] is returned.
    ///
    /// OpenSSH ignores the SSH "signal" request ("session signalling requires privilege separation" in 9.2), so
    /// the command runs under a wrapper shell that records its PID. sshd puts every non-pty session in its own
    /// session (setsid), so that PID is also the process group to kill.
    pub async fn exec_timeout(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, SshError> {
        let pid_file = format!("/tmp/.testbed-exec-{:016x}.pid", rand::random::<u64>());
        let wrapped =
            format!("echo $$ > {pid_file}; sh -c {}; rc=$?; rm -f {pid_file}; exit $rc", shell_quote(command));
        let slot = self.exec_slot().await?;
        let (mut read, write) = self.open_exec(&wrapped).await?;
        match tokio::time::timeout(timeout, run_channel(self.inner.port, command, &mut read, &write, stdin)).await {
            Ok(result) => result,
            Err(_) => {
                let _ = write.close().await;
                drop(slot);
                let kill = format!(
                    "pid=$(cat {pid_file} 2>/dev/null) && [ -n \"$pid\" ] && kill -KILL -- -\"$pid\" 2>/dev/null; \
                     rm -f {pid_file}; exit 0"
                );
                // Best effort: the timeout is the error to report, a failed kill would only hide it.
                let _ = self.exec(&kill, None).await;
                Err(SshError::ExecTimeout { port: self.inner.port, command: command.to_string(), timeout })
            }
        }
    }

    /// `exec`, and a non-zero exit is an error naming `step` and carrying stderr.
    pub async fn exec_checked(&self, step: &str, command: &str, stdin: Option<&[u8]>) -> Result<ExecOutput, SshError> {
        let out = self.exec(command, stdin).await?;
        if out.exit_code != 0 {
            return Err(SshError::Remote {
                port: self.inner.port,
                step: step.to_string(),
                exit_code: out.exit_code,
                stderr: out.stderr_lossy().trim().to_string(),
            });
        }
        Ok(out)
    }

    async fn exec_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, SshError> {
        // Nothing closes the semaphore today; if something ever does, the session is going away.
        self.inner.exec_slots.acquire().await.map_err(|_| SshError::SessionClosed { port: self.inner.port })
    }

    async fn open_exec(&self, command: &str) -> Result<(ChannelReadHalf, ChannelWriteHalf<client::Msg>), SshError> {
        let channel =
            self.inner.handle.channel_open_session().await.map_err(self.protocol("open a session channel"))?;
        channel.exec(true, command).await.map_err(self.protocol(format!("exec `{command}`")))?;
        Ok(channel.split())
    }

    /// Writes `data` to `remote_path` with `mode`, atomically: streamed into a temporary file beside it, chmod, then
    /// renamed over the target, so a reader (or the agent supervisor) never sees a half-written file.
    pub async fn upload(&self, data: &[u8], remote_path: &str, mode: u32) -> Result<(), SshError> {
        let tmp = format!("{remote_path}.testbed-upload.{:08x}", rand::random::<u32>());
        let (q_tmp, q_dst) = (shell_quote(&tmp), shell_quote(remote_path));
        let command = format!(
            "umask 077; if cat > {q_tmp} && chmod {mode:o} {q_tmp} && mv -f {q_tmp} {q_dst}; then exit 0; \
             else rc=$?; rm -f {q_tmp}; exit $rc; fi"
        );
        let out = self.exec(&command, Some(data)).await?;
        if out.exit_code != 0 {
            return Err(SshError::Remote {
                port: self.inner.port,
                step: format!("upload of {} bytes to {remote_path}", data.len()),
                exit_code: out.exit_code,
                stderr: out.stderr_lossy().trim().to_string(),
            });
        }
        Ok(())
    }

    /// Listens on `127.0.0.1:<ephemeral>` and forwards every connection to the guest's `127.0.0.1:remote_port`
    /// over a direct-tcpip channel. The listener lives as long as this Session (any clone of it).
    pub async fn forward(&self, remote_port: u16) -> Result<u16, SshError> {
        let port = self.inner.port;
        let forward_err = move |source| SshError::Forward { port, remote_port, source };
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(forward_err)?;
        let local_port = listener.local_addr().map_err(forward_err)?.port();
        // Weak: the listener must not keep the connection alive, the Session's owners decide that.
        let session = Arc::downgrade(&self.inner);
        let task = tokio::spawn(forward_loop(listener, session, remote_port));
        if let Ok(mut tasks) = self.inner.forwards.lock() {
            tasks.push(task.abort_handle());
        }
        Ok(local_port)
    }
}

async fn forward_loop(listener: TcpListener, session: Weak<Inner>, remote_port: u16) {
    // Dropping the JoinSet (when this task is aborted) aborts every pump with it.
    let mut pumps = JoinSet::new();
    loop {
        let (mut tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(_) => {
                // EMFILE and friends: back off instead of spinning; the next accept may succeed.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(inner) = session.upgrade() else { return };
        // Open the channel inside the pump task: one slow open (a TCG guest) must not delay the next accept.
        pumps.spawn(async move {
            let channel = inner
                .handle
                .channel_open_direct_tcpip("127.0.0.1", u32::from(remote_port), "127.0.0.1", u32::from(peer.port()))
                .await;
            drop(inner);
            // A refused channel (nothing listening in the guest) closes the local socket: the client sees EOF,
            // exactly as if it had connected to a closed port.
            if let Ok(channel) = channel {
                let mut remote = channel.into_stream();
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut remote).await;
            }
        });
        while pumps.try_join_next().is_some() {}
    }
}

/// Drives one exec channel: writes stdin then EOF while reading output, so neither side can stall the other.
async fn run_channel(
    port: u16,
    command: &str,
    read: &mut ChannelReadHalf,
    write: &ChannelWriteHalf<client::Msg>,
    stdin: Option<&[u8]>,
) -> Result<ExecOutput, SshError> {
    let send = async {
        if let Some(data) = stdin {
            write.data(data).await?;
        }
        write.eof().await
    };
    let receive = async {
        let mut out = ExecOutput { exit_code: -1, stdout: Vec::new(), stderr: Vec::new() };
        let mut status = None;
        while let Some(msg) = read.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => {
                    status = Some(i32::try_from(exit_status).unwrap_or(i32::MAX));
                }
                ChannelMsg::ExitSignal { signal_name, .. } => status = Some(128 + signal_number(&signal_name)),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        (out, status)
    };
    let (sent, (mut out, status)) = tokio::join!(send, receive);
    let Some(code) = status else {
        // A command that died before reading its stdin makes the send fail; the missing status is the real news.
        return Err(match sent {
            Err(source) => SshError::Protocol { port, step: format!("send stdin to `{command}`"), source },
            Ok(()) => SshError::NoExitStatus { port, command: command.to_string() },
        });
    };
    // The command finished (maybe without reading all of stdin, which is its business, like a pipe): keep its status.
    out.exit_code = code;
    Ok(out)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Where the agent lives on a node and how its supervisor is driven. The guest's layout is [`AgentLayout::GUEST`];
/// tests point it at a scratch directory on the host.
#[derive(Debug, Clone, Copy)]
struct AgentLayout<'a> {
    binary: &'a str,
    pid_file: &'a str,
    log_file: &'a str,
    port: u16,
}

impl AgentLayout<'static> {
    const GUEST: AgentLayout<'static> = AgentLayout {
        binary: AGENT_REMOTE_PATH,
        pid_file: AGENT_PID_FILE,
        log_file: AGENT_LOG_FILE,
        port: testbed_api::AGENT_PORT,
    };
}

/// Upload the static agent when the guest's copy differs, make the supervisor (re)start it, and wait for
/// `GET /healthz` through a forward of the agent port. The client names the node by its SSH port; use
/// [`AgentClient::with_node`] to give it the node's name.
pub async fn push_agent(session: &Session, agent_binary: &Path) -> Result<AgentClient, SshError> {
    push_agent_with(session, agent_binary, AgentLayout::GUEST, AGENT_START_DEADLINE).await
}

async fn push_agent_with(
    session: &Session,
    agent_binary: &Path,
    layout: AgentLayout<'_>,
    start_deadline: Duration,
) -> Result<AgentClient, SshError> {
    // Reading and hashing ~100 MB (a debug agent) is blocking work: keep it off the async workers.
    let path = agent_binary.to_path_buf();
    let (binary, local_sha) = tokio::task::spawn_blocking(move || {
        let binary = std::fs::read(&path).map_err(io_err("read", &path))?;
        check_static_elf(&path, &binary)?;
        let sha = sha256_hex(&binary);
        Ok::<_, SshError>((binary, sha))
    })
    .await
    .map_err(|e| SshError::AgentBinary(format!("{}: hashing task failed: {e}", agent_binary.display())))??;
    let remote_bin = shell_quote(layout.binary);
    let stamp = shell_quote(&format!("{}.sha256", layout.binary));
    // sha256sum of a large binary takes seconds in a TCG guest; a stamp written after each upload (and checked
    // together with the size) answers at once. Without a matching stamp the binary itself is hashed.
    let check = format!(
        "if [ \"$(cat {stamp} 2>/dev/null)\" = {local_sha} ] && [ \"$(stat -c %s {remote_bin} 2>/dev/null)\" = {len} ]; \
         then echo {local_sha} stamp; else sha256sum {remote_bin} 2>/dev/null; fi",
        len = binary.len()
    );
    let remote = session.exec(&check, None).await?;
    let remote = remote.stdout_lossy();
    let mut words = remote.split_whitespace();
    let remote_sha = words.next();
    let by_stamp = words.next() == Some("stamp");
    let changed = remote_sha != Some(local_sha.as_str());
    if changed {
        session.upload(&binary, layout.binary, 0o755).await?;
    }
    if !by_stamp {
        let write_stamp = format!("printf %s {local_sha} > {stamp}.tmp && mv -f {stamp}.tmp {stamp}");
        session.exec_checked("writing the agent's checksum stamp", &write_stamp, None).await?;
    }
    if changed {
        // The supervisor restarts the agent when it exits: stop the old one and wait until it is gone, so the
        // health check below cannot be answered by the old binary.
        let restart = format!(
            "pid=$(cat {pid_file} 2>/dev/null) || exit 0; [ -n \"$pid\" ] || exit 0; \
             kill \"$pid\" 2>/dev/null || exit 0; \
             i=0; while kill -0 \"$pid\" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
             if kill -0 \"$pid\" 2>/dev/null; then kill -9 \"$pid\"; fi; exit 0",
            pid_file = shell_quote(layout.pid_file)
        );
        session.exec_checked("restart of the agent", &restart, None).await?;
    }
    let local_port = session.forward(layout.port).await?;
    let agent = AgentClient::new(format!("127.0.0.1:{}", session.port()), local_port);
    let start = Instant::now();
    loop {
        match agent.health().await {
            Ok(_) => return Ok(agent),
            Err(last) if start.elapsed() >= start_deadline => {
                let log_tail = session
                    .exec(&format!("tail -n 30 {} 2>&1", shell_quote(layout.log_file)), None)
                    .await
                    .map(|o| o.stdout_lossy())
                    .unwrap_or_else(|e| format!("(cannot read the log: {e})"));
                return Err(SshError::AgentNotHealthy {
                    port: session.port(),
                    waited: start.elapsed(),
                    last: Box::new(last),
                    log_file: layout.log_file.to_string(),
                    log_tail,
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// ELF64 program header type of the dynamic loader path; a static binary has none.
const PT_INTERP: u32 = 3;

/// Reads the program headers of an ELF64 little-endian x86-64 binary: no `PT_INTERP` means static (incl. static-pie).
fn check_static_elf(path: &Path, bytes: &[u8]) -> Result<(), SshError> {
    let bad = |why: &str| SshError::AgentBinary(format!("{}: {why}", path.display()));
    let u16_at = |off: usize| bytes.get(off..off + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |off: usize| bytes.get(off..off + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |off: usize| {
        bytes.get(off..off + 8).map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    };
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(bad("not an ELF file"));
    }
    // EI_CLASS 2 = 64-bit, EI_DATA 1 = little endian, e_machine 62 = x86-64.
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) || u16_at(18) != Some(62) {
        return Err(bad("not an x86-64 ELF64 little-endian binary (the guests are x86-64)"));
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return Err(bad("truncated ELF header"));
    };
    let phoff = usize::try_from(phoff).map_err(|_| bad("program header offset out of range"))?;
    for i in 0..usize::from(phnum) {
        let Some(p_type) = u32_at(phoff + i * usize::from(phentsize)) else {
            return Err(bad("truncated program headers"));
        };
        if p_type == PT_INTERP {
            return Err(bad(&format!(
                "dynamically linked (it has an ELF interpreter), but the guest needs a static agent; build it with: {AGENT_BUILD_HINT}"
            )));
        }
    }
    Ok(())
}

/// Finds the static `testbed-agent`: `$TESTBED_AGENT` (which must be static), else the first static one of: next
/// to the running `testbed`, then this workspace's `target/x86_64-unknown-linux-gnu/{release,debug}/` (newer
/// first). A dynamic build in the way (`target/debug/testbed-agent` beside a debug `testbed`) is passed over.
pub fn locate_agent_binary() -> Result<PathBuf, SshError> {
    if let Some(path) = std::env::var_os("TESTBED_AGENT") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(SshError::AgentBinary(format!("$TESTBED_AGENT={} is not a file", path.display())));
        }
        check_static_elf(&path, &read_elf_head(&path)?)?;
        return Ok(path);
    }
    let beside_exe = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("testbed-agent")));
    let workspace_target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/x86_64-unknown-linux-gnu");
    let mut built: Vec<(std::time::SystemTime, PathBuf)> = ["release", "debug"]
        .iter()
        .map(|profile| workspace_target.join(profile).join("testbed-agent"))
        .filter_map(|p| std::fs::metadata(&p).ok().and_then(|m| m.modified().ok()).map(|t| (t, p)))
        .collect();
    built.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    let mut passed_over = Vec::new();
    for path in beside_exe.into_iter().chain(built.into_iter().map(|(_, p)| p)).filter(|p| p.is_file()) {
        match read_elf_head(&path).and_then(|head| check_static_elf(&path, &head)) {
            Ok(()) => return Ok(path),
            Err(e) => passed_over.push(e.to_string()),
        }
    }
    let found =
        if passed_over.is_empty() { String::new() } else { format!(" (passed over: {})", passed_over.join("; ")) };
    Err(SshError::AgentBinary(format!(
        "no static testbed-agent found ($TESTBED_AGENT unset, none next to the testbed executable, none in {}){found}; \
         build it with: {AGENT_BUILD_HINT}",
        workspace_target.display()
    )))
}

/// The start of an ELF file, enough for its header and program headers (linkers put them first), without
/// reading a 100 MB debug build whole.
fn read_elf_head(path: &Path) -> Result<Vec<u8>, SshError> {
    use std::io::Read as _;
    let mut head = Vec::with_capacity(64 * 1024);
    std::fs::File::open(path).and_then(|f| f.take(64 * 1024).read_to_end(&mut head)).map_err(io_err("read", path))?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    //! Against a real OpenSSH `sshd` started on loopback for each test (skipped when /usr/sbin/sshd is missing).

    use super::*;
    use std::process::{Child, Stdio};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const SSHD: &str = "/usr/sbin/sshd";

    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        listener.local_addr().expect("local addr").port()
    }

    /// One sshd on 127.0.0.1:<free port> with our generated host key and client key; killed by PID on drop.
    struct Sshd {
        child: Child,
        port: u16,
        dir: tempfile::TempDir,
        host: NodeKeys,
        client_key: PathBuf,
    }

    impl Sshd {
        fn start() -> Option<Sshd> {
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

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
        }

        async fn connect(&self) -> Session {
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

    #[test]
    fn generated_keys_are_openssh_and_private_is_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = generate_client_key(dir.path()).expect("client key");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"), "{text}");
        let public = std::fs::read_to_string(dir.path().join("id_ed25519.pub")).expect("read .pub");
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
        // Idempotent: a second call keeps the key the guests already trust.
        generate_client_key(dir.path()).expect("again");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
        // ssh-keygen (openssh-client) agrees that the private key derives the public one.
        let derived = std::process::Command::new("ssh-keygen").arg("-y").arg("-f").arg(&path).output();
        if let Ok(out) = derived {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let derived = String::from_utf8_lossy(&out.stdout);
            let key_of = |line: &str| line.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            assert_eq!(key_of(&derived), key_of(&public));
        }

        let host = generate_host_key().expect("host key");
        assert!(host.host_private_openssh.contains("OPENSSH PRIVATE KEY"));
        assert!(host.host_public_openssh.starts_with("ssh-ed25519 "));
        assert!(!format!("{host:?}").contains("PRIVATE"), "Debug must not print the private key");
    }

    #[test]
    fn known_hosts_lines_are_bracketed_and_comment_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = generate_host_key().expect("key a");
        let b = generate_host_key().expect("key b");
        let path = dir.path().join("known_hosts");
        write_known_hosts(&path, &[(2201, a.host_public_openssh.clone()), (2202, b.host_public_openssh.clone())])
            .expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let bare = |k: &str| k.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        assert_eq!(lines[0], format!("[127.0.0.1]:2201 {}", bare(&a.host_public_openssh)));
        assert_eq!(lines[1], format!("[127.0.0.1]:2202 {}", bare(&b.host_public_openssh)));
        assert!(write_known_hosts(&path, &[(1, "not a key".into())]).is_err());
    }

    #[test]
    fn interactive_command_pins_the_lab_known_hosts() {
        let cmd = interactive_ssh_command(
            2222,
            Path::new("/lab/id_ed25519"),
            Path::new("/lab/known_hosts"),
            &["uname", "-a"],
        );
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(cmd.get_program(), "ssh");
        let joined = args.join(" ");
        for want in [
            "-i /lab/id_ed25519",
            "-p 2222",
            "-o UserKnownHostsFile=\"/lab/known_hosts\"",
            "-o StrictHostKeyChecking=yes",
            "-o IdentitiesOnly=yes",
            "-o LogLevel=ERROR",
            "root@127.0.0.1 -- uname -a",
        ] {
            assert!(joined.contains(want), "missing `{want}` in `{joined}`");
        }
    }

    #[test]
    fn system_ssh_with_our_known_hosts_reaches_sshd_and_rejects_a_wrong_key() {
        let Some(sshd) = Sshd::start() else { return };
        if std::process::Command::new("ssh").arg("-V").output().is_err() {
            eprintln!("SKIP: no system ssh (openssh-client)");
            return;
        }
        // A space in the path, as in a home directory like `/home/Jo Doe`.
        let known_hosts = sshd.dir.path().join("lab dir").join("known_hosts");
        std::fs::create_dir_all(known_hosts.parent().expect("parent")).expect("mkdir");
        write_known_hosts(&known_hosts, &[(sshd.port, sshd.host.host_public_openssh.clone())]).expect("known_hosts");
        let out = interactive_ssh_command(sshd.port, &sshd.client_key, &known_hosts, &["echo", "via-system-ssh"])
            .stdin(Stdio::null())
            .output()
            .expect("run ssh");
        assert!(out.status.success(), "ssh failed: {}\n{}", String::from_utf8_lossy(&out.stderr), sshd.log());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "via-system-ssh\n");

        let other = generate_host_key().expect("other key");
        write_known_hosts(&known_hosts, &[(sshd.port, other.host_public_openssh)]).expect("known_hosts");
        let out = interactive_ssh_command(sshd.port, &sshd.client_key, &known_hosts, &["true"])
            .stdin(Stdio::null())
            .output()
            .expect("run ssh");
        assert_eq!(out.status.code(), Some(255), "StrictHostKeyChecking must refuse a changed host key");
    }

    #[test]
    fn static_elf_check_tells_static_from_dynamic() {
        let busybox = Path::new("/bin/busybox");
        if let Ok(bytes) = std::fs::read(busybox) {
            // Debian's busybox-static: no PT_INTERP.
            if std::fs::read_link(busybox).is_err() {
                check_static_elf(busybox, &bytes).expect("busybox-static is static");
            }
        }
        let sh = Path::new("/bin/sh");
        let bytes = std::fs::read(std::fs::canonicalize(sh).expect("resolve /bin/sh")).expect("read /bin/sh");
        let err = check_static_elf(sh, &bytes).expect_err("dash is dynamic").to_string();
        assert!(err.contains("crt-static"), "{err}");
        let err = check_static_elf(Path::new("x"), b"#!/bin/sh\n").expect_err("script").to_string();
        assert!(err.contains("not an ELF"), "{err}");
    }

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exec_returns_output_exit_codes_and_signals() {
        let Some(sshd) = Sshd::start() else { return };
        let session = sshd.connect().await;
        let out = session.exec("sh -c 'echo hi; echo oops >&2; exit 3'", None).await.expect("exec");
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"oops\n");
        assert_eq!(out.exit_code, 3);

        let out = session.exec("cat; echo done", Some(b"hello stdin\n")).await.expect("exec with stdin");
        assert_eq!(out.stdout_lossy(), "hello stdin\ndone\n");
        assert_eq!(out.exit_code, 0);

        // Killed by a signal: 128 + SIGTERM.
        let out = session.exec("sh -c 'kill -TERM $$'", None).await.expect("exec killed");
        assert_eq!(out.exit_code, 128 + libc::SIGTERM);

        // Big stdin and big stdout at the same time must not deadlock.
        let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let out = session.exec("cat", Some(&data)).await.expect("cat 4 MiB");
        assert_eq!(out.stdout.len(), data.len());
        assert!(out.stdout == data);

        // Many concurrent execs over one shared session (the suites do this): more than sshd's MaxSessions (10).
        let mut tasks = JoinSet::new();
        for i in 0..24 {
            let s = session.clone();
            tasks.spawn(async move { s.exec(&format!("sleep 0.3; echo {i}"), None).await });
        }
        let mut seen = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let out = done.expect("join").expect("exec");
            seen.push(out.stdout_lossy().trim().parse::<u32>().expect("number"));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..24).collect::<Vec<_>>());

        // Within its time: same output and status as exec.
        let out = session.exec_timeout("cat; echo err >&2; exit 5", Some(b"in\n"), Duration::from_secs(20)).await;
        let out = out.expect("exec_timeout in time");
        assert_eq!((out.stdout_lossy().as_str(), out.stderr_lossy().as_str(), out.exit_code), ("in\n", "err\n", 5));

        let tag = rand::random::<u16>();
        let (fg, bg) = (format!("sleep 30.{tag}1"), format!("sleep 30.{tag}2"));
        let err = session
            .exec_timeout(&format!("{bg} & {fg}; wait"), None, Duration::from_millis(500))
            .await
            .expect_err("timeout");
        assert!(matches!(err, SshError::ExecTimeout { .. }), "{err}");
        // The timed-out command and its children are killed, not left running on the node.
        let start = Instant::now();
        let alive = format!("pgrep -f '^({fg}|{bg})$'");
        while session.exec(&alive, None).await.expect("pgrep").exit_code == 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "`{fg}`/`{bg}` still run after exec_timeout");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The session survives a timed-out command.
        let out = session.exec("true", None).await.expect("after timeout");
        assert_eq!(out.exit_code, 0);

        let err = session.exec_checked("the failing step", "exit 7", None).await.expect_err("non-zero");
        assert!(err.to_string().contains("the failing step failed with exit code 7"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upload_is_atomic_with_mode_and_content() {
        let Some(sshd) = Sshd::start() else { return };
        let session = sshd.connect().await;
        let data: Vec<u8> = (0..5 * 1024 * 1024).map(|_| rand::random::<u8>()).collect();
        let target = sshd.dir.path().join("dir with space").join("up'load.bin");
        std::fs::create_dir(target.parent().expect("parent")).expect("mkdir");
        let target_str = target.to_str().expect("utf-8 path");
        let started = std::time::Instant::now();
        session.upload(&data, target_str, 0o750).await.expect("upload");
        eprintln!("upload of 5 MiB over loopback SSH took {:?}", started.elapsed());
        let on_disk = std::fs::read(&target).expect("read uploaded");
        assert_eq!(sha256_hex(&on_disk), sha256_hex(&data));
        let mode = std::fs::metadata(&target).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);
        let out = session.exec(&format!("sha256sum {}", shell_quote(target_str)), None).await.expect("sha256sum");
        assert!(out.stdout_lossy().starts_with(&sha256_hex(&data)));
        // No temporary file is left beside the target.
        let leftovers: Vec<_> = std::fs::read_dir(target.parent().expect("parent"))
            .expect("read_dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("testbed-upload"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // Into a directory that does not exist: a clear error, nothing created.
        let err = session.upload(b"x", "/nonexistent-testbed-dir/f", 0o644).await.expect_err("no dir");
        assert!(err.to_string().contains("upload of 1 bytes to /nonexistent-testbed-dir/f"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forward_reaches_a_loopback_server_and_dies_with_the_session() {
        let Some(sshd) = Sshd::start() else { return };
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let echo_port = echo.local_addr().expect("addr").port();
        let echo_task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = echo.accept().await else { return };
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let session = sshd.connect().await;
        let local = session.forward(echo_port).await.expect("forward");
        for round in 0..3 {
            let mut conn = TcpStream::connect(("127.0.0.1", local)).await.expect("connect to forward");
            let msg = format!("ping {round} through the forward");
            conn.write_all(msg.as_bytes()).await.expect("write");
            conn.shutdown().await.expect("shutdown");
            let mut back = String::new();
            conn.read_to_string(&mut back).await.expect("read echo");
            assert_eq!(back, msg);
        }
        // Many clients at once (reqwest pools, suites run checks in parallel), each with a larger payload.
        let mut clients = JoinSet::new();
        for i in 0..16u8 {
            clients.spawn(async move {
                let payload = vec![i; 256 * 1024];
                let mut conn = TcpStream::connect(("127.0.0.1", local)).await.expect("connect");
                let (mut r, mut w) = conn.split();
                let write = async {
                    w.write_all(&payload).await.expect("write");
                    w.shutdown().await.expect("shutdown");
                };
                let mut back = Vec::new();
                let read = r.read_to_end(&mut back);
                let ((), read) = tokio::join!(write, read);
                read.expect("read");
                assert!(back == payload, "client {i} got {} bytes back", back.len());
            });
        }
        while let Some(done) = clients.join_next().await {
            done.expect("client task");
        }

        // A forward to a port nobody listens on: the local client sees the connection end, not a hang.
        let dead = session.forward(free_port()).await.expect("forward to closed port");
        let mut conn = TcpStream::connect(("127.0.0.1", dead)).await.expect("connect");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await.expect("no hang");
        assert!(read.map(|n| n == 0).unwrap_or(true));

        let established = || {
            std::process::Command::new("ss")
                .args(["-Htn", "state", "established", &format!("( dport = :{} )", sshd.port)])
                .output()
                .ok()
                .map(|out| String::from_utf8_lossy(&out.stdout).lines().count())
        };
        if let Some(n) = established() {
            assert_eq!(n, 1, "one SSH connection while the session lives");
        }
        // The listener belongs to the session: gone when the last clone is dropped.
        drop(session);
        let start = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", local)).await.is_err() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "forward listener outlived its session");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // And the SSH connection itself is closed (no sshd session left behind per dropped Session).
        let start = Instant::now();
        while established().is_some_and(|n| n > 0) {
            assert!(start.elapsed() < Duration::from_secs(5), "SSH connection outlived its Session");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        echo_task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_pinned_key_is_a_hard_error_and_wrong_client_key_is_refused() {
        let Some(sshd) = Sshd::start() else { return };
        let other = generate_host_key().expect("other key");
        let start = Instant::now();
        let err = Session::connect(sshd.port, &sshd.client_key, &other.host_public_openssh, Duration::from_secs(20))
            .await
            .expect_err("must not connect");
        match &err {
            SshError::HostKeyMismatch { expected, got, .. } => {
                let bare = |k: &str| k.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                assert_eq!(bare(expected), bare(&other.host_public_openssh));
                assert_eq!(bare(got), bare(&sshd.host.host_public_openssh));
            }
            other => panic!("expected HostKeyMismatch, got {other}"),
        }
        // Not retried until the deadline.
        assert!(start.elapsed() < Duration::from_secs(5), "mismatch was retried: {:?}", start.elapsed());

        let stranger_dir = tempfile::tempdir().expect("tempdir");
        let stranger = generate_client_key(stranger_dir.path()).expect("stranger key");
        let err = Session::connect(sshd.port, &stranger, &sshd.host.host_public_openssh, Duration::from_secs(20))
            .await
            .expect_err("unknown client key");
        assert!(matches!(err, SshError::AuthRefused { .. }), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_port_fails_after_the_deadline_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = generate_client_key(dir.path()).expect("client key");
        let host = generate_host_key().expect("host key");
        let port = free_port();
        let start = Instant::now();
        let err = Session::connect(port, &key, &host.host_public_openssh, Duration::from_secs(2))
            .await
            .expect_err("nothing listens there");
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(4), "{waited:?}");
        let text = err.to_string();
        assert!(matches!(err, SshError::ConnectTimeout { attempts, .. } if attempts > 1), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")) && text.contains("refused"), "{text}");
    }

    /// How the forwarded port behaves while the "guest" boots, before sshd answers.
    #[derive(Clone, Copy, Debug)]
    enum Booting {
        /// Nothing listens yet: connection refused.
        Refused,
        /// slirp with the guest port still closed: accepted, then closed at once.
        AcceptThenClose,
        /// slirp while the guest has no network yet: accepted, then silence.
        AcceptThenSilence,
    }

    /// A port in front of the real sshd that behaves like `booting` for `boot_time`, then relays to sshd.
    async fn booting_front(
        sshd_port: u16,
        booting: Booting,
        boot_time: Duration,
    ) -> (u16, tokio::task::JoinHandle<()>) {
        let port = free_port();
        let task = tokio::spawn(async move {
            let ready_at = Instant::now() + boot_time;
            if matches!(booting, Booting::Refused) {
                tokio::time::sleep(boot_time).await;
            }
            let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind the front port");
            let mut held = Vec::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if Instant::now() < ready_at {
                    match booting {
                        Booting::AcceptThenSilence => held.push(inbound),
                        Booting::AcceptThenClose | Booting::Refused => drop(inbound),
                    }
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", sshd_port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        (port, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_retries_while_the_guest_boots() {
        let Some(sshd) = Sshd::start() else { return };
        for booting in [Booting::Refused, Booting::AcceptThenClose, Booting::AcceptThenSilence] {
            let boot_time = Duration::from_millis(1500);
            let (port, front) = booting_front(sshd.port, booting, boot_time).await;
            let start = Instant::now();
            let session =
                Session::connect(port, &sshd.client_key, &sshd.host.host_public_openssh, Duration::from_secs(15)).await;
            let waited = start.elapsed();
            let session = session.unwrap_or_else(|e| panic!("{booting:?}: {e}\n{}", sshd.log()));
            assert!(waited >= boot_time, "{booting:?}: {waited:?}");
            // A silent first connection is abandoned after the banner timeout, not after the 20 s attempt cap.
            assert!(waited < FIRST_BANNER_TIMEOUT + Duration::from_secs(3), "{booting:?}: {waited:?}");
            eprintln!("{booting:?}: connected after {waited:?}");
            assert_eq!(session.exec("echo up", None).await.expect("exec").stdout, b"up\n");
            front.abort();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_port_that_never_speaks_ssh_ends_in_a_timeout_naming_the_banner() {
        let (port, front) = booting_front(1, Booting::AcceptThenSilence, Duration::from_secs(3600)).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = generate_client_key(dir.path()).expect("client key");
        let host = generate_host_key().expect("host key");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let err = Session::connect(port, &key, &host.host_public_openssh, Duration::from_secs(3))
            .await
            .expect_err("silent port");
        assert!(err.to_string().contains("no SSH banner"), "{err}");
        front.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn push_agent_uploads_restarts_and_skips_an_identical_binary() {
        // A stand-in for the guest: a supervisor loop that runs the "agent" (static busybox serving /healthz over
        // HTTP) whenever the file exists and restarts it on exit, PID in a pid file: the image's contract.
        let Some(sshd) = Sshd::start() else { return };
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            eprintln!("SKIP: /bin/busybox (busybox-static) not found");
            return;
        }
        let dir = sshd.dir.path();
        let www = dir.join("www");
        std::fs::create_dir(&www).expect("mkdir www");
        std::fs::write(www.join("healthz"), r#"{"status":"ok","agent_version":"busybox-httpd"}"#).expect("healthz");
        let agent_port = free_port();
        let (bin, pid_file, log_file) = (dir.join("agent-bin"), dir.join("agent.pid"), dir.join("agent.log"));
        let script = format!(
            "while true; do if [ -x {bin} ]; then (exec -a busybox {bin} httpd -f -p 127.0.0.1:{agent_port} -h {www}) \
             >>{log} 2>&1 & echo $! > {pid}; wait $!; fi; sleep 1; done",
            bin = shell_quote(&bin.display().to_string()),
            www = shell_quote(&www.display().to_string()),
            log = shell_quote(&log_file.display().to_string()),
            pid = shell_quote(&pid_file.display().to_string()),
        );
        let mut supervisor = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn supervisor");
        let layout = AgentLayout {
            binary: bin.to_str().expect("utf-8"),
            pid_file: pid_file.to_str().expect("utf-8"),
            log_file: log_file.to_str().expect("utf-8"),
            port: agent_port,
        };

        let session = sshd.connect().await;
        let result = async {
            let agent = push_agent_with(&session, busybox, layout, Duration::from_secs(20)).await?;
            let health = agent.health().await.map_err(|e| SshError::AgentBinary(e.to_string()))?;
            assert_eq!(health.agent_version, "busybox-httpd");
            let first_pid = std::fs::read_to_string(&pid_file).expect("pid file");
            let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&bin).expect("stat agent"));

            // Same binary again: no upload (same inode), no restart (same PID), still healthy.
            push_agent_with(&session, busybox, layout, Duration::from_secs(20)).await?;
            assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&bin).expect("stat")), inode);
            assert_eq!(std::fs::read_to_string(&pid_file).expect("pid file"), first_pid);

            // Stamp gone (an agent baked into an image, an older testbed): the binary is hashed, still no upload.
            let stamp = dir.join("agent-bin.sha256");
            assert_eq!(
                std::fs::read_to_string(&stamp).expect("stamp"),
                sha256_hex(&std::fs::read(busybox).expect("bb"))
            );
            std::fs::remove_file(&stamp).expect("rm stamp");
            push_agent_with(&session, busybox, layout, Duration::from_secs(20)).await?;
            assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&bin).expect("stat")), inode);
            assert!(stamp.exists(), "stamp rewritten after hashing");

            // A different binary (same busybox plus trailing bytes, still a valid static ELF): uploaded + restarted.
            let mut changed = std::fs::read(busybox).expect("read busybox");
            changed.extend_from_slice(b"testbed-changed");
            let changed_path = dir.join("busybox-changed");
            std::fs::write(&changed_path, &changed).expect("write changed");
            push_agent_with(&session, &changed_path, layout, Duration::from_secs(20)).await?;
            assert_eq!(sha256_hex(&std::fs::read(&bin).expect("read agent")), sha256_hex(&changed));
            assert_ne!(std::fs::read_to_string(&pid_file).expect("pid file"), first_pid, "agent was not restarted");
            Ok::<(), SshError>(())
        }
        .await;

        // Stop the supervisor first (so it restarts nothing), then its current child, both by PID.
        let _ = supervisor.kill();
        let _ = supervisor.wait();
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        result.unwrap_or_else(|e| panic!("push_agent: {e}\nsshd log:\n{}", sshd.log()));
    }
}

#[cfg(test)]
mod guest_tests {
    //! Against a real guest: the built `debian-12` image booted under QEMU (TCG) with a seed carrying keys from
    //! this module. Ignored by default (boots a VM; builds the image first when it is not cached):
    //!
    //! ```text
    //! cargo test -p testbed ssh::guest_tests -- --ignored --nocapture
    //! ```

    use super::*;
    use crate::image::seed::{write_seed, SeedConfig};
    use crate::plan::ImageRef;
    use crate::ui::{OutputFormat, Ui};
    use std::process::{Child, Command, Stdio};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// The QEMU process, killed by PID on drop.
    struct Vm(Child);

    impl Drop for Vm {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "boots a QEMU guest (TCG), about a minute"]
    async fn real_guest_connect_exec_upload_forward_push_agent() {
        let ui = Ui::new(OutputFormat::Text, true);
        let image = crate::image::ensure(&ui, &ImageRef::Named("debian-12".into())).await.expect("debian-12 image");
        let dir = tempfile::tempdir().expect("tempdir");
        let client_key = generate_client_key(dir.path()).expect("client key");
        let client_pub = std::fs::read_to_string(dir.path().join("id_ed25519.pub")).expect("read .pub");
        let host = generate_host_key().expect("host key");
        let seed = SeedConfig {
            hostname: "sshtest".into(),
            host_key_ed25519_private: host.host_private_openssh.clone(),
            host_key_ed25519_public: host.host_public_openssh.clone(),
            authorized_keys: vec![client_pub.trim().to_string()],
            nics: Vec::new(),
        };
        write_seed(&dir.path().join("seed.img"), &seed).expect("seed");
        let overlay = dir.path().join("overlay.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&image.disk)
            .arg(&overlay)
            .status()
            .expect("qemu-img");
        assert!(st.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let serial = dir.path().join("serial.log");
        let (Some(kernel), Some(initrd)) = (&image.kernel, &image.initrd) else { panic!("built image has a kernel") };
        let started = Instant::now();
        let _vm = Vm(Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-smp", "1", "-m", "768", "-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", &image.cmdline])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw,readonly=on", dir.path().join("seed.img").display()))
            .args(["-netdev", &format!("user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22")])
            .args(["-device", "virtio-net-pci,netdev=mgmt"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64"));
        let serial_log = || std::fs::read_to_string(&serial).unwrap_or_default();

        // Connect while the guest boots: the retries are the point.
        let session = Session::connect(port, &client_key, &host.host_public_openssh, Duration::from_secs(180))
            .await
            .unwrap_or_else(|e| panic!("connect: {e}\nserial:\n{}", serial_log()));
        eprintln!("SSH session after {:?} from QEMU start", started.elapsed());

        // A wrong pinned key against the real guest is refused at once.
        let other = generate_host_key().expect("other key");
        let err = Session::connect(port, &client_key, &other.host_public_openssh, Duration::from_secs(30))
            .await
            .expect_err("wrong pin");
        assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");

        let t = Instant::now();
        let out = session.exec("sh -c 'hostname; exit 3'", None).await.expect("exec");
        eprintln!("exec round trip {:?}", t.elapsed());
        assert_eq!(out.stdout_lossy().trim(), "sshtest");
        assert_eq!(out.exit_code, 3);

        let err = session.exec_timeout("sleep 40.5", None, Duration::from_secs(2)).await.expect_err("timeout");
        assert!(matches!(err, SshError::ExecTimeout { .. }), "{err}");
        let start = Instant::now();
        while session.exec("pgrep -f '^sleep 40.5$'", None).await.expect("pgrep").exit_code == 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "timed-out command still runs in the guest");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let data: Vec<u8> = (0..5 * 1024 * 1024).map(|_| rand::random::<u8>()).collect();
        let t = Instant::now();
        session.upload(&data, "/root/blob", 0o640).await.expect("upload");
        let took = t.elapsed();
        eprintln!("upload 5 MiB to the guest: {took:?} ({:.1} MiB/s)", 5.0 / took.as_secs_f64());
        let out = session.exec("sha256sum /root/blob; stat -c %a /root/blob", None).await.expect("verify");
        let text = out.stdout_lossy();
        assert!(text.starts_with(&sha256_hex(&data)), "{text}");
        assert!(text.trim_end().ends_with("640"), "{text}");
        // Again, now that boot-time work in the guest is over.
        let t = Instant::now();
        session.upload(&data, "/root/blob", 0o640).await.expect("upload again");
        let took = t.elapsed();
        eprintln!("upload 5 MiB again: {took:?} ({:.1} MiB/s)", 5.0 / took.as_secs_f64());

        // Forward to a server listening on the guest's loopback only.
        session
            .exec("busybox nc -l -p 7171 -e /bin/cat >/dev/null 2>&1 </dev/null & sleep 0.5", None)
            .await
            .expect("start guest echo");
        let local = session.forward(7171).await.expect("forward");
        let mut conn = TcpStream::connect(("127.0.0.1", local)).await.expect("connect forward");
        conn.write_all(b"through slirp and ssh\n").await.expect("write");
        let mut buf = vec![0u8; 22];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .expect("read echo");
        assert_eq!(buf, b"through slirp and ssh\n");
        drop(conn);

        // The real agent, when it has been built static.
        match locate_agent_binary() {
            Ok(agent) => {
                let t = Instant::now();
                let client = push_agent(&session, &agent).await.unwrap_or_else(|e| panic!("push_agent: {e}"));
                eprintln!(
                    "push_agent ({} MiB) + healthy: {:?}",
                    std::fs::metadata(&agent).map(|m| m.len() >> 20).unwrap_or(0),
                    t.elapsed()
                );
                let health = client.health().await.expect("health");
                eprintln!("agent health: {health:?}");
                let t = Instant::now();
                push_agent(&session, &agent).await.expect("second push (unchanged)");
                eprintln!("second push_agent (no upload): {:?}", t.elapsed());
            }
            Err(e) => eprintln!("SKIP push_agent: {e}"),
        }
    }
}
