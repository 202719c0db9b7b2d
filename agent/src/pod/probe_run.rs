//! One probe of a container, run for real (`LinuxProcesses::probe`): `exec` through the exec launcher in
//! every namespace and the cgroup of the container (as `testbed exec --pod -c`), `httpGet` and `tcpSocket`
//! from the node's agent to the pod's IP, as the kubelet probes from the node (pkg/probe/{exec,http,tcp}).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use testbed_api::probe::{PortRef, Probe, ProbeKind};
use testbed_api::ExecRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::exec::{run_exec, ExecTarget};

/// What one probe needs to know about the container.
pub struct ProbeTarget<'a> {
    pub container: &'a str,
    pub kind: ProbeKind,
    pub probe: &'a Probe,
    /// The container's namespaces, for `exec`.
    pub exec: Option<ExecTarget>,
    /// The pod's IP, for `httpGet` and `tcpSocket`.
    pub ip: Option<Ipv4Addr>,
}

/// The kubelet's User-Agent for HTTP probes of a v1.32 node.
const USER_AGENT: &str = "kube-probe/1.32";
/// The most of an HTTP answer read: the status line is all that decides.
const HTTP_HEAD_MAX: usize = 4096;

/// Whether the probe succeeded within its `timeoutSeconds`; why not, when it did not.
pub async fn run(exe: &Path, t: ProbeTarget<'_>) -> Result<(), String> {
    let what = format!("{} of container {}", t.kind.field(), t.container);
    run_handler(exe, t).await.map_err(|why| format!("{what}: {why}"))
}

async fn run_handler(exe: &Path, t: ProbeTarget<'_>) -> Result<(), String> {
    let timeout = t.probe.timeout();
    if let Some(exec) = &t.probe.exec {
        let target = t.exec.as_ref().ok_or("the container is not running")?;
        let req = ExecRequest {
            container: None,
            command: exec.command.clone(),
            stdin: None,
            timeout_secs: Some(timeout.as_secs().max(1)),
        };
        let answer = run_exec(exe, target, &req).await.map_err(|e| e.to_string())?;
        return match (answer.timed_out, answer.exit_code) {
            (true, _) => Err(format!("command timed out after {} s", timeout.as_secs())),
            (false, 0) => Ok(()),
            (false, code) => Err(format!("command exited with {code}: {}", answer.stdout.trim())),
        };
    }
    let ip = t.ip.ok_or("the pod has no IP")?;
    let port = |p: &PortRef| match p {
        PortRef::Number(n) => u16::try_from(*n).map_err(|_| format!("port {n} out of range")),
        PortRef::Name(name) => Err(format!("port name `{name}` was not resolved")),
    };
    let (addr, path) = match (&t.probe.http_get, &t.probe.tcp_socket) {
        (Some(h), _) => (SocketAddr::from((ip, port(&h.port)?)), Some(h.path.as_deref().unwrap_or("/"))),
        (_, Some(s)) => (SocketAddr::from((ip, port(&s.port)?)), None),
        _ => return Err("the probe has no handler".into()),
    };
    match tokio::time::timeout(timeout, connect_and_get(addr, path)).await {
        Ok(result) => result,
        Err(_) => Err(format!("{addr}: no answer within {} s", timeout.as_secs())),
    }
}

/// A TCP connection to `addr`, and with a `path` a GET whose status must be 200-399 (as the kubelet's, a
/// redirect counts as success; it is not followed).
async fn connect_and_get(addr: SocketAddr, path: Option<&str>) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("{addr}: {e}"))?;
    let Some(path) = path else { return Ok(()) };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("{addr}: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < HTTP_HEAD_MAX {
        let n = stream.read(&mut buf).await.map_err(|e| format!("{addr}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    match http_status(line) {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(format!("GET http://{addr}{path}: HTTP {code}")),
        None => Err(format!("GET http://{addr}{path}: not an HTTP answer: {line:?}")),
    }
}

/// The status code of an HTTP/1.x status line.
fn http_status(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(http_status("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(http_status("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(http_status("SSH-2.0-OpenSSH"), None);
    }

    #[tokio::test]
    async fn http_and_tcp_against_a_loopback_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            for answer in ["HTTP/1.1 204 No Content\r\n\r\n", "HTTP/1.1 500 Oops\r\n\r\n"] {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        assert_eq!(connect_and_get(addr, Some("/healthz")).await, Ok(()));
        let err = connect_and_get(addr, Some("/healthz")).await.unwrap_err();
        assert!(err.ends_with("HTTP 500"), "{err}");
        let closed = SocketAddr::from(([127, 0, 0, 1], 1));
        assert!(connect_and_get(closed, None).await.is_err());
    }
}
