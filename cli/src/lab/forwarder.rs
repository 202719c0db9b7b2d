//! The host's way to the lab's API server. The API server listens on the control-plane nodes' underlay
//! addresses, which exist only inside the lab (its netns and VMs); the host reaches a guest only through its
//! SSH port. So `up` leaves a small detached process behind, `testbed forward-api` (hidden): it listens on the
//! host's 127.0.0.1 and carries every connection over an SSH direct-tcpip channel to a control-plane node's
//! underlay address, port 6443 (trying the next member when one does not answer). The kubeconfig names that
//! local port; TLS runs end to end between kubectl and the API server, so the forwarder sees only ciphertext.
//!
//! Why a process and not the CLI's own forward: kubectl runs after `up` has returned. Why not OpenSSH's `ssh
//! -L`: the forwarder reuses the lab's pinned host keys and russh sessions and fails over between members.
//! Its PID and /proc start time are in `<lab dir>/forwarder.json`; `down` stops it by that PID only while the
//! start time and its command line (`forward-api --lab <lab>`) still match, so a reused PID is never signalled.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt as _;
use tokio::net::{TcpListener, TcpStream};

use crate::guest::Session;
use crate::plan::API_PORT;
use crate::provider::qemu::procs;

use super::dir::LabDir;
use super::handle::Lab;

/// The hidden subcommand's name (also what `down` looks for in the process's command line).
pub const SUBCOMMAND: &str = "forward-api";
/// How long `up` waits for a new forwarder to say which port it listens on.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The first SSH connection, made while the VMs boot.
const FIRST_CONNECT_DEADLINE: Duration = Duration::from_secs(60);
/// Later ones (the VMs are up; a member that does not answer soon is skipped for the next one).
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// A member that is not the last one to try gets this long: a dead member is tried again on every new
/// connection, and with 10 s the next member came too late for kubectl's fixed 10 s TLS handshake timeout.
const FAILOVER_CONNECT_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    // The cause is in the message and not a `source`: `{:#}` would print it twice.
    #[error("API forwarder: cannot {action}: {error}")]
    Io { action: String, error: std::io::Error },
    #[error("API forwarder did not start: {0}")]
    NotStarted(String),
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> ForwarderError {
    let action = action.into();
    move |error| ForwarderError::Io { action, error }
}

/// What `up` recorded about the running forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwarderRecord {
    pub pid: u32,
    /// Field 22 of /proc/<pid>/stat at start.
    pub start_time: u64,
    /// Its port on the host's 127.0.0.1.
    pub port: u16,
}

fn record_path(dir: &LabDir) -> PathBuf {
    dir.root.join("forwarder.json")
}

pub fn log_path(dir: &LabDir) -> PathBuf {
    dir.root.join("forwarder.log")
}

pub fn read_record(dir: &LabDir) -> Option<ForwarderRecord> {
    serde_json::from_slice(&std::fs::read(record_path(dir)).ok()?).ok()
}

/// True while the recorded process runs and is this lab's forwarder (same start time, same command line).
pub fn is_running(dir: &LabDir, rec: &ForwarderRecord) -> bool {
    if !procs::is_same_process(rec.pid, rec.start_time) {
        return false;
    }
    let Some(args) = procs::argv(rec.pid) else { return false };
    args.iter().any(|a| a == SUBCOMMAND) && args.windows(2).any(|w| w[0] == "--lab" && w[1] == dir.name)
}

