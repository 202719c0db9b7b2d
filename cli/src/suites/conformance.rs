//! The conformance suite: for each backend, switch the lab to it, create the suite's own test pods, run the
//! named checks against them, remove the pods. Backend-independent checks (namespaces, cgroups) run once.

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use testbed_api::results::CheckStatus;
use testbed_api::{
    Backend, ContainerSpec, ContainerState, ExecRequest, ExecResponse, PodPhase, PodSpec, PodStatus, ResourceAmounts,
    Resources, RestartPolicy,
};

use super::cluster::{nodes_of, Cluster, ClusterError, NodeInfo};
use super::declared::{run_declared, DeclaredTest};
use super::overlay;
use super::probe::{self, HTTP_PORT, IPERF_PORT, TCP_PORT};
use super::runner::{CheckError, CheckOutcome, Level, Runner};

const POD_READY_TIMEOUT: Duration = Duration::from_secs(180);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
/// The agent's periodic reconcile must repair drift within this (the requirement).
const DRIFT_REPAIR_LIMIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(500);

pub const POD_A1: &str = "tb-c-a1";
pub const POD_A2: &str = "tb-c-a2";
pub const POD_B1: &str = "tb-c-b1";
pub const POD_CPU: &str = "tb-c-cpu";
pub const POD_MEM: &str = "tb-c-mem";
const CPU_LIMIT_MILLIS: u64 = 200;
const CPU_MEMORY_LIMIT: u64 = 64 << 20;
const PIDS_LIMIT: u64 = 64;
const OOM_MEMORY_LIMIT: u64 = 32 << 20;

/// A test pod that is Running, with its address.
#[derive(Debug, Clone)]
pub struct TestPod {
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub status: PodStatus,
}

struct Fixture {
    a: NodeInfo,
    b: Option<NodeInfo>,
    a1: TestPod,
    a2: TestPod,
    b1: Option<TestPod>,
}

pub(super) fn container(name: &str, command: Vec<String>) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        command,
        env: Default::default(),
        resources: Resources::default(),
        pids_limit: None,
    }
}

pub(super) fn pod(name: &str, containers: Vec<ContainerSpec>, restart_policy: RestartPolicy) -> PodSpec {
    PodSpec { name: name.into(), containers, restart_policy, share_process_namespace: false, host_network: false }
}

/// `tb-c-a1` has a second container to check that containers share the pod's network namespace.
pub fn web_pod(name: &str, with_sidecar: bool) -> PodSpec {
    let mut containers = vec![container("web", probe::web_command(name))];
    if with_sidecar {
        containers.push(container("side", vec!["sleep".into(), "infinity".into()]));
    }
    pod(name, containers, RestartPolicy::Always)
}

pub fn cpu_pod() -> PodSpec {
    let mut c = container("spin", probe::sh("while :; do :; done"));
    c.resources.limits = ResourceAmounts { cpu_millis: Some(CPU_LIMIT_MILLIS), memory_bytes: Some(CPU_MEMORY_LIMIT) };
    c.pids_limit = Some(PIDS_LIMIT);
    pod(POD_CPU, vec![c], RestartPolicy::Always)
}

pub fn mem_pod() -> PodSpec {
    // dd's buffer is allocated and touched whole: 128 MiB against a 32 MiB limit.
    let mut c = container("hog", probe::sh("sleep 1; exec dd if=/dev/zero of=/dev/null bs=128M count=1"));
    c.resources.limits.memory_bytes = Some(OOM_MEMORY_LIMIT);
    pod(POD_MEM, vec![c], RestartPolicy::Never)
}

pub(super) fn evidence(cmd: &str, r: &ExecResponse) -> String {
    let mut s = format!("$ {cmd}\nexit {}{}", r.exit_code, if r.timed_out { " (timed out)" } else { "" });
    for (label, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        let t = text.trim();
        if !t.is_empty() {
            // Keep reports readable: the tail is where the error is.
            let tail: String = if t.len() > 2000 { format!("...{}", &t[t.len() - 2000..]) } else { t.to_string() };
            s.push_str(&format!("\n{label}:\n{tail}"));
        }
    }
    s
}

pub(super) async fn pexec<C: Cluster>(
    c: &C,
    p: &TestPod,
    container: Option<&str>,
    script: &str,
    timeout_secs: u64,
) -> Result<ExecResponse, ClusterError> {
    let req = ExecRequest {
        container: container.map(str::to_string),
        command: probe::sh(script),
        stdin: None,
        timeout_secs: Some(timeout_secs),
    };
    c.pod_exec(&p.node, &p.name, &req).await
}

