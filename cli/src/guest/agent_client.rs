//! Typed HTTP client for one node's `testbed-agent`, reached through an SSH forward on `127.0.0.1:<port>`.
//! Every error names the node, the method and endpoint, and carries the agent's `ApiError` on 4xx/5xx.

use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use testbed_api::{
    ApiError, ApplyResponse, ControlPlaneJoin, ExecRequest, ExecResponse, Health, LogChunk, LogQuery,
    NetworkPolicyStatus, NodeSpec, NodeStatus, PodSpec, PodStatus,
};

/// Most calls are quick; this bounds a hung agent or a stalled forward.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Health probes are polled in a loop while the agent starts; each must fail fast.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// Applying a NodeSpec creates devices and routes; under TCG that can take a while.
const APPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// The agent's own default exec timeout (ExecRequest::timeout_secs) when the request leaves it unset.
const AGENT_DEFAULT_EXEC_SECS: u64 = 30;
/// Added to an exec's own timeout so the agent's kill-and-report arrives before we give up.
const EXEC_GRACE: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent on {node}: {method} {endpoint}: {source}")]
    Transport {
        node: String,
        method: Method,
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("agent on {node}: {method} {endpoint} answered {status}: {body}")]
    Api { node: String, method: Method, endpoint: String, status: StatusCode, body: ApiError },
    #[error("agent on {node}: {method} {endpoint} answered {status} with an unexpected body ({detail}): {text}")]
    BadBody { node: String, method: Method, endpoint: String, status: StatusCode, detail: String, text: String },
    #[error("agent on {node}: cannot build the HTTP client: {message}")]
    Client { node: String, message: String },
}

impl AgentError {
    /// HTTP status of an answered request (None for transport failures).
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            AgentError::Api { status, .. } | AgentError::BadBody { status, .. } => Some(*status),
            AgentError::Transport { .. } | AgentError::Client { .. } => None,
        }
    }

    /// The agent refused the request as asked (4xx: no such pod or container, a bad field).
    pub fn is_client_error(&self) -> bool {
        self.status().is_some_and(|s| s.is_client_error())
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// The agent's error body on 4xx/5xx.
    #[cfg(test)]
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            AgentError::Api { body, .. } => Some(body),
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn is_timeout(&self) -> bool {
        matches!(self, AgentError::Transport { source, .. } if source.is_timeout())
    }
}

/// What an agent did with [`AgentClient::join_control_plane`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// It follows the lab's API server from now on.
    Joined,
    /// It has no `/v1/control-plane` endpoint (404): an agent built before agents followed the API. The lab
    /// works as before, driven by the CLI alone.
    NotSupported,
}

/// Client for one node's agent. Cheap to clone (reqwest shares its connection pool).
#[derive(Clone)]
pub struct AgentClient {
    node: String,
    base: String,
    /// Building fails only when the TLS backend cannot initialise; kept as the first call's error so `new` stays
    /// infallible for callers.
    http: Result<reqwest::Client, String>,
}

impl fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClient").field("node", &self.node).field("base", &self.base).finish()
    }
}

impl AgentClient {
    /// `node` names the node in every error; `port` is the local end of the SSH forward to the agent.
    pub fn new(node: impl Into<String>, port: u16) -> AgentClient {
        // No proxy: a corporate HTTP_PROXY must never see (or break) loopback traffic to the forward.
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(DEFAULT_TIMEOUT)
            .build()
            .map_err(|e| e.to_string());
        AgentClient { node: node.into(), base: format!("http://127.0.0.1:{port}"), http }
    }

    /// The same client, naming `node` in its errors (push_agent only knows the SSH port).
    pub fn with_node(mut self, node: impl Into<String>) -> AgentClient {
        self.node = node.into();
        self
    }

    pub async fn health(&self) -> Result<Health, AgentError> {
        self.call(Method::GET, "/healthz", None::<&()>, HEALTH_TIMEOUT).await
    }

