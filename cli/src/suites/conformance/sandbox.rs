//! The `sandbox` group: the containers of a pod share one network namespace and talk over localhost, a pod
//! has one IP and its own hostname, and pods share no namespace with each other or the host.
//! Backend-independent: runs once, on the first backend.
//!
//! What a container shares is read twice: inside it (an exec naming it, which runs in the container's own
//! namespaces) and on the node (`/proc/<pid>/ns/*` of the container's and the infra's processes, which no
//! agent code stands between). The two must agree, so an exec that reads the infra instead of the container
//! fails the check rather than passing it for a container that is elsewhere.

use testbed_api::ContainerState;

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

/// A process of the pod as the node sees it: its PID and namespaces.
struct NodeView {
    who: String,
    pid: u32,
    ns: Vec<String>,
}

impl NodeView {
    fn get(&self, kind: &str) -> &str {
        probe::NS_KINDS.iter().position(|k| *k == kind).and_then(|i| self.ns.get(i)).map_or("", String::as_str)
    }
}

/// The infra's and each container's namespaces, read on the node from /proc/<pid>/ns (infra first).
async fn node_views<C: Cluster>(c: &C, p: &TestPod) -> Result<Vec<NodeView>, CheckError> {
    let st = c.get_pod(&p.node, &p.name).await?;
    let infra = st.infra_pid.ok_or_else(|| CheckError::Fail(format!("pod {} reports no infra process", p.name)))?;
    let mut procs = vec![("infra".to_string(), infra)];
    for ct in &st.containers {
        match ct.state {
            ContainerState::Running { pid } => procs.push((ct.name.clone(), pid)),
            ref other => return Err(CheckError::Fail(format!("{}/{} is not running: {other:?}", p.name, ct.name))),
        }
    }
    let links: Vec<String> =
        procs.iter().flat_map(|(_, pid)| probe::NS_KINDS.iter().map(move |k| format!("/proc/{pid}/ns/{k}"))).collect();
    let cmd = format!("readlink {}", links.join(" "));
    let r = nexec(c, &p.node, &cmd).await?;
    let lines: Vec<&str> = r.stdout.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if r.exit_code != 0 || lines.len() != links.len() {
        return Err(CheckError::Fail(format!(
            "node {}: cannot read the pod's namespaces\n{}",
            p.node,
            evidence(&cmd, &r)
        )));
    }
    let n = probe::NS_KINDS.len();
    Ok(procs
        .into_iter()
        .zip(lines.chunks(n))
        .map(|((who, pid), ns)| NodeView { who, pid, ns: ns.iter().map(|s| s.to_string()).collect() })
        .collect())
}

/// Reads each container's namespaces and hostname through an exec naming it, and checks that the exec ran
/// where the container's process is (every namespace the node shows for it). Returns the node's views (infra
/// first) and each container's hostname.
async fn inside_containers<C: Cluster>(c: &C, p: &TestPod) -> Result<(Vec<NodeView>, Vec<String>), CheckError> {
    let views = node_views(c, p).await?;
    let mut hostnames = Vec::new();
    for v in &views[1..] {
        let inside = ns_of(c, p, &v.who).await?;
        for kind in probe::NS_KINDS {
            if inside.get(kind) != v.get(kind) {
                return Err(CheckError::Fail(format!(
                    "an exec into {}/{} does not run in the container's namespaces: it is in {}, the container's \
                     process {} in {}",
                    p.name,
                    v.who,
                    inside.get(kind),
                    v.pid,
                    v.get(kind)
                )));
            }
        }
        hostnames.push(inside.hostname);
    }
    Ok((views, hostnames))
}

/// `who pid: kind` of every view, for a report.
fn listing(views: &[NodeView], kind: &str) -> String {
    views.iter().map(|v| format!("{} (pid {}): {}", v.who, v.pid, v.get(kind))).collect::<Vec<_>>().join(", ")
}

/// Every container in the infra's `kind` namespace.
fn all_in_infras(views: &[NodeView], kind: &str) -> CheckOutcome {
    let infra = views[0].get(kind);
    let out: Vec<&str> = views[1..].iter().filter(|v| v.get(kind) != infra).map(|v| v.who.as_str()).collect();
    if !out.is_empty() {
        return Err(CheckError::Fail(format!(
            "{} not in the pod's {kind} namespace\n{}",
            out.join(", "),
            listing(views, kind)
        )));
    }
    Ok(listing(views, kind))
}

async fn shared_netns<C: Cluster>(c: &C, p: &TestPod) -> CheckOutcome {
    let (views, _) = inside_containers(c, p).await?;
    if views.len() < 3 {
        return Err(CheckError::Infra(format!("pod {} needs two containers for this check", p.name)));
    }
    all_in_infras(&views, "net")
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
    let (views, hostnames) = inside_containers(c, p).await?;
    let wrong: Vec<String> = views[1..]
        .iter()
        .zip(&hostnames)
        .filter(|(_, h)| **h != p.name)
        .map(|(v, h)| format!("{} has `{h}`", v.who))
        .collect();
    if !wrong.is_empty() {
        return Err(CheckError::Fail(format!("hostname should be `{}`: {}", p.name, wrong.join(", "))));
    }
    let uts = all_in_infras(&views, "uts")?;
    Ok(format!("hostname {} in every container\n{uts}", p.name))
}