pub(super) async fn nexec<C: Cluster>(c: &C, node: &str, script: &str) -> Result<ExecResponse, ClusterError> {
    let o = c.node_exec(node, script).await?;
    Ok(ExecResponse { exit_code: o.exit_code, stdout: o.stdout, stderr: o.stderr, timed_out: false })
}

/// Passes when the command exits 0.
fn succeeded(what: &str, cmd: &str, r: &ExecResponse) -> CheckOutcome {
    let ev = evidence(cmd, r);
    if r.exit_code == 0 && !r.timed_out {
        Ok(ev)
    } else {
        Err(CheckError::Fail(format!("{what} failed (exit {})\n{ev}", r.exit_code)))
    }
}

async fn pod_cmd<C: Cluster>(c: &C, from: &TestPod, what: &str, cmd: &str) -> CheckOutcome {
    let r = pexec(c, from, None, cmd, 30).await?;
    succeeded(what, cmd, &r)
}

async fn icmp<C: Cluster>(c: &C, from: &TestPod, to: Ipv4Addr) -> CheckOutcome {
    pod_cmd(c, from, &format!("ping {} -> {to}", from.name), &probe::ping(to, 2)).await
}

async fn http<C: Cluster>(c: &C, from: &TestPod, to: &TestPod) -> CheckOutcome {
    let cmd = probe::http_get(to.ip, "/");
    let r = pexec(c, from, None, &cmd, 30).await?;
    let ev = evidence(&cmd, &r);
    match (r.exit_code, r.stdout.trim()) {
        (0, body) if body == to.name => Ok(ev),
        (0, body) => Err(CheckError::Fail(format!("{} answered `{body}`, expected `{}`\n{ev}", to.ip, to.name))),
        (code, _) => Err(CheckError::Fail(format!("GET http://{}:{HTTP_PORT}/ failed (exit {code})\n{ev}", to.ip))),
    }
}

/// A busybox nc server on `to` and a client on `from`, concurrently; the server must print the message.
async fn tcp<C: Cluster>(c: &C, from: &TestPod, to: &TestPod) -> CheckOutcome {
    let message = format!("tb-hello-from-{}", from.name);
    let server_cmd = probe::tcp_server(TCP_PORT, 30);
    let client_cmd = probe::tcp_client(to.ip, TCP_PORT, &message);
    let (server, client) = futures::join!(pexec(c, to, None, &server_cmd, 40), pexec(c, from, None, &client_cmd, 40));
    let (server, client) = (server?, client?);
    let ev = format!("{}\n{}", evidence(&server_cmd, &server), evidence(&client_cmd, &client));
    if client.exit_code != 0 {
        return Err(CheckError::Fail(format!("client could not connect to {}:{TCP_PORT}\n{ev}", to.ip)));
    }
    if server.stdout.trim() != message {
        return Err(CheckError::Fail(format!(
            "server received `{}`, expected `{message}`\n{ev}",
            server.stdout.trim()
        )));
    }
    Ok(ev)
}

/// iperf3 UDP from `from` to `to` with `len`-byte datagrams; some must arrive, from the client's pod IP.
async fn udp<C: Cluster>(c: &C, from: &TestPod, to: &TestPod, len: u32) -> CheckOutcome {
    let server_cmd = probe::iperf_server(IPERF_PORT, 60);
    let client_cmd = probe::iperf_udp_client(to.ip, IPERF_PORT, len);
    let (server, client) = futures::join!(pexec(c, to, None, &server_cmd, 70), pexec(c, from, None, &client_cmd, 70));
    let (server, client) = (server?, client?);
    let ev = format!("{}\n{}", evidence(&server_cmd, &server), evidence(&client_cmd, &client));
    if client.exit_code != 0 {
        return Err(CheckError::Fail(format!("iperf3 UDP client to {} failed\n{ev}", to.ip)));
    }
    let got = probe::parse_iperf_udp_server(&server.stdout).map_err(|e| CheckError::Fail(format!("{e}\n{ev}")))?;
    let arrived = got.packets.saturating_sub(got.lost);
    if arrived == 0 {
        return Err(CheckError::Fail(format!("none of {} {len}-byte datagrams arrived\n{ev}", got.packets)));
    }
    Ok(format!("{arrived}/{} datagrams of {len} bytes arrived (peer seen as {:?})", got.packets, got.remote_host))
}

