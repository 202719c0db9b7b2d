//! A blocking HTTP/1.1 client for a node agent's API on this host (127.0.0.1:AGENT_PORT), for tests that start
//! the agent binary themselves. Hand-written on purpose: one request per connection (`Connection: close`), and
//! a test can also send a request and hang up mid-way, which no ordinary client does.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use serde_json::Value;
use testbed_api::AGENT_PORT;

/// How long a request may wait for the agent's answer (an exec runs to its own timeout first).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

fn connect() -> std::io::Result<TcpStream> {
    TcpStream::connect(("127.0.0.1", AGENT_PORT))
}

/// Sends one request with an optional JSON body; answers the status code and the JSON body (Null when the
/// body is not JSON). An error means the agent could not be reached (not yet listening, or gone).
pub fn try_request(method: &str, path: &str, body: Option<Value>) -> std::io::Result<(u16, Value)> {
    let mut s = connect()?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code: u16 = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let head_end = resp.find("\r\n\r\n").map_or(resp.len(), |i| i + 4);
    let head = &resp[..head_end];
    let mut payload = resp[head_end..].to_string();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        payload = dechunk(&payload);
    }
    Ok((code, serde_json::from_str(&payload).unwrap_or(Value::Null)))
}

/// `try_request` for an agent that must be up: panics, naming the request, when it cannot be reached.
pub fn request(method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    try_request(method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Sends a request and hangs up `after` without reading the answer (a CLI that timed out or was interrupted).
pub fn send_and_hang_up(method: &str, path: &str, body: Option<Value>, after: Duration) {
    let mut s = connect().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    // Let the agent start on it, then close: the handler would be cancelled mid-way.
    std::thread::sleep(after);
    s.shutdown(Shutdown::Both).unwrap_or_else(|e| panic!("{method} {path}: shutdown: {e}"));
}

/// The body of a `Transfer-Encoding: chunked` answer, joined.
fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunk_joins_chunks_up_to_the_last() {
        assert_eq!(dechunk("4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"), "{\"a\":1}");
        assert_eq!(dechunk(""), "");
    }
}
