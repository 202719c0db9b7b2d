//! The group's traffic checks: clients are pods (their packets reach the proxy in prerouting from cni0) and
//! nodes (nat output), answers are the endpoints' names, so that a check sees which endpoint it reached.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};

use super::super::super::api::api_err;
use super::super::super::cluster::Cluster;
use super::super::super::harness::{evidence, nexec, pexec, TestPod};
use super::super::super::probe;
use super::super::super::runner::{CheckError, CheckOutcome};
use super::objects::{until, ALT_PORT};
use super::{ServiceLab, NAMESPACE};

/// `n` HTTP GETs from a pod, one answer (or `FAIL`) a line.
fn gets(ip: Ipv4Addr, port: u16, path: &str, n: u32) -> String {
    format!("for i in $(seq {n}); do timeout 3 busybox wget -q -O - http://{ip}:{port}{path} || echo FAIL; done")
}

/// The answers of a `gets`/`probe::node_gets` run, failing the check when any request failed.
fn answers(what: &str, cmd: &str, r: &testbed_api::ExecResponse) -> Result<Vec<String>, CheckError> {
    let lines: Vec<String> = r.stdout.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    if r.exit_code != 0 || lines.is_empty() || lines.iter().any(|l| l == "FAIL") {
        return Err(CheckError::Fail(format!("{what}: a request failed\n{}", evidence(cmd, r))));
    }
    Ok(lines)
}

async fn from_pod<C: Cluster>(c: &C, p: &TestPod, what: &str, cmd: &str) -> Result<Vec<String>, CheckError> {
    let r = pexec(c, p, None, cmd, 120).await?;
    answers(what, cmd, &r)
}

async fn from_node<C: Cluster>(c: &C, node: &str, what: &str, cmd: &str) -> Result<Vec<String>, CheckError> {
    let r = nexec(c, node, cmd).await?;
    answers(what, cmd, &r)
}

fn distinct(lines: &[String]) -> BTreeSet<String> {
    lines.iter().cloned().collect()
}

/// Fails unless every answer is one of `allowed`, and (when `all`) every one of them answered.
fn expect_names(what: &str, got: &[String], allowed: &[String], all: bool) -> CheckOutcome {
    let seen = distinct(got);
    let stray: Vec<&String> = seen.iter().filter(|s| !allowed.contains(s)).collect();
    let missing: Vec<&String> = allowed.iter().filter(|a| !seen.contains(*a)).collect();
    if !stray.is_empty() || (all && !missing.is_empty()) {
        return Err(CheckError::Fail(format!(
            "{what}: answered by {seen:?}; expected {}{allowed:?}",
            if all { "every one of " } else { "only " }
        )));
    }
    Ok(format!("{what}: {} answers from {seen:?}", got.len()))
}

/// The clients that reach every endpoint: the client pod, and an endpoint pod on each other node.
fn pod_clients(lab: &ServiceLab) -> Vec<&TestPod> {
    let mut out = vec![&lab.client_pod];
    let first = lab.client_pod.node.clone();
    out.extend(lab.endpoints.iter().filter(|p| p.node != first));
    out
}

pub(super) async fn basic<C: Cluster>(c: &C, lab: &ServiceLab) -> CheckOutcome {
    let mut lines = Vec::new();
    for p in pod_clients(lab) {
        let cmd = gets(lab.web.ip, 80, "/", 30);
        let got = from_pod(c, p, &format!("{} -> {}:80", p.status.name, lab.web.ip), &cmd).await?;
        lines.push(expect_names(&format!("from {} on {}", p.status.name, p.node), &got, &lab.names(), true)?);
    }
    Ok(lines.join("\n"))
}

pub(super) async fn multiport<C: Cluster>(c: &C, lab: &ServiceLab) -> CheckOutcome {
    let p = &lab.client_pod;
    let http = from_pod(c, p, "port 80", &gets(lab.web.ip, 80, "/", 20)).await?;
    let alt = from_pod(c, p, "port 81", &gets(lab.web.ip, 81, "/", 20)).await?;
    let alt_names: Vec<String> = lab.names().iter().map(|n| format!("{n}-alt")).collect();
    Ok(format!(
        "{}\n{} (targetPort {ALT_PORT})",
        expect_names(&format!("{}:80", lab.web.ip), &http, &lab.names(), true)?,
        expect_names(&format!("{}:81", lab.web.ip), &alt, &alt_names, true)?
    ))
}