    pub async fn apply_node(&self, spec: &NodeSpec) -> Result<ApplyResponse, AgentError> {
        self.call(Method::PUT, "/v1/node", Some(spec), APPLY_TIMEOUT).await
    }

    /// Hands the agent the lab's API servers and credentials (`PUT /v1/control-plane`).
    pub async fn join_control_plane(&self, join: &ControlPlaneJoin) -> Result<JoinOutcome, AgentError> {
        match self.send(Method::PUT, "/v1/control-plane", Some(join), DEFAULT_TIMEOUT).await {
            Ok(_) => Ok(JoinOutcome::Joined),
            Err(AgentError::Api { status: StatusCode::NOT_FOUND, .. })
            | Err(AgentError::BadBody { status: StatusCode::NOT_FOUND, .. }) => Ok(JoinOutcome::NotSupported),
            Err(e) => Err(e),
        }
    }

    pub async fn node_status(&self) -> Result<NodeStatus, AgentError> {
        self.call(Method::GET, "/v1/node", None::<&()>, DEFAULT_TIMEOUT).await
    }

    pub async fn network_policy_status(&self) -> Result<NetworkPolicyStatus, AgentError> {
        self.call(Method::GET, "/v1/network-policies", None::<&()>, DEFAULT_TIMEOUT).await
    }

    pub async fn create_pod(&self, pod: &PodSpec) -> Result<PodStatus, AgentError> {
        self.call(Method::POST, "/v1/pods", Some(pod), APPLY_TIMEOUT).await
    }

    pub async fn get_pod(&self, name: &str) -> Result<PodStatus, AgentError> {
        self.call(Method::GET, &format!("/v1/pods/{}", path_segment(name)), None::<&()>, DEFAULT_TIMEOUT).await
    }

    #[cfg(test)]
    pub async fn list_pods(&self) -> Result<Vec<PodStatus>, AgentError> {
        self.call(Method::GET, "/v1/pods", None::<&()>, DEFAULT_TIMEOUT).await
    }

    /// `grace`: SIGTERM -> SIGKILL delay for the pod's containers (`None`: the agent's default, 30 s).
    pub async fn delete_pod(&self, name: &str, grace: Option<Duration>) -> Result<(), AgentError> {
        let mut endpoint = format!("/v1/pods/{}", path_segment(name));
        if let Some(grace) = grace {
            endpoint += &format!("?grace_period_secs={}", grace.as_secs());
        }
        self.send(Method::DELETE, &endpoint, None::<&()>, APPLY_TIMEOUT).await.map(|_| ())
    }

    pub async fn exec(&self, pod: &str, req: &ExecRequest) -> Result<ExecResponse, AgentError> {
        let secs = req.timeout_secs.unwrap_or(AGENT_DEFAULT_EXEC_SECS);
        let timeout = Duration::from_secs(secs).saturating_add(EXEC_GRACE);
        self.call(Method::POST, &format!("/v1/pods/{}/exec", path_segment(pod)), Some(req), timeout).await
    }