/// Stops the lab's forwarder (SIGTERM, SIGKILL after 2 s) and forgets it; returns its PID when one ran.
pub fn stop(dir: &LabDir) -> Result<Option<u32>, ForwarderError> {
    let Some(rec) = read_record(dir) else { return Ok(None) };
    let mut stopped = None;
    if is_running(dir, &rec) {
        let pid = nix::unistd::Pid::from_raw(rec.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && is_running(dir, &rec) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if is_running(dir, &rec) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        stopped = Some(rec.pid);
    }
    match std::fs::remove_file(record_path(dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove forwarder.json")(e)),
        _ => Ok(stopped),
    }
}

/// The lab's running forwarder, or a new one (on the port the last one had, when it is still free).
pub async fn ensure(dir: &LabDir) -> Result<ForwarderRecord, ForwarderError> {
    let previous = read_record(dir);
    if let Some(rec) = previous.filter(|r| is_running(dir, r)) {
        return Ok(rec);
    }
    if let Some(rec) = previous {
        if let Ok(rec) = spawn(dir, rec.port).await {
            return Ok(rec);
        }
    }
    spawn(dir, 0).await
}

/// A new forwarder in place of the lab's current one (on its port when it is still free): a re-converging `up`
/// may replace machines whose sessions and host keys the old one holds.
pub async fn restart(dir: &LabDir) -> Result<ForwarderRecord, ForwarderError> {
    let previous = read_record(dir);
    stop(dir)?;
    if let Some(rec) = previous {
        if let Ok(rec) = spawn(dir, rec.port).await {
            return Ok(rec);
        }
    }
    spawn(dir, 0).await
}

/// Starts a detached forwarder for the lab (its own process group: Ctrl-C in `up`'s terminal does not reach
/// it), reads the port it listens on from its first line of output, and records it.
async fn spawn(dir: &LabDir, port: u16) -> Result<ForwarderRecord, ForwarderError> {
    let exe = std::env::current_exe().map_err(io("find the testbed executable"))?;
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(log_path(dir)).map_err(io("open forwarder.log"))?;
    let mut child = tokio::process::Command::new(exe)
        .args([SUBCOMMAND, "--lab", &dir.name, "--port", &port.to_string()])
        .env("TESTBED_STATE_DIR", &dir.state_root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(io("start `testbed forward-api`"))?;
    let pid = child.id().ok_or_else(|| ForwarderError::NotStarted("exited at once".into()))?;
    let mut line = String::new();
    let read = match child.stdout.take() {
        Some(out) => tokio::time::timeout(START_TIMEOUT, tokio::io::BufReader::new(out).read_line(&mut line)).await,
        None => return Err(ForwarderError::NotStarted("no stdout".into())),
    };
    let port = match (read, line.trim().parse::<u16>()) {
        (Ok(Ok(_)), Ok(p)) => p,
        _ => {
            // Our own child, not reaped yet: its PID cannot have been reused.
            let _ = child.kill().await;
            let tail = super::dir::log_tail(&log_path(dir), 1000);
            return Err(ForwarderError::NotStarted(format!("no port announced; forwarder.log: {}", tail.trim())));
        }
    };
    let start_time =
        procs::start_time(pid).ok_or_else(|| ForwarderError::NotStarted("exited after starting".into()))?;
    let rec = ForwarderRecord { pid, start_time, port };
    let json = serde_json::to_vec(&rec).map_err(|e| io("encode forwarder.json")(std::io::Error::other(e)))?;
    std::fs::write(record_path(dir), json).map_err(io("write forwarder.json"))?;
    Ok(rec)
}

/// The forwarder itself (`testbed forward-api --lab LAB --port PORT`): listens on 127.0.0.1:PORT (0: any free
/// port), prints the port on stdout, then serves until it is signalled.
pub async fn run(lab: Lab, port: u16) -> Result<(), ForwarderError> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(io(format!("listen on 127.0.0.1:{port}")))?;
    let port = listener.local_addr().map_err(io("read the local address"))?.port();
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{port}").and_then(|()| out.flush()).map_err(io("announce the port"))?;
    }
    // `up` may have been started from a terminal that goes away: a hang-up must not end the forwarder.
    let _hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let members: Vec<(String, Ipv4Addr)> =
        lab.plan.control_plane_members().iter().map(|(n, ip)| (n.name.clone(), *ip)).collect();
    let sessions = members.iter().map(|_| tokio::sync::Mutex::new(None)).collect();
    let paths = Arc::new(Paths { lab, members, sessions });
    eprintln!("forward-api: 127.0.0.1:{port} -> {:?} port {API_PORT}", paths.members);
    // Connect to the first member now, while `up` still brings the nodes up: its handshake is then off the
    // path of `up`'s first probe of the API.
    if !paths.members.is_empty() {
        let early = paths.clone();
        tokio::spawn(async move { early.session(0, FIRST_CONNECT_DEADLINE).await });
    }
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("forward-api: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let paths = paths.clone();
        tokio::spawn(async move { paths.pump(tcp).await });
    }
}

/// The control-plane members and an SSH session to each that has been needed so far (one lock per member:
/// a member that is slow to connect holds up only its own connections).
struct Paths {
    lab: Lab,
    members: Vec<(String, Ipv4Addr)>,
    sessions: Vec<tokio::sync::Mutex<Option<Session>>>,
}

impl Paths {
    /// Carries one client connection to the first member whose API port takes it.
    async fn pump(&self, mut tcp: TcpStream) {
        for i in 0..self.members.len() {
            let last = i + 1 == self.members.len();
            let deadline = if last { CONNECT_DEADLINE } else { FAILOVER_CONNECT_DEADLINE };
            let Some(session) = self.session(i, deadline).await else { continue };
            let (node, ip) = &self.members[i];
            // A member that died keeps its SSH session open until the keepalives give up (~30 s), and a
            // channel opened on it meanwhile is never answered: the same deadline bounds the open.
            match tokio::time::timeout(deadline, session.connect_tcp(&ip.to_string(), API_PORT)).await {
                Ok(Ok(mut remote)) => {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut remote).await;
                    return;
                }
                Ok(Err(e)) => eprintln!("forward-api: {node}: {e}"),
                Err(_) => eprintln!("forward-api: {node}: no channel to port {API_PORT} within {deadline:?}"),
            }
        }
        // Nothing took it: closing the socket tells the client, as a refused connection would.
    }

    /// The session to member `i`, connecting (again) when there is none or it has closed.
    async fn session(&self, i: usize, deadline: Duration) -> Option<Session> {
        let mut slot = self.sessions[i].lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Some(s.clone());
        }
        let node = &self.members[i].0;
        match self.lab.session(node, deadline).await {
            Ok(s) => {
                *slot = Some(s.clone());
                Some(s)
            }
            Err(e) => {
                eprintln!("forward-api: {node}: {e}");
                *slot = None;
                None
            }
        }
    }
}