pub(super) async fn node_port<C: Cluster>(c: &C, lab: &ServiceLab) -> CheckOutcome {
    let port = lab.node_port.node_port.ok_or_else(|| CheckError::Fail("web-np has no nodePort".into()))?;
    let mut lines = Vec::new();
    // Every node's address, from another node's underlay (from the node itself on a single-node lab) and
    // from the client pod.
    for (i, target) in lab.nodes.iter().enumerate() {
        // Without pod routes between nodes, a node without endpoints has none it can reach.
        if !lab.cross && lab.on(&target.name).is_empty() {
            continue;
        }
        let client = &lab.nodes[(i + 1) % lab.nodes.len()];
        let what = format!("node {} -> {}:{port}", client.name, target.underlay_ip);
        let got = from_node(c, &client.name, &what, &probe::node_gets(target.underlay_ip, port, "/", 10)).await?;
        lines.push(expect_names(&what, &got, &lab.names(), false)?);
        let what = format!("pod {} -> {}:{port}", lab.client_pod.status.name, target.underlay_ip);
        let got = from_pod(c, &lab.client_pod, &what, &gets(target.underlay_ip, port, "/", 10)).await?;
        lines.push(expect_names(&what, &got, &lab.names(), false)?);
    }
    Ok(lines.join("\n"))
}

/// 15 requests in a row (Kubernetes' AffinityConfirmCount) all answered by one endpoint.
async fn holds<C: Cluster>(c: &C, lab: &ServiceLab) -> Result<String, CheckError> {
    let got = from_pod(c, &lab.client_pod, "web-aff", &gets(lab.affinity.ip, 80, "/", 15)).await?;
    match distinct(&got) {
        one if one.len() == 1 => Ok(format!("15 requests all answered by {one:?}")),
        many => Err(CheckError::Fail(format!("ClientIP affinity does not hold: answered by {many:?} ({got:?})"))),
    }
}

pub(super) async fn affinity<C: Cluster>(c: &C, lab: &ServiceLab) -> CheckOutcome {
    holds(c, lab).await
}

async fn set_affinity(lab: &ServiceLab, value: &str) -> Result<(), CheckError> {
    let api: Api<Service> = Api::namespaced(lab.client.clone(), NAMESPACE);
    // The API refuses a sessionAffinityConfig with None (as Kubernetes'); ClientIP gets its default again.
    let patch = serde_json::json!({"spec": {"sessionAffinity": value, "sessionAffinityConfig": null}});
    api.patch(lab.affinity.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err("patch service"))?;
    Ok(())
}

pub(super) async fn switch_affinity<C: Cluster>(c: &C, lab: &ServiceLab) -> CheckOutcome {
    set_affinity(lab, "None").await?;
    let spread =
        until("without affinity, web-aff answers from more than one endpoint", Duration::from_secs(30), || async {
            let got = from_pod(c, &lab.client_pod, "web-aff", &gets(lab.affinity.ip, 80, "/", 20)).await?;
            let seen = distinct(&got);
            Ok((seen.len() > 1).then_some(seen))
        })
        .await?;
    set_affinity(lab, "ClientIP").await?;
    let held = until("with ClientIP again, affinity holds", Duration::from_secs(30), || async {
        Ok(holds(c, lab).await.ok())
    })
    .await?;
    Ok(format!("None: answered by {spread:?}; ClientIP again: {held}"))
}

pub(super) async fn hairpin<C: Cluster>(c: &C, lab: &ServiceLab) -> CheckOutcome {
    let mut lines = Vec::new();
    for p in &lab.endpoints {
        // Random picks: 30 requests reach the pod itself too (at three endpoints, missing it has p < 1e-5).
        let got =
            from_pod(c, p, &format!("{} -> {}:80", p.status.name, lab.web.ip), &gets(lab.web.ip, 80, "/", 30)).await?;
        let own = got.iter().filter(|a| **a == p.status.name).count();
        if own == 0 {
            return Err(CheckError::Fail(format!("{} never reached itself: {:?}", p.status.name, distinct(&got))));
        }
        lines.push(format!("{} reached itself {own} times of {}", p.status.name, got.len()));
    }
    Ok(lines.join("\n"))
}