/// The server's CGI reports the client address it saw: it must be the client pod's own IP.
async fn no_snat<C: Cluster>(c: &C, from: &TestPod, to: &TestPod) -> CheckOutcome {
    let cmd = probe::http_get(to.ip, "/cgi-bin/peer");
    let r = pexec(c, from, None, &cmd, 30).await?;
    let ev = evidence(&cmd, &r);
    if r.exit_code != 0 {
        return Err(CheckError::Fail(format!("GET /cgi-bin/peer on {} failed\n{ev}", to.ip)));
    }
    match probe::parse_remote_addr(&r.stdout) {
        Some(seen) if seen == from.ip => Ok(format!("server saw {seen}\n{ev}")),
        Some(seen) => {
            Err(CheckError::Fail(format!("server saw {seen}, not the client pod IP {} (SNAT)\n{ev}", from.ip)))
        }
        None => Err(CheckError::Fail(format!("cannot read the peer address from `{}`\n{ev}", r.stdout.trim()))),
    }
}

async fn node_to_pod<C: Cluster>(c: &C, node: &NodeInfo, to: &TestPod) -> CheckOutcome {
    let cmd = format!("{} && {}", probe::ping(to.ip, 2), probe::http_get(to.ip, "/"));
    let r = nexec(c, &node.name, &cmd).await?;
    let ev = succeeded(&format!("{} -> pod {}", node.name, to.name), &cmd, &r)?;
    if !r.stdout.lines().any(|l| l.trim() == to.name) {
        return Err(CheckError::Fail(format!("HTTP answer did not come from {}\n{ev}", to.name)));
    }
    Ok(ev)
}

async fn pod_to_node<C: Cluster>(c: &C, from: &TestPod, node: &NodeInfo) -> CheckOutcome {
    pod_cmd(c, from, &format!("ping {} -> node {}", from.name, node.name), &probe::ping(node.underlay_ip, 2)).await
}

async fn matrix<C: Cluster>(c: &C, pods: &[&TestPod], cross_node: bool) -> CheckOutcome {
    let mut lines = Vec::new();
    let mut failed = Vec::new();
    for from in pods {
        for to in pods {
            if from.name == to.name || (!cross_node && from.node != to.node) {
                continue;
            }
            let r = pexec(c, from, None, &probe::ping(to.ip, 1), 20).await?;
            let ok = r.exit_code == 0;
            lines.push(format!("{} -> {} ({}): {}", from.name, to.name, to.ip, if ok { "ok" } else { "FAIL" }));
            if !ok {
                failed.push(format!("{} -> {}", from.name, to.name));
            }
        }
    }
    if failed.is_empty() {
        Ok(lines.join("\n"))
    } else {
        Err(CheckError::Fail(format!("unreachable: {}\n{}", failed.join(", "), lines.join("\n"))))
    }
}

async fn df_at_mtu<C: Cluster>(c: &C, from: &TestPod, to: &TestPod, mtu: u32) -> CheckOutcome {
    let link = pexec(c, from, None, "ip -o link show eth0", 10).await?;
    let pod_mtu = probe::link_mtu(&link.stdout);
    if pod_mtu != Some(mtu) {
        return Err(CheckError::Fail(format!("pod eth0 MTU is {pod_mtu:?}, expected {mtu}\n{}", link.stdout.trim())));
    }
    pod_cmd(c, from, &format!("DF ping of a {mtu}-byte packet"), &probe::ping_df(to.ip, mtu - 28)).await
}

async fn df_above_mtu<C: Cluster>(c: &C, from: &TestPod, to: &TestPod, mtu: u32) -> CheckOutcome {
    let cmd = probe::ping_df(to.ip, mtu - 27);
    let r = pexec(c, from, None, &cmd, 30).await?;
    let ev = evidence(&cmd, &r);
    if r.exit_code == 0 || r.stdout.contains(" bytes from ") {
        return Err(CheckError::Fail(format!("a {}-byte DF packet got through an MTU of {mtu}\n{ev}", mtu + 1)));
    }
    if r.timed_out {
        return Err(CheckError::Fail(format!("ping hung instead of failing\n{ev}")));
    }
    Ok(ev)
}

async fn big_tcp<C: Cluster>(c: &C, from: &TestPod, to: &TestPod) -> CheckOutcome {
    let cmd = format!("{} | sha256sum", probe::http_get_within(to.ip, "/big", 40));
    let r = pexec(c, from, None, &cmd, 60).await?;
    let ev = evidence(&cmd, &r);
    let want = probe::seq_sha256(probe::BIG_LINES);
    match r.stdout.split_whitespace().next() {
        Some(got) if got == want => Ok(ev),
        got => Err(CheckError::Fail(format!("sha256 {got:?} differs from the served file's {want}\n{ev}"))),
    }
}