    /// A chunk of a container's log from `query.offset` (`GET /v1/pods/{pod}/log`).
    pub async fn container_log(&self, pod: &str, query: &LogQuery) -> Result<LogChunk, AgentError> {
        let mut endpoint = format!("/v1/pods/{}/log?offset={}", path_segment(pod), query.offset.unwrap_or(0));
        if let Some(c) = &query.container {
            endpoint += &format!("&container={}", path_segment(c));
        }
        if query.previous {
            endpoint += "&previous=true";
        }
        self.call(Method::GET, &endpoint, None::<&()>, DEFAULT_TIMEOUT).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, AgentError> {
        let (status, text) = self.send(method.clone(), endpoint, body, timeout).await?;
        serde_json::from_str(&text).map_err(|e| AgentError::BadBody {
            node: self.node.clone(),
            method,
            endpoint: endpoint.to_string(),
            status,
            detail: e.to_string(),
            text: truncate(&text),
        })
    }

    /// Sends one request; 2xx gives (status, body text), anything else an error with the parsed ApiError.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<(StatusCode, String), AgentError> {
        let http = self
            .http
            .as_ref()
            .map_err(|message| AgentError::Client { node: self.node.clone(), message: message.clone() })?;
        let transport = |source| AgentError::Transport {
            node: self.node.clone(),
            method: method.clone(),
            endpoint: endpoint.to_string(),
            source,
        };
        let mut req = http.request(method.clone(), format!("{}{endpoint}", self.base)).timeout(timeout);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let text = resp.text().await.map_err(transport)?;
        if status.is_success() {
            return Ok((status, text));
        }
        Err(match serde_json::from_str::<ApiError>(&text) {
            Ok(body) => {
                AgentError::Api { node: self.node.clone(), method, endpoint: endpoint.to_string(), status, body }
            }
            Err(e) => AgentError::BadBody {
                node: self.node.clone(),
                method,
                endpoint: endpoint.to_string(),
                status,
                detail: format!("not an ApiError: {e}"),
                text: truncate(&text),
            },
        })
    }
}

