//! The `sandbox` group: the containers of a pod share one network namespace and talk over localhost, a pod
//! has one IP and its own hostname, and pods share no namespace with each other or the host.
//! Backend-independent: runs once, on the first backend.

use super::super::cluster::Cluster;
use super::super::harness::{evidence, nexec, pexec, succeeded, TestPod};
use super::super::probe::{self, HTTP_PORT};
use super::super::runner::{CheckError, CheckOutcome, Level, Runner};
use super::fixture::Fixture;

/// Runs the group's checks on the pods of the first node.
pub(super) async fn run<C: Cluster>(c: &C, r: &mut Runner, f: &Fixture) {
    let (g, e, a1) = ("sandbox", Level::Error, &f.a1);
    r.run(g, None, "containers of a pod share one network namespace", e, shared_netns(c, a1)).await;
    r.run(g, None, "containers of a pod talk over localhost", e, localhost(c, a1)).await;
    r.run(g, None, "a pod has exactly one IP", e, one_ip(c, a1)).await;
    r.run(g, None, "hostname is the pod name", e, hostname(c, a1)).await;
    for kind in ["pid", "uts", "ipc", "mnt", "net"] {
        r.run(g, None, &format!("pods and the host do not share the {kind} namespace"), e, isolation(c, f, kind)).await;
    }
}

async fn ns_of<C: Cluster>(c: &C, p: &TestPod, container: &str) -> Result<probe::NsIds, CheckError> {
    let cmd = probe::ns_script();
    let r = pexec(c, p, Some(container), &cmd, 20).await?;
    probe::parse_ns(&r.stdout)
        .map_err(|e| CheckError::Fail(format!("{}/{container}: {e}\n{}", p.name, evidence(&cmd, &r))))
}

async fn host_ns<C: Cluster>(c: &C, node: &str) -> Result<probe::NsIds, CheckError> {
    let cmd = probe::ns_script();
    let r = nexec(c, node, &cmd).await?;
    probe::parse_ns(&r.stdout).map_err(|e| CheckError::Fail(format!("node {node}: {e}")))
}

async fn shared_netns<C: Cluster>(c: &C, p: &TestPod) -> CheckOutcome {
    let (web, side) = (ns_of(c, p, "web").await?, ns_of(c, p, "side").await?);
    if web.get("net") != side.get("net") {
        return Err(CheckError::Fail(format!("web is in {} but side in {}", web.get("net"), side.get("net"))));
    }
    Ok(format!("both containers in {}", web.get("net")))
}

async fn localhost<C: Cluster>(c: &C, p: &TestPod) -> CheckOutcome {
    let cmd = format!("timeout 5 busybox wget -q -O - http://127.0.0.1:{HTTP_PORT}/");
    let r = pexec(c, p, Some("side"), &cmd, 20).await?;
    let ev = succeeded("side -> web over 127.0.0.1", &cmd, &r)?;
    if r.stdout.trim() != p.name {
        return Err(CheckError::Fail(format!("localhost answered `{}`\n{ev}", r.stdout.trim())));
    }
    Ok(ev)
}

async fn one_ip<C: Cluster>(c: &C, p: &TestPod) -> CheckOutcome {
    let cmd = "ip -4 -o addr show";
    let r = pexec(c, p, None, cmd, 20).await?;
    let addrs = probe::non_loopback_ipv4(&r.stdout);
    match addrs.as_slice() {
        [(dev, addr)] if addr.split('/').next() == Some(&p.ip.to_string()) => Ok(format!("{dev} {addr}")),
        _ => Err(CheckError::Fail(format!("expected only {} on eth0, found {addrs:?}\n{}", p.ip, evidence(cmd, &r)))),
    }
}

async fn isolation<C: Cluster>(c: &C, f: &Fixture, kind: &str) -> CheckOutcome {
    let a1 = ns_of(c, &f.a1, "web").await?;
    let a2 = ns_of(c, &f.a2, "web").await?;
    let host = host_ns(c, &f.a.name).await?;
    let (x, y, h) = (a1.get(kind), a2.get(kind), host.get(kind));
    let ev = format!("{}: {x}, {}: {y}, host {}: {h}", f.a1.name, f.a2.name, f.a.name);
    if x == y {
        return Err(CheckError::Fail(format!("pods share the {kind} namespace\n{ev}")));
    }
    if x == h || y == h {
        return Err(CheckError::Fail(format!("a pod shares the host's {kind} namespace\n{ev}")));
    }
    Ok(ev)
}

async fn hostname<C: Cluster>(c: &C, p: &TestPod) -> CheckOutcome {
    let ns = ns_of(c, p, "web").await?;
    if ns.hostname != p.name {
        return Err(CheckError::Fail(format!("hostname is `{}`, expected `{}`", ns.hostname, p.name)));
    }
    Ok(format!("hostname {}", ns.hostname))
}
