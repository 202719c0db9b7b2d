//! Getting the node agent into a guest, for every provider: find the static binary on the host, check that it
//! is one, copy it from the agent disk (the fast path) or upload it over SSH, make the guest's supervisor
//! (re)start it and wait until its API answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use super::agent_client::{AgentClient, AgentError};
use super::session::{shell_quote, Session, SshError};

/// Where the guest's supervisor expects the agent (guest boot contract); it writes the agent's PID and log to
/// the two files below.
pub const AGENT_GUEST_PATH: &str = "/usr/local/bin/testbed-agent";
const AGENT_PID_FILE: &str = "/run/testbed-agent.pid";
const AGENT_LOG_FILE: &str = "/var/log/testbed-agent.log";
/// The agent disk as the guest sees it: the third virtio disk, after the overlay and the seed.
const AGENT_DISK_GUEST_DEVICE: &str = "/dev/vdc";
/// Beside the agent, so that the final rename is atomic and the supervisor never starts a partial copy.
const AGENT_DISK_STAGING: &str = "/usr/local/bin/.testbed-agent.vdc";
/// How long the restarted agent may take to answer /healthz (supervisor backoff is 1 s; TCG is slow).
const AGENT_START_DEADLINE: Duration = Duration::from_secs(60);
/// The command that builds the agent the way `locate_agent_binary` wants it.
pub const AGENT_BUILD_HINT: &str =
    "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build -p testbed-agent --release --target x86_64-unknown-linux-gnu";

#[derive(Debug, thiserror::Error)]
pub enum AgentDeployError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent binary: {0}")]
    Binary(String),
    #[error("agent on 127.0.0.1:{port} did not become healthy within {waited:.1?}: {last}\n--- tail of {log_file} ---\n{log_tail}")]
    NotHealthy { port: u16, waited: Duration, last: Box<AgentError>, log_file: String, log_tail: String },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AgentDeployError + 'a {
    move |source| AgentDeployError::Io { action, path: path.to_path_buf(), source }
}

/// Writes the agent disk: the agent binary padded to 512-byte sectors (QEMU raw disks are whole sectors), for a
/// provider to attach read-only as the guest's [`AGENT_DISK_GUEST_DEVICE`]. Written beside and renamed, so VMs
/// still running keep reading the previous version. Returns the binary's size, which [`deploy`] needs to cut
/// the padding off again.
pub fn write_agent_disk(agent: &Path, disk: &Path) -> Result<u64, AgentDeployError> {
    let mut bytes = std::fs::read(agent).map_err(io_err("read", agent))?;
    let size = bytes.len() as u64;
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    let tmp = disk.with_extension("img.tmp");
    std::fs::write(&tmp, &bytes).map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, disk).map_err(io_err("rename into place", disk))?;
    Ok(size)
}

/// Gets `agent_binary` running on the node behind `session` and returns a client of its API, named `node`.
/// `agent_disk_size` is the binary's size when the guest has the agent disk attached (see
/// [`write_agent_disk`]): the binary is then first copied from that disk, which is much faster than an upload
/// under TCG (8 MB took 13-60 s), and [`push_agent`] finds the same checksum and skips the upload. Any failure
/// of that copy only means that `push_agent` uploads the binary over SSH.
pub async fn deploy(
    session: &Session,
    node: &str,
    agent_binary: &Path,
    agent_disk_size: Option<u64>,
) -> Result<AgentClient, AgentDeployError> {
    if let Some(size) = agent_disk_size {
        let copy = format!(
            "mkdir -p /usr/local/bin && head -c {size} {AGENT_DISK_GUEST_DEVICE} > {AGENT_DISK_STAGING} && \
             chmod 755 {AGENT_DISK_STAGING} && mv -f {AGENT_DISK_STAGING} {AGENT_GUEST_PATH}"
        );
        let _ = session.exec(&copy, None).await;
    }
    Ok(push_agent(session, agent_binary).await?.with_node(node))
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
        binary: AGENT_GUEST_PATH,
        pid_file: AGENT_PID_FILE,
        log_file: AGENT_LOG_FILE,
        port: testbed_api::AGENT_PORT,
    };
}

/// Upload the static agent when the guest's copy differs, make the supervisor (re)start it, and wait for
/// `GET /healthz` through a forward of the agent port. The client names the node by its SSH port; use
/// [`AgentClient::with_node`] to give it the node's name.
pub async fn push_agent(session: &Session, agent_binary: &Path) -> Result<AgentClient, AgentDeployError> {
    push_agent_with(session, agent_binary, AgentLayout::GUEST, AGENT_START_DEADLINE).await
}

async fn push_agent_with(
    session: &Session,
    agent_binary: &Path,
    layout: AgentLayout<'_>,
    start_deadline: Duration,
) -> Result<AgentClient, AgentDeployError> {
    // Reading and hashing ~100 MB (a debug agent) is blocking work: keep it off the async workers.
    let path = agent_binary.to_path_buf();
    let (binary, local_sha) = tokio::task::spawn_blocking(move || {
        let binary = std::fs::read(&path).map_err(io_err("read", &path))?;
        check_static_elf(&path, &binary)?;
        let sha = sha256_hex(&binary);
        Ok::<_, AgentDeployError>((binary, sha))
    })
    .await
    .map_err(|e| AgentDeployError::Binary(format!("{}: hashing task failed: {e}", agent_binary.display())))??;
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
                return Err(AgentDeployError::NotHealthy {
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
fn check_static_elf(path: &Path, bytes: &[u8]) -> Result<(), AgentDeployError> {
    let bad = |why: &str| AgentDeployError::Binary(format!("{}: {why}", path.display()));
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
pub fn locate_agent_binary() -> Result<PathBuf, AgentDeployError> {
    if let Some(path) = std::env::var_os("TESTBED_AGENT") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(AgentDeployError::Binary(format!("$TESTBED_AGENT={} is not a file", path.display())));
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
    Err(AgentDeployError::Binary(format!(
        "no static testbed-agent found ($TESTBED_AGENT unset, none next to the testbed executable, none in {}){found}; \
         build it with: {AGENT_BUILD_HINT}",
        workspace_target.display()
    )))
}

/// The start of an ELF file, enough for its header and program headers (linkers put them first), without
/// reading a 100 MB debug build whole.
fn read_elf_head(path: &Path) -> Result<Vec<u8>, AgentDeployError> {
    use std::io::Read as _;
    let mut head = Vec::with_capacity(64 * 1024);
    std::fs::File::open(path).and_then(|f| f.take(64 * 1024).read_to_end(&mut head)).map_err(io_err("read", path))?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::test_sshd::{free_port, Sshd};
    use std::process::Stdio;

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
            let health = agent.health().await.map_err(|e| AgentDeployError::Binary(e.to_string()))?;
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
            Ok::<(), AgentDeployError>(())
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

    #[test]
    fn agent_disk_is_whole_sectors_and_keeps_the_exact_size() {
        let tmp = tempfile::tempdir().unwrap();
        let agent = tmp.path().join("agent");
        std::fs::write(&agent, vec![7u8; 1000]).unwrap();
        let disk = tmp.path().join("agent.img");
        assert_eq!(write_agent_disk(&agent, &disk).unwrap(), 1000);
        let bytes = std::fs::read(&disk).unwrap();
        assert_eq!(bytes.len(), 1024);
        assert!(bytes[..1000].iter().all(|b| *b == 7) && bytes[1000..].iter().all(|b| *b == 0));
    }
}