async fn hairpin<C: Cluster>(c: &C, p: &TestPod) -> CheckOutcome {
    let veth =
        p.status.host_veth.clone().ok_or_else(|| CheckError::Fail(format!("{} reports no host veth", p.name)))?;
    let cmd = format!("cat /sys/class/net/{veth}/brport/hairpin_mode");
    let r = nexec(c, &p.node, &cmd).await?;
    if r.stdout.trim() != "1" {
        return Err(CheckError::Fail(format!("hairpin is off on bridge port {veth}\n{}", evidence(&cmd, &r))));
    }
    let own = http(c, p, p).await?;
    Ok(format!("{}\n{own}", evidence(&cmd, &r)))
}

async fn overlay_state<C: Cluster>(c: &C, node: &str, backend: Backend) -> CheckOutcome {
    let plan = c.plan();
    let np = plan.node(node).ok_or_else(|| CheckError::Infra(format!("node {node} is not in the plan")))?;
    let spec = plan.node_spec(np, backend);
    let st = c.node_status(node).await?;
    let m = overlay::mismatches(&spec, &st.network);
    let seen = format!(
        "routes:\n{}\nneighbours:\n{}\nfdb:\n{}",
        st.network.routes.join("\n"),
        st.network.neighbours.join("\n"),
        st.network.fdb.join("\n")
    );
    if m.is_empty() {
        Ok(seen)
    } else {
        Err(CheckError::Fail(format!("{}\n{seen}", m.join("; "))))
    }
}

