//! Tests declared in the topology's optional `tests:` list (format in docs/tests.md). The topology parser
//! keeps the list opaque and hands it to `parse_declared_tests`; the suite runs them once per backend.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Deserialize;
use testbed_api::{Backend, ExecRequest};

use super::cluster::{nodes_of, Cluster};
use super::probe;
use super::runner::{CheckError, CheckOutcome, Level, Runner};
use testbed_api::results::CheckStatus;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}: {message}")]
pub struct DeclaredTestError {
    /// `tests[2].kind`
    pub path: String,
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> DeclaredTestError {
    DeclaredTestError { path: path.into(), message: message.into() }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Pod(String),
    Node(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pod(String),
    Node(String),
    Ip(Ipv4Addr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ping,
    Tcp,
    Http,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredTest {
    pub name: String,
    pub from: Source,
    pub to: Target,
    pub kind: Kind,
    pub port: Option<u16>,
    /// True: the probe must succeed; false: it must fail (an isolation test).
    pub expect_pass: bool,
    pub attempts: u32,
    pub wait: Duration,
    pub level: Level,
    pub stop_on_error: bool,
    /// Backends the test applies to (e.g. a cross-node test makes no sense with `none`); empty = all.
    pub backends: Vec<Backend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    wait: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: String,
    from: String,
    to: String,
    kind: String,
    #[serde(default)]
    port: Option<u32>,
    #[serde(default)]
    expect: Option<String>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    stop_on_error: bool,
    #[serde(default)]
    backends: Vec<String>,
}

/// `500ms`, `2s`, `1m`, or a number of seconds.
fn parse_duration(v: &serde_yaml::Value) -> Result<Duration, String> {
    if let Some(n) = v.as_f64() {
        return (n >= 0.0).then(|| Duration::from_secs_f64(n)).ok_or_else(|| "must not be negative".into());
    }
    let s = v.as_str().ok_or("expected a duration like 500ms, 2s or 1m")?.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration like 500ms, 2s or 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit `{unit}` in `{s}` (ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_source(s: &str) -> Option<Source> {
    match s.split_once(':')? {
        ("pod", n) if !n.is_empty() => Some(Source::Pod(n.to_string())),
        ("node", n) if !n.is_empty() => Some(Source::Node(n.to_string())),
        _ => None,
    }
}

fn parse_target(s: &str) -> Option<Target> {
    match s.split_once(':')? {
        ("pod", n) if !n.is_empty() => Some(Target::Pod(n.to_string())),
        ("node", n) if !n.is_empty() => Some(Target::Node(n.to_string())),
        ("ip", a) => a.parse().ok().map(Target::Ip),
        _ => None,
    }
}

/// Parses the topology's `tests:` value (a sequence). Errors name the item and field: `tests[1].kind: ...`.
pub fn parse_declared_tests(value: &serde_yaml::Value) -> Result<Vec<DeclaredTest>, DeclaredTestError> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    let items = value.as_sequence().ok_or_else(|| err("tests", "expected a list of tests"))?;
    let mut out: Vec<DeclaredTest> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = |f: &str| format!("tests[{i}].{f}");
        let raw: RawTest =
            serde_yaml::from_value(item.clone()).map_err(|e| err(format!("tests[{i}]"), e.to_string()))?;
        if raw.name.trim().is_empty() {
            return Err(err(at("name"), "must not be empty"));
        }
        if out.iter().any(|t| t.name == raw.name) {
            return Err(err(at("name"), format!("`{}` is used twice", raw.name)));
        }
        let from = parse_source(&raw.from)
            .ok_or_else(|| err(at("from"), format!("`{}` is not pod:<name> or node:<name>", raw.from)))?;
        let to = parse_target(&raw.to)
            .ok_or_else(|| err(at("to"), format!("`{}` is not pod:<name>, node:<name> or ip:<IPv4>", raw.to)))?;
        let kind = match raw.kind.as_str() {
            "ping" => Kind::Ping,
            "tcp" => Kind::Tcp,
            "http" => Kind::Http,
            k => return Err(err(at("kind"), format!("unknown kind `{k}` (expected ping, tcp or http)"))),
        };
        let port = match (kind, raw.port) {
            (Kind::Ping, Some(_)) => return Err(err(at("port"), "ping takes no port")),
            (Kind::Ping, None) => None,
            (Kind::Tcp, None) => return Err(err(at("port"), "tcp needs a port")),
            (Kind::Http, None) => Some(80),
            (_, Some(p)) => Some(
                u16::try_from(p)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| err(at("port"), format!("{p} is not 1..=65535")))?,
            ),
        };
        let expect_pass = match raw.expect.as_deref() {
            None | Some("pass") => true,
            Some("fail") => false,
            Some(x) => return Err(err(at("expect"), format!("`{x}` is not pass or fail"))),
        };
        let level = match raw.level.as_deref() {
            None | Some("error") => Level::Error,
            Some("warning") => Level::Warning,
            Some(x) => return Err(err(at("level"), format!("`{x}` is not error or warning"))),
        };
        let (attempts, wait) = match &raw.retry {
            None => (1, Duration::from_secs(1)),
            Some(r) => {
                let attempts = r.attempts.unwrap_or(3);
                if attempts == 0 {
                    return Err(err(at("retry.attempts"), "must be at least 1"));
                }
                let wait = match &r.wait {
                    None => Duration::from_secs(1),
                    Some(v) => parse_duration(v).map_err(|m| err(at("retry.wait"), m))?,
                };
                (attempts, wait)
            }
        };
        let backends = raw
            .backends
            .iter()
            .enumerate()
            .map(|(j, b)| b.parse::<Backend>().map_err(|m| err(at(&format!("backends[{j}]")), m)))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(DeclaredTest {
            name: raw.name,
            from,
            to,
            kind,
            port,
            expect_pass,
            attempts,
            wait,
            level,
            stop_on_error: raw.stop_on_error,
            backends,
        });
    }
    Ok(out)
}

fn probe_command(kind: Kind, ip: Ipv4Addr, port: Option<u16>) -> String {
    let port = port.unwrap_or(80);
    match kind {
        Kind::Ping => probe::ping(ip, 1),
        // bash's /dev/tcp: connect and close, whatever the server speaks.
        Kind::Tcp => format!("timeout 5 bash -c 'exec 3<>/dev/tcp/{ip}/{port}'"),
        Kind::Http => format!("timeout 5 busybox wget -q -O /dev/null http://{ip}:{port}/"),
    }
}

fn pod_node(plan: &crate::plan::Plan, pod: &str) -> Result<String, CheckError> {
    plan.pods
        .iter()
        .find(|p| p.spec.name == pod)
        .map(|p| p.node.clone())
        .ok_or_else(|| CheckError::Fail(format!("pod `{pod}` is not in the topology's pods")))
}

async fn run_one<C: Cluster>(c: &C, t: &DeclaredTest) -> CheckOutcome {
    let plan = c.plan();
    let ip = match &t.to {
        Target::Ip(ip) => *ip,
        Target::Node(n) => nodes_of(plan)
            .into_iter()
            .find(|x| &x.name == n)
            .map(|x| x.underlay_ip)
            .ok_or_else(|| CheckError::Fail(format!("node `{n}` is not in the topology")))?,
        Target::Pod(p) => {
            let st = c.get_pod(&pod_node(plan, p)?, p).await?;
            st.ip.ok_or_else(|| CheckError::Fail(format!("pod `{p}` has no IP")))?
        }
    };
    let cmd = probe_command(t.kind, ip, t.port);
    let mut last = String::new();
    for attempt in 1..=t.attempts {
        let (code, out) = match &t.from {
            Source::Node(n) => {
                let o = c.node_exec(n, &cmd).await?;
                (o.exit_code, format!("{}{}", o.stdout, o.stderr))
            }
            Source::Pod(p) => {
                let req =
                    ExecRequest { container: None, command: probe::sh(&cmd), stdin: None, timeout_secs: Some(30) };
                let o = c.pod_exec(&pod_node(plan, p)?, p, &req).await?;
                (o.exit_code, format!("{}{}", o.stdout, o.stderr))
            }
        };
        last = format!("attempt {attempt}: $ {cmd}\nexit {code}\n{}", out.trim());
        if (code == 0) == t.expect_pass {
            return Ok(last);
        }
        if attempt < t.attempts {
            tokio::time::sleep(t.wait).await;
        }
    }
    let want = if t.expect_pass { "succeed" } else { "fail" };
    Err(CheckError::Fail(format!("expected the probe to {want} ({} attempt(s))\n{last}", t.attempts)))
}

pub async fn run_declared<C: Cluster>(c: &C, r: &mut Runner, backend: Backend, tests: &[DeclaredTest]) {
    let mut stopped_by: Option<&str> = None;
    for t in tests {
        if !t.backends.is_empty() && !t.backends.contains(&backend) {
            let only: Vec<&str> = t.backends.iter().map(|b| b.as_str()).collect();
            r.record(
                "declared",
                Some(backend),
                &t.name,
                CheckStatus::Skip,
                &format!("only for backends {}", only.join(", ")),
            );
            continue;
        }
        if let Some(by) = stopped_by {
            r.record(
                "declared",
                Some(backend),
                &t.name,
                CheckStatus::Skip,
                &format!("stopped: `{by}` failed and has stop_on_error"),
            );
            continue;
        }
        let st = r.run("declared", Some(backend), &t.name, t.level, run_one(c, t)).await;
        if t.stop_on_error && matches!(st, Some(CheckStatus::Fail | CheckStatus::Error)) {
            stopped_by = Some(&t.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<DeclaredTest>, DeclaredTestError> {
        parse_declared_tests(&serde_yaml::from_str(yaml).expect("yaml"))
    }

    #[test]
    fn parses_a_full_entry_and_defaults() {
        let t = parse(
            "- {name: web from node2, from: 'node:node2', to: 'pod:web', kind: http, port: 8080, expect: pass,\n   retry: {attempts: 5, wait: 500ms}, level: warning, stop_on_error: true}\n- {name: isolated, from: 'pod:web', to: 'ip:10.0.0.1', kind: ping, expect: fail}\n",
        )
        .expect("valid");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].from, Source::Node("node2".into()));
        assert_eq!(t[0].to, Target::Pod("web".into()));
        assert_eq!((t[0].port, t[0].attempts, t[0].wait), (Some(8080), 5, Duration::from_millis(500)));
        assert_eq!(t[0].level, Level::Warning);
        assert!(t[0].stop_on_error);
        assert!(!t[1].expect_pass);
        assert_eq!((t[1].attempts, t[1].level, t[1].port), (1, Level::Error, None));
        assert_eq!(t[1].to, Target::Ip(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(parse("~").expect("null").is_empty());
        let t =
            parse("- {name: a, from: 'node:n1', to: 'pod:w', kind: ping, backends: [vxlan, host-gw]}").expect("valid");
        assert_eq!(t[0].backends, vec![Backend::Vxlan, Backend::HostGw]);
    }

    #[test]
    fn errors_name_the_item_and_field() {
        let path = |y: &str| parse(y).expect_err("invalid").path;
        assert_eq!(path("{name: x}"), "tests");
        assert_eq!(path("- {name: a, from: 'node:n1', to: 'pod:w', kind: udp}"), "tests[0].kind");
        assert_eq!(path("- {name: a, from: 'host:n1', to: 'pod:w', kind: ping}"), "tests[0].from");
        assert_eq!(path("- {name: a, from: 'node:n1', to: 'ip:300.1.1.1', kind: ping}"), "tests[0].to");
        assert_eq!(path("- {name: a, from: 'node:n1', to: 'pod:w', kind: tcp}"), "tests[0].port");
        assert_eq!(path("- {name: a, from: 'node:n1', to: 'pod:w', kind: tcp, port: 70000}"), "tests[0].port");
        assert_eq!(path("- {name: a, from: 'node:n1', to: 'pod:w', kind: ping, port: 1}"), "tests[0].port");
        assert_eq!(path("- {name: a, from: 'node:n1', to: 'pod:w', kind: ping, expect: maybe}"), "tests[0].expect");
        assert_eq!(path("- {name: a, from: 'node:n1', to: 'pod:w', kind: ping, level: fatal}"), "tests[0].level");
        assert_eq!(
            path("- {name: a, from: 'node:n1', to: 'pod:w', kind: ping, retry: {attempts: 2, wait: 3h}}"),
            "tests[0].retry.wait"
        );
        assert_eq!(
            path("- {name: a, from: 'node:n1', to: 'pod:w', kind: ping, retry: {attempts: 0}}"),
            "tests[0].retry.attempts"
        );
        let e = parse("- {name: a, from: 'node:n1', to: 'pod:w', kind: ping}\n- {name: b, from: 'node:n1', to: 'pod:w', kinds: ping}")
            .expect_err("unknown field");
        assert_eq!(e.path, "tests[1]");
        assert!(e.message.contains("kinds"), "{e}");
        let e = parse("- {name: a, from: 'node:n1', to: 'pod:w', kind: ping}\n- {name: a, from: 'node:n1', to: 'pod:w', kind: ping}")
            .expect_err("duplicate");
        assert_eq!(e.path, "tests[1].name");
        assert_eq!(
            path("- {name: a, from: 'node:n1', to: 'pod:w', kind: ping, backends: [vxlan, geneve]}"),
            "tests[0].backends[1]"
        );
        let e = parse("- {name: a, to: 'pod:w', kind: ping}").expect_err("missing from");
        assert!(e.message.contains("from"), "{e}");
    }
}
