//! Runs the tests declared in the topology's `tests:` (format in docs/tests.md). The topology loader checks
//! and resolves them into the plan (`crate::plan::DeclaredTest`), so a lab chosen by name runs them from its
//! plan.json; the suite runs them once per backend, after its built-in checks.

use std::net::Ipv4Addr;
use std::time::Duration;

use testbed_api::{Backend, ExecRequest};

use super::cluster::{nodes_of, Cluster};
use super::probe;
use super::runner::{CheckError, CheckOutcome, Level, Runner};
pub use crate::plan::DeclaredTest;
use crate::plan::{TestKind, TestLevel, TestSource, TestTarget};
use testbed_api::results::CheckStatus;

fn probe_command(kind: TestKind, ip: Ipv4Addr, port: Option<u16>) -> String {
    let port = port.unwrap_or(80);
    match kind {
        TestKind::Ping => probe::ping(ip, 1),
        // bash's /dev/tcp: connect and close, whatever the server speaks.
        TestKind::Tcp => format!("timeout 5 bash -c 'exec 3<>/dev/tcp/{ip}/{port}'"),
        TestKind::Http => format!("timeout 5 busybox wget -q -O /dev/null http://{ip}:{port}/"),
    }
}

fn pod_node(plan: &crate::plan::Plan, pod: &str) -> Result<String, CheckError> {
    plan.pods
        .iter()
        .find(|p| p.spec.name == pod)
        .map(|p| p.node.clone())
        .ok_or_else(|| CheckError::Fail(format!("pod `{pod}` is not in the topology's pods")))
}

/// How a probe ended, from its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeEnd {
    Reached,
    NotReached,
    /// The probe itself did not work (126/127: the tool is missing or not executable; a signal; the exec
    /// timeout). An `expect: fail` test must not pass on this: "blocked" would be indistinguishable from
    /// "probe broken".
    Broken,
}

/// Only the codes each probe gives when its target does not answer count as "not reached".
fn probe_end(kind: TestKind, code: i32) -> ProbeEnd {
    match (kind, code) {
        (_, 0) => ProbeEnd::Reached,
        // iputils ping: 1 no reply, 2 an error sending (no route, ICMP unreachable). Probes name IPs, so 2
        // cannot be a failed name lookup.
        (TestKind::Ping, 1 | 2) => ProbeEnd::NotReached,
        // bash /dev/tcp: 1 refused or unreachable; busybox wget: 1 for any failed fetch; timeout(1): 124.
        (TestKind::Tcp | TestKind::Http, 1 | 124) => ProbeEnd::NotReached,
        _ => ProbeEnd::Broken,
    }
}

async fn run_one<C: Cluster>(c: &C, t: &DeclaredTest) -> CheckOutcome {
    let plan = c.plan();
    let ip = match &t.to {
        TestTarget::Ip(ip) => *ip,
        TestTarget::Node(n) => nodes_of(plan)
            .into_iter()
            .find(|x| &x.name == n)
            .map(|x| x.underlay_ip)
            .ok_or_else(|| CheckError::Fail(format!("node `{n}` is not in the topology")))?,
        TestTarget::Pod(p) => {
            let st = c.get_pod(&pod_node(plan, p)?, p).await?;
            st.ip.ok_or_else(|| CheckError::Fail(format!("pod `{p}` has no IP")))?
        }
    };
    let cmd = probe_command(t.kind, ip, t.port);
    let mut last = String::new();
    for attempt in 1..=t.attempts {
        let (code, out, killed) = match &t.from {
            TestSource::Node(n) => {
                let o = c.node_exec(n, &cmd).await?;
                (o.exit_code, format!("{}{}", o.stdout, o.stderr), false)
            }
            TestSource::Pod(p) => {
                let req =
                    ExecRequest { container: None, command: probe::sh(&cmd), stdin: None, timeout_secs: Some(30) };
                let o = c.pod_exec(&pod_node(plan, p)?, p, &req).await?;
                (o.exit_code, format!("{}{}", o.stdout, o.stderr), o.timed_out)
            }
        };
        last = format!("attempt {attempt}: $ {cmd}\nexit {code}\n{}", out.trim());
        let end = if killed { ProbeEnd::Broken } else { probe_end(t.kind, code) };
        match end {
            ProbeEnd::Broken if attempt == t.attempts => {
                let why = if killed { "was killed by the exec timeout" } else { "failed" };
                return Err(CheckError::Infra(format!(
                    "the probe itself {why} (exit {code} is neither a reply nor a refusal/timeout)\n{last}"
                )));
            }
            ProbeEnd::Broken => {}
            end => {
                if (end == ProbeEnd::Reached) == t.expect_pass {
                    return Ok(last);
                }
            }
        }
        if attempt < t.attempts {
            tokio::time::sleep(Duration::from_millis(t.wait_ms)).await;
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
        let level = match t.level {
            TestLevel::Error => Level::Error,
            TestLevel::Warning => Level::Warning,
        };
        let st = r.run("declared", Some(backend), &t.name, level, run_one(c, t)).await;
        if t.stop_on_error && matches!(st, Some(CheckStatus::Fail | CheckStatus::Error)) {
            stopped_by = Some(&t.name);
        }
    }
}
