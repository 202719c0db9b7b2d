//! The russh session to one guest: connect (retrying while the guest boots, host key pinned), exec, atomic
//! upload and port forwarding.
//!
//! Every guest is reached on `127.0.0.1:<port>` (QEMU's user-mode `hostfwd` today), always as `root`, always by
//! public key. The guest's host key is generated on the host and pinned: the server must present exactly that
//! key, anything else is a hard error (no trust-on-first-use, no retry).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::keys::parse_public;

/// The only user testbed logs in as.
pub const USER: &str = "root";
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

    /// True once the connection is gone (the guest rebooted or died): a new session is needed.
    pub fn is_closed(&self) -> bool {
        self.inner.handle.is_closed()
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

impl Session {
    /// A TCP connection made by the guest's sshd to `host:port` (a direct-tcpip channel): what [`forward`]
    /// does per connection, for an address other than the guest's loopback (the API server listens on the
    /// node's underlay address only).
    ///
    /// [`forward`]: Self::forward
    pub async fn connect_tcp(&self, host: &str, port: u16) -> Result<russh::ChannelStream<client::Msg>, SshError> {
        let channel = self
            .inner
            .handle
            .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
            .await
            .map_err(self.protocol(format!("open a channel to {host}:{port}")))?;
        Ok(channel.into_stream())
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

#[cfg(test)]
mod tests {
    //! Against a real OpenSSH `sshd` started on loopback for each test (skipped when /usr/sbin/sshd is missing).

    use super::*;
    use crate::guest::keys::{generate_client_key, generate_host_key};
    use crate::guest::test_sshd::{free_port, Sshd};
    use sha2::Digest as _;
    use std::os::unix::fs::PermissionsExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn sha256_hex(data: &[u8]) -> String {
        hex::encode(sha2::Sha256::digest(data))
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
}