/// Percent-encodes one URL path segment (pod names are DNS labels, but a bad name must not change the route).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Keeps error messages readable when an unexpected body (an HTML page, a binary blob) comes back.
fn truncate(text: &str) -> String {
    const MAX: usize = 2000;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    //! Against a real HTTP/1.1 exchange on loopback (a tiny hand-written server), not a mocked client.

    use super::*;
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
    use tokio::net::TcpListener;

    #[test]
    fn path_segment_escapes_everything_but_unreserved() {
        assert_eq!(path_segment("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn truncate_keeps_short_text_and_cuts_long_text() {
        assert_eq!(truncate("short"), "short");
        let long = "x".repeat(5000);
        let cut = truncate(&long);
        assert!(cut.starts_with(&"x".repeat(2000)));
        assert!(cut.ends_with("(5000 bytes)"));
    }

    /// Serves each connection with `answer(method, path, body) -> (status line, body)`; `None` = never answer.
    async fn serve(answer: fn(&str, &str, &str) -> Option<(&'static str, String)>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut reader = BufReader::new(conn);
                    let mut request_line = String::new();
                    reader.read_line(&mut request_line).await.expect("request line");
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).await.expect("header");
                        if header.trim().is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().expect("content-length");
                            }
                        }
                    }
                    let mut body = vec![0u8; length];
                    reader.read_exact(&mut body).await.expect("body");
                    let mut parts = request_line.split_whitespace();
                    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let Some((status, body)) = answer(method, path, &String::from_utf8_lossy(&body)) else {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = reader.get_mut().write_all(response.as_bytes()).await;
                });
            }
        });
        port
    }

    fn fake_agent(method: &str, path: &str, body: &str) -> Option<(&'static str, String)> {
        match (method, path) {
            ("GET", "/healthz") => Some(("200 OK", r#"{"status":"ok","agent_version":"0.1.0"}"#.into())),
            ("GET", "/v1/pods/missing") => Some(("404 Not Found", r#"{"message":"no pod named missing"}"#.into())),
            ("POST", "/v1/pods/a%2Fb/exec") => Some(("400 Bad Request", r#"{"field":"pod","message":"bad"}"#.into())),
            ("POST", "/v1/pods/web/exec") => {
                // Echo the command back: proves the JSON body went out intact.
                let req: ExecRequest = serde_json::from_str(body).expect("ExecRequest body");
                let resp = ExecResponse {
                    exit_code: 0,
                    stdout: req.command.join(" "),
                    stderr: String::new(),
                    timed_out: false,
                };
                Some(("200 OK", serde_json::to_string(&resp).expect("json")))
            }
            ("DELETE", "/v1/pods/web" | "/v1/pods/web?grace_period_secs=0") => Some(("204 No Content", String::new())),
            ("GET", "/v1/node") => Some(("500 Internal Server Error", "<html>boom</html>".into())),
            ("PUT", "/v1/control-plane") if body.contains("\"node_name\":\"node-a\"") => {
                Some(("204 No Content", String::new()))
            }
            ("PUT", "/v1/control-plane") if body.contains("\"node_name\":\"old\"") => {
                Some(("404 Not Found", String::new()))
            }
            ("PUT", "/v1/control-plane") => {
                Some(("400 Bad Request", r#"{"message":"bad token","field":"token"}"#.into()))
            }
            ("GET", "/v1/pods") => Some(("200 OK", "[]".into())),
            ("GET", "/slow") => None,
            _ => Some(("404 Not Found", r#"{"message":"no route"}"#.into())),
        }
    }

    #[tokio::test]
    async fn typed_answers_and_typed_errors_over_real_http() {
        let port = serve(fake_agent).await;
        let agent = AgentClient::new("node-a", port);
        assert_eq!(agent.health().await.expect("health").agent_version, "0.1.0");

        let req = ExecRequest {
            container: None,
            command: vec!["echo".into(), "hi".into()],
            stdin: None,
            timeout_secs: Some(1),
        };
        assert_eq!(agent.exec("web", &req).await.expect("exec").stdout, "echo hi");
        agent.delete_pod("web", None).await.expect("204 is success");
        agent.delete_pod("web", Some(Duration::ZERO)).await.expect("grace 0");
        assert!(agent.list_pods().await.expect("list").is_empty());

        let err = agent.get_pod("missing").await.expect_err("404");
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
        assert_eq!(err.api_error().map(|e| e.message.as_str()), Some("no pod named missing"));
        let text = err.to_string();
        assert!(text.contains("node-a") && text.contains("GET /v1/pods/missing") && text.contains("404"), "{text}");

        // The pod name is one path segment, whatever it contains.
        let err = agent.exec("a/b", &req).await.expect_err("400");
        assert_eq!(err.api_error().and_then(|e| e.field.as_deref()), Some("pod"));

        // Joining the control plane: done, not known to an older agent (404, axum's empty body), refused.
        let mut join = ControlPlaneJoin {
            servers: vec!["https://192.168.50.11:6443".into()],
            ca_pem: "PEM".into(),
            token: "t".into(),
            node_name: "node-a".into(),
        };
        assert_eq!(agent.join_control_plane(&join).await.expect("joined"), JoinOutcome::Joined);
        join.node_name = "old".into();
        assert_eq!(agent.join_control_plane(&join).await.expect("404"), JoinOutcome::NotSupported);
        join.node_name = "other".into();
        let err = agent.join_control_plane(&join).await.expect_err("400");
        assert_eq!(err.api_error().and_then(|e| e.field.as_deref()), Some("token"));

        let err = agent.node_status().await.expect_err("500 html");
        assert!(matches!(err, AgentError::BadBody { .. }), "{err}");
        assert!(err.to_string().contains("<html>boom</html>"), "{err}");
    }

    #[tokio::test]
    async fn transport_failures_name_the_node_and_endpoint() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let err = AgentClient::new("node-b", closed).health().await.expect_err("nothing listens");
        assert!(matches!(err, AgentError::Transport { .. }), "{err}");
        assert!(err.to_string().contains("node-b: GET /healthz"), "{err}");

        // A server that accepts and never answers: the health timeout (3 s) ends the wait.
        let port = serve(fake_agent).await;
        let agent = AgentClient::new("node-c", port).with_node("node-d");
        let start = std::time::Instant::now();
        let err = agent
            .call::<(), Vec<PodStatus>>(Method::GET, "/slow", None, Duration::from_secs(1))
            .await
            .expect_err("hangs");
        assert!(err.is_timeout(), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("node-d"), "{err}");
    }
}