pub(super) async fn source_ip<C: Cluster>(c: &C, lab: &ServiceLab) -> CheckOutcome {
    let p = &lab.client_pod;
    let got = from_pod(c, p, "GET /cgi-bin/peer", &gets(lab.web.ip, 80, "/cgi-bin/peer", 10)).await?;
    let want = p.ip.to_string();
    // busybox httpd gives REMOTE_ADDR as an IPv4-mapped IPv6 address.
    if got.iter().any(|a| probe::parse_remote_addr(a) != Some(p.ip)) {
        return Err(CheckError::Fail(format!("the endpoints saw {:?}, not the client pod's {want}", distinct(&got))));
    }
    Ok(format!("10 requests: every endpoint saw the client as {want}"))
}

/// A TCP connect that must be refused at once (ICMP port unreachable from the proxy's reject), not time out.
fn refused_probe(ip: Ipv4Addr, port: u16) -> String {
    format!("timeout 5 busybox nc -w 3 {ip} {port} </dev/null; echo rc=$?")
}

fn expect_refused(who: &str, cmd: &str, r: &testbed_api::ExecResponse) -> CheckOutcome {
    let ev = evidence(cmd, r);
    if r.stdout.contains("rc=124") {
        return Err(CheckError::Fail(format!("{who}: timed out instead of being refused\n{ev}")));
    }
    if !r.stderr.contains("Connection refused") {
        return Err(CheckError::Fail(format!("{who}: not refused\n{ev}")));
    }
    Ok(format!("{who}: {}", r.stderr.trim()))
}

pub(super) async fn rejected<C: Cluster>(c: &C, lab: &ServiceLab) -> CheckOutcome {
    let cmd = refused_probe(lab.empty.ip, 80);
    let pod = pexec(c, &lab.client_pod, None, &cmd, 30).await?;
    let from_pod = expect_refused(&format!("pod -> {}:80", lab.empty.ip), &cmd, &pod)?;
    let node = nexec(c, &lab.client_pod.node, &cmd).await?;
    let from_node = expect_refused(&format!("node -> {}:80", lab.empty.ip), &cmd, &node)?;
    Ok(format!("{from_pod}\n{from_node}"))
}

pub(super) async fn internal_local<C: Cluster>(c: &C, lab: &ServiceLab) -> CheckOutcome {
    let mut lines = Vec::new();
    for p in pod_clients(lab) {
        let local: Vec<String> = lab.on(&p.node).iter().map(|e| e.status.name.clone()).collect();
        let what = format!("{} on {} -> web-local {}:80", p.status.name, p.node, lab.local.ip);
        let got = from_pod(c, p, &what, &gets(lab.local.ip, 80, "/", 20)).await?;
        lines.push(expect_names(&what, &got, &local, true)?);
    }
    Ok(lines.join("\n"))
}

pub(super) async fn esipp_node_port<C: Cluster>(c: &C, lab: &ServiceLab) -> CheckOutcome {
    let port = lab.local.node_port.ok_or_else(|| CheckError::Fail("web-local has no nodePort".into()))?;
    let (a, b) = (&lab.nodes[0], &lab.nodes[1]);
    let local: Vec<String> = lab.on(&a.name).iter().map(|e| e.status.name.clone()).collect();
    let what = format!("node {} -> {}:{port}", b.name, a.underlay_ip);
    let got = from_node(c, &b.name, &what, &probe::node_gets(a.underlay_ip, port, "/", 10)).await?;
    let names = expect_names(&what, &got, &local, false)?;
    let peers = from_node(c, &b.name, &what, &probe::node_gets(a.underlay_ip, port, "/cgi-bin/peer", 5)).await?;
    let want = b.underlay_ip.to_string();
    if peers.iter().any(|p| probe::parse_remote_addr(p) != Some(b.underlay_ip)) {
        return Err(CheckError::Fail(format!(
            "externalTrafficPolicy Local: the endpoints saw {:?}, not the client node's {want}",
            distinct(&peers)
        )));
    }
    Ok(format!("{names}; the client's address {want} kept"))
}

pub(super) async fn node_to_cluster_ip<C: Cluster>(c: &C, lab: &ServiceLab) -> CheckOutcome {
    let mut lines = Vec::new();
    // Without pod routes between nodes, only the node with the endpoints reaches them.
    let nodes: Vec<&str> =
        if lab.cross { lab.nodes.iter().map(|n| n.name.as_str()).collect() } else { vec![&lab.client_pod.node] };
    for node in nodes {
        let what = format!("node {node} -> {}:80", lab.web.ip);
        let got = from_node(c, node, &what, &probe::node_gets(lab.web.ip, 80, "/", 20)).await?;
        lines.push(expect_names(&what, &got, &lab.names(), false)?);
    }
    Ok(lines.join("\n"))
}