async fn retry_ping<C: Cluster>(c: &C, from: &TestPod, to: Ipv4Addr, within: Duration) -> CheckOutcome {
    let cmd = probe::ping(to, 1);
    let deadline = Instant::now() + within;
    loop {
        let r = pexec(c, from, None, &cmd, 10).await?;
        if r.exit_code == 0 {
            return Ok(evidence(&cmd, &r));
        }
        if Instant::now() > deadline {
            return Err(CheckError::Fail(format!("no reply within {} s\n{}", within.as_secs(), evidence(&cmd, &r))));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn peer_reapply<C: Cluster>(
    c: &C,
    peer: &NodeInfo,
    backend: Backend,
    a1: &TestPod,
    b1: &TestPod,
) -> CheckOutcome {
    let plan = c.plan();
    let np = plan.node(&peer.name).ok_or_else(|| CheckError::Infra(format!("node {} not in plan", peer.name)))?;
    let resp = c.apply(&peer.name, &plan.node_spec(np, backend)).await?;
    let ping = retry_ping(c, a1, b1.ip, Duration::from_secs(15)).await?;
    Ok(format!("re-apply on {} changed: {:?}\n{ping}", peer.name, resp.changes))
}

/// Deletes the route to the peer's pods on node A behind the agent's back and waits for the agent to put it back.
async fn drift<C: Cluster>(c: &C, a: &NodeInfo, backend: Backend, a1: &TestPod, b1: &TestPod) -> CheckOutcome {
    let plan = c.plan();
    let np = plan.node(&a.name).ok_or_else(|| CheckError::Infra(format!("node {} not in plan", a.name)))?;
    let spec = plan.node_spec(np, backend);
    let Some(route) = overlay::expected_routes(&spec).into_iter().find(|r| r.dest.contains(&b1.ip)) else {
        return Err(CheckError::Skip(format!("backend {backend} has no route to {} to delete", b1.ip)));
    };
    let del = format!("ip route del {}", route.dest);
    let r = nexec(c, &a.name, &del).await?;
    if r.exit_code != 0 {
        return Err(CheckError::Fail(format!("could not delete the route\n{}", evidence(&del, &r))));
    }
    let started = Instant::now();
    let show = format!("ip route show {}", route.dest);
    loop {
        let r = nexec(c, &a.name, &show).await?;
        if !r.stdout.trim().is_empty() {
            let took = started.elapsed();
            let ping = retry_ping(c, a1, b1.ip, Duration::from_secs(10)).await?;
            return Ok(format!("route back after {} ms: {}\n{ping}", took.as_millis(), r.stdout.trim()));
        }
        if started.elapsed() > DRIFT_REPAIR_LIMIT {
            return Err(CheckError::Fail(format!(
                "route to {} not repaired within {} s (`{del}` on {})",
                route.dest,
                DRIFT_REPAIR_LIMIT.as_secs(),
                a.name
            )));
        }
        tokio::time::sleep(POLL).await;
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

/// Creates a pod the suite owns and remembers it for cleanup.
pub(super) async fn create_tracked<C: Cluster>(
    c: &C,
    node: &str,
    spec: &PodSpec,
    created: &RefCell<Vec<(String, String)>>,
) -> Result<PodStatus, ClusterError> {
    let st = c.create_pod(node, spec).await?;
    created.borrow_mut().push((node.to_string(), spec.name.clone()));
    Ok(st)
}

fn all_running(st: &PodStatus) -> bool {
    st.phase == PodPhase::Running
        && st.ip.is_some()
        && st.containers.iter().all(|c| matches!(c.state, ContainerState::Running { .. }))
}

pub(super) async fn wait_running<C: Cluster>(c: &C, node: &str, name: &str) -> Result<TestPod, CheckError> {
    let deadline = Instant::now() + POD_READY_TIMEOUT;
    loop {
        let st = c.get_pod(node, name).await?;
        if all_running(&st) {
            let ip = st.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
            return Ok(TestPod { name: name.into(), node: node.into(), ip, status: st });
        }
        if matches!(st.phase, PodPhase::Failed | PodPhase::Succeeded) || Instant::now() > deadline {
            return Err(CheckError::Infra(format!(
                "node {node}: pod {name} not Running after {} s: {:?} {:?}",
                POD_READY_TIMEOUT.as_secs(),
                st.phase,
                st.containers.iter().map(|c| (&c.name, &c.state)).collect::<Vec<_>>()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The pod's httpd answers on 127.0.0.1 (a readiness probe: Running is not serving yet).
async fn wait_serving<C: Cluster>(c: &C, p: &TestPod) -> Result<(), CheckError> {
    let cmd = probe::retrying(&format!("timeout 2 busybox wget -q -O /dev/null http://127.0.0.1:{HTTP_PORT}/"), 100);
    let r = pexec(c, p, None, &cmd, 60).await?;
    if r.exit_code != 0 {
        return Err(CheckError::Infra(format!("pod {} never served HTTP\n{}", p.name, evidence(&cmd, &r))));
    }
    Ok(())
}

/// Re-applies every node's NodeSpec for `backend` and waits until every agent reports convergence to it.
pub async fn switch_backend<C: Cluster>(c: &C, backend: Backend) -> CheckOutcome {
    let plan = c.plan();
    let mut lines = Vec::new();
    for n in &plan.nodes {
        let resp = c.apply(&n.name, &plan.node_spec(n, backend)).await?;
        lines.push(format!("{}: {} change(s) {:?}", n.name, resp.changes.len(), resp.changes));
    }
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    for n in &plan.nodes {
        loop {
            let st = c.node_status(&n.name).await?;
            let on_backend = st.spec.as_ref().is_some_and(|s| s.backend == backend);
            if on_backend && st.converged && st.last_error.is_none() {
                break;
            }
            if Instant::now() > deadline {
                return Err(CheckError::Infra(format!(
                    "node {}: agent did not converge to backend {backend} within {} s (last error: {})",
                    n.name,
                    CONVERGE_TIMEOUT.as_secs(),
                    st.last_error.as_deref().unwrap_or("none")
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(lines.join("\n"))
}

async fn setup<C: Cluster>(c: &C, created: &RefCell<Vec<(String, String)>>) -> Result<Fixture, CheckError> {
    let nodes = nodes_of(c.plan());
    let a = nodes.first().cloned().ok_or_else(|| CheckError::Infra("the plan has no nodes".into()))?;
    let b = nodes.get(1).cloned();
    let mut wanted = vec![(a.name.clone(), web_pod(POD_A1, true)), (a.name.clone(), web_pod(POD_A2, false))];
    if let Some(b) = &b {
        wanted.push((b.name.clone(), web_pod(POD_B1, false)));
    }
    for (node, spec) in &wanted {
        create_tracked(c, node, spec, created).await?;
    }
    let mut pods = Vec::new();
    for (node, spec) in &wanted {
        pods.push(wait_running(c, node, &spec.name).await?);
    }
    for p in &pods {
        wait_serving(c, p).await?;
    }
    let mut it = pods.into_iter();
    let (Some(a1), Some(a2)) = (it.next(), it.next()) else {
        return Err(CheckError::Infra("test pods missing".into()));
    };
    Ok(Fixture { a, b, a1, a2, b1: it.next() })
}

/// Deletes every pod the suite created (also after failures), and any leftover of an interrupted run.
pub(super) async fn cleanup<C: Cluster>(c: &C, created: &RefCell<Vec<(String, String)>>) -> CheckOutcome {
    let pods: Vec<(String, String)> = created.borrow_mut().drain(..).collect();
    let mut errors = Vec::new();
    for (node, name) in &pods {
        // The suite's own throw-away pods (`sleep` as PID 1 ignores SIGTERM): no grace period.
        if let Err(e) = c.delete_pod(node, name, Some(Duration::ZERO)).await {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(format!("removed {}", pods.iter().map(|p| p.1.as_str()).collect::<Vec<_>>().join(", ")))
    } else {
        Err(CheckError::Infra(errors.join("; ")))
    }
}

/// Removes pods left by an interrupted earlier run; a missing pod is the normal case.
async fn remove_leftovers<C: Cluster>(c: &C) {
    for n in &c.plan().nodes {
        for name in [POD_A1, POD_A2, POD_B1, POD_CPU, POD_MEM] {
            if c.get_pod(&n.name, name).await.is_ok() {
                let _ = c.delete_pod(&n.name, name, Some(Duration::ZERO)).await;
            }
        }
    }
}

async fn cgroup_limits<C: Cluster>(c: &C, node: &str, created: &RefCell<Vec<(String, String)>>) -> CheckOutcome {
    create_tracked(c, node, &cpu_pod(), created).await?;
    let p = wait_running(c, node, POD_CPU).await?;
    let cg = p.status.containers.first().map(|c| c.cgroup.clone()).unwrap_or_default();
    let cmd = format!("cat {cg}/cpu.max {cg}/memory.max {cg}/pids.max");
    let r = nexec(c, node, &cmd).await?;
    let ev = evidence(&cmd, &r);
    let lines: Vec<&str> = r.stdout.lines().map(str::trim).collect();
    let mut problems = Vec::new();
    match lines.first().map(|l| l.split_whitespace().collect::<Vec<_>>()).as_deref() {
        Some([quota, period]) => match (quota.parse::<u64>(), period.parse::<u64>()) {
            (Ok(q), Ok(p)) if p > 0 && q * 1000 / p == CPU_LIMIT_MILLIS => {}
            _ => problems.push(format!("cpu.max `{}` is not {CPU_LIMIT_MILLIS}m", lines[0])),
        },
        _ => problems.push("cpu.max unreadable".into()),
    }
    if lines.get(1).and_then(|l| l.parse::<u64>().ok()) != Some(CPU_MEMORY_LIMIT) {
        problems.push(format!("memory.max `{}` is not {CPU_MEMORY_LIMIT}", lines.get(1).unwrap_or(&"")));
    }
    if lines.get(2).and_then(|l| l.parse::<u64>().ok()) != Some(PIDS_LIMIT) {
        problems.push(format!("pids.max `{}` is not {PIDS_LIMIT}", lines.get(2).unwrap_or(&"")));
    }
    if problems.is_empty() {
        Ok(ev)
    } else {
        Err(CheckError::Fail(format!("{}\n{ev}", problems.join("; "))))
    }
}

/// The spinning container of `tb-c-cpu` (created by `cgroup_limits`) is throttled and stays within its quota.
async fn cpu_enforced<C: Cluster>(c: &C, node: &str, created: &RefCell<Vec<(String, String)>>) -> CheckOutcome {
    if !created.borrow().iter().any(|(_, n)| n == POD_CPU) {
        create_tracked(c, node, &cpu_pod(), created).await?;
    }
    let p = wait_running(c, node, POD_CPU).await?;
    let cg = p.status.containers.first().map(|c| c.cgroup.clone()).unwrap_or_default();
    // Each sample is read and timestamped by shell builtins (`read`: the first line of cpu.stat is usage_usec;
    // /proc/uptime gives the time), with no process start in between: under TCG a fork+exec costs 0.1-0.5 s,
    // which would skew the measured window against the usage counters.
    let cmd = format!(
        "read u0 < {cg}/cpu.stat; read t0 _ < /proc/uptime; sleep 3; read u1 < {cg}/cpu.stat; \
         read t1 _ < /proc/uptime; echo \"T0 $t0\"; echo \"$u0\"; echo \"T1 $t1\"; echo \"$u1\"; cat {cg}/cpu.stat"
    );
    let r = nexec(c, node, &cmd).await?;
    let ev = evidence(&cmd, &r);
    let parsed = (|| {
        let (first, second) = r.stdout.split_once("T1 ")?;
        let t0 = uptime_micros(first.lines().next()?.strip_prefix("T0 ")?)?;
        let t1 = uptime_micros(second.lines().next()?)?;
        let u0 = probe::flat_keyed(first, "usage_usec")?;
        let u1 = probe::flat_keyed(second, "usage_usec")?;
        let thr = probe::flat_keyed(second, "nr_throttled")?;
        Some((t1.saturating_sub(t0), u1.saturating_sub(u0), thr))
    })();
    let Some((wall_us, used_us, throttled)) = parsed else {
        return Err(CheckError::Fail(format!("cannot read cpu.stat\n{ev}")));
    };
    let allowed = wall_us as f64 * CPU_LIMIT_MILLIS as f64 / 1000.0 * 1.15;
    let summary = format!(
        "used {used_us} us of CPU in {wall_us} us (quota {CPU_LIMIT_MILLIS}m allows {:.0} us with 15% slack), nr_throttled {throttled}",
        allowed
    );
    if throttled == 0 {
        return Err(CheckError::Fail(format!("never throttled: {summary}\n{ev}")));
    }
    if used_us as f64 > allowed {
        return Err(CheckError::Fail(format!("over quota: {summary}\n{ev}")));
    }
    Ok(format!("{summary}\n{ev}"))
}

/// Seconds with a fraction (`/proc/uptime`'s `12345.67`) as microseconds.
fn uptime_micros(s: &str) -> Option<u64> {
    let secs: f64 = s.trim().parse().ok()?;
    Some((secs * 1e6).round() as u64)
}

async fn oom_kill<C: Cluster>(c: &C, node: &str, created: &RefCell<Vec<(String, String)>>) -> CheckOutcome {
    create_tracked(c, node, &mem_pod(), created).await?;
    let deadline = Instant::now() + POD_READY_TIMEOUT;
    let st = loop {
        let st = c.get_pod(node, POD_MEM).await?;
        if st.containers.iter().any(|c| matches!(c.state, ContainerState::Terminated { .. })) {
            break st;
        }
        if Instant::now() > deadline {
            return Err(CheckError::Fail(format!(
                "the memory hog was not killed within {} s: {st:?}",
                POD_READY_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    };
    let hog = st.containers.first();
    let reason = match hog.map(|c| &c.state) {
        Some(ContainerState::Terminated { reason, exit_code }) => format!("{reason} (exit {exit_code})"),
        _ => String::new(),
    };
    let cg = hog.map(|c| c.cgroup.clone()).unwrap_or_default();
    let cmd = format!("cat {cg}/memory.events");
    let events = nexec(c, node, &cmd).await?;
    let oom_kills = probe::flat_keyed(&events.stdout, "oom_kill").unwrap_or(0);
    let ev = format!("container terminated: {reason}\n{}", evidence(&cmd, &events));
    if reason.starts_with("OOMKilled") || oom_kills > 0 {
        Ok(ev)
    } else {
        Err(CheckError::Fail(format!("the container over its memory limit was not OOM-killed\n{ev}")))
    }
}

/// Runs `check` unless the lab or backend cannot carry it (then the check is a skip with the reason).
async fn gated(skip: Option<&str>, check: impl std::future::Future<Output = CheckOutcome>) -> CheckOutcome {
    match skip {
        Some(why) => Err(CheckError::Skip(why.to_string())),
        None => check.await,
    }
}

fn skip_cross(backend: Backend, f: &Fixture) -> Option<String> {
    if f.b1.is_none() {
        Some("the lab has a single node".into())
    } else if backend == Backend::None {
        Some("backend none routes no pod traffic between nodes".into())
    } else {
        None
    }
}

/// One backend: switch, set up pods, run every check, clean up. `once` adds the backend-independent checks.
pub async fn run_backend<C: Cluster>(c: &C, r: &mut Runner, backend: Backend, once: bool, declared: &[DeclaredTest]) {
    let b = Some(backend);
    let switched =
        r.run_setup("setup", b, "apply NodeSpec to every node and converge", switch_backend(c, backend)).await;
    if switched != CheckStatus::Pass {
        return;
    }
    remove_leftovers(c).await;
    let created = RefCell::new(Vec::new());
    let mut fixture = None;
    r.run_setup("setup", b, "test pods running and serving", async {
        let f = setup(c, &created).await?;
        let names = [Some(&f.a1), Some(&f.a2), f.b1.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| format!("{}@{} {}", p.name, p.node, p.ip))
            .collect::<Vec<_>>()
            .join(", ");
        fixture = Some(f);
        Ok(names)
    })
    .await;
    if let Some(f) = &fixture {
        checks(c, r, backend, once, f, &created).await;
        run_declared(c, r, backend, declared).await;
    }
    r.run_setup("setup", b, "test pods removed", cleanup(c, &created)).await;
}

async fn checks<C: Cluster>(
    c: &C,
    r: &mut Runner,
    backend: Backend,
    once: bool,
    f: &Fixture,
    created: &RefCell<Vec<(String, String)>>,
) {
    let b = Some(backend);
    let e = Level::Error;
    let net = "pod-network";
    let (a1, a2) = (&f.a1, &f.a2);
    let skip = skip_cross(backend, f);
    let skip = skip.as_deref();
    // b1 stands in for a1 when there is no second node; every use is behind `cross`, which skips then.
    let b1 = f.b1.as_ref().unwrap_or(&f.a1);
    let nb = f.b.as_ref().unwrap_or(&f.a);

    r.run(net, b, "pod->pod same-node: icmp", e, icmp(c, a1, a2.ip)).await;
    r.run(net, b, "pod->pod same-node: tcp", e, tcp(c, a1, a2)).await;
    r.run(net, b, "pod->pod same-node: udp", e, udp(c, a1, a2, 512)).await;
    r.run(net, b, "pod->pod same-node: http", e, http(c, a1, a2)).await;
    r.run(net, b, "pod->pod cross-node: icmp", e, gated(skip, icmp(c, a1, b1.ip))).await;
    r.run(net, b, "pod->pod cross-node: tcp", e, gated(skip, tcp(c, a1, b1))).await;
    r.run(net, b, "pod->pod cross-node: udp", e, gated(skip, udp(c, a1, b1, 512))).await;
    r.run(net, b, "pod->pod cross-node: http", e, gated(skip, http(c, a1, b1))).await;
    let all: Vec<&TestPod> = [Some(a1), Some(a2), f.b1.as_ref()].into_iter().flatten().collect();
    r.run(net, b, "every pod reaches every other pod", e, matrix(c, &all, skip.is_none())).await;
    r.run(net, b, "node->pod same-node", e, node_to_pod(c, &f.a, a2)).await;
    r.run(net, b, "node->pod cross-node", e, gated(skip, node_to_pod(c, &f.a, b1))).await;
    r.run(net, b, "pod->node same-node", e, pod_to_node(c, a1, &f.a)).await;
    r.run(net, b, "pod->node cross-node", e, gated(skip, pod_to_node(c, a1, nb))).await;
    r.run(net, b, "no SNAT pod->pod same-node", e, no_snat(c, a1, a2)).await;
    r.run(net, b, "no SNAT pod->pod cross-node", e, gated(skip, no_snat(c, a1, b1))).await;
    r.run(net, b, "hairpin: bridge port hairpin on, pod reaches its own IP", e, hairpin(c, a1)).await;

    let mtu = backend.pod_mtu(f.a.underlay_mtu);
    let g = "mtu";
    r.run(
        g,
        b,
        &format!("cross-node DF ping at the overlay MTU ({mtu}) passes"),
        e,
        gated(skip, df_at_mtu(c, a1, b1, mtu)),
    )
    .await;
    r.run(
        g,
        b,
        &format!("cross-node DF ping above the overlay MTU ({}) fails cleanly", mtu + 1),
        e,
        gated(skip, df_above_mtu(c, a1, b1, mtu)),
    )
    .await;
    r.run(g, b, "cross-node TCP payload of 1.3 MB arrives whole (sha256)", e, gated(skip, big_tcp(c, a1, b1))).await;
    r.run(
        g,
        b,
        "cross-node UDP datagram larger than the MTU arrives (fragmented)",
        e,
        gated(skip, udp(c, a1, b1, 3000)),
    )
    .await;

    let g = "overlay";
    for n in &c.plan().nodes {
        r.run(g, b, &format!("control state on {} matches the plan", n.name), e, overlay_state(c, &n.name, backend))
            .await;
    }
    r.run(
        g,
        b,
        &format!("connectivity after {} re-applies its spec", nb.name),
        e,
        gated(skip, peer_reapply(c, nb, backend, a1, b1)),
    )
    .await;
    r.run(
        g,
        b,
        &format!("drift: a deleted route on {} is repaired within 10 s", f.a.name),
        e,
        gated(skip, drift(c, &f.a, backend, a1, b1)),
    )
    .await;

    if once {
        let g = "sandbox";
        r.run(g, None, "containers of a pod share one network namespace", e, shared_netns(c, a1)).await;
        r.run(g, None, "containers of a pod talk over localhost", e, localhost(c, a1)).await;
        r.run(g, None, "a pod has exactly one IP", e, one_ip(c, a1)).await;
        r.run(g, None, "hostname is the pod name", e, hostname(c, a1)).await;
        for kind in ["pid", "uts", "ipc", "mnt", "net"] {
            r.run(g, None, &format!("pods and the host do not share the {kind} namespace"), e, isolation(c, f, kind))
                .await;
        }
        let g = "cgroups";
        let node = f.a.name.as_str();
        r.run(g, None, "limits written: cpu.max, memory.max, pids.max", e, cgroup_limits(c, node, created)).await;
        r.run(g, None, "CPU quota of 200m enforced: throttled, within quota", e, cpu_enforced(c, node, created)).await;
        r.run(g, None, "memory limit enforced: OOM kill", e, oom_kill(c, node, created)).await;
    }
}
