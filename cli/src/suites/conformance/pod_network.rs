//! The `pod-network` group: pod<->pod, node<->pod traffic on one node and across nodes (ICMP, TCP, UDP, HTTP),
//! the full reachability matrix, no SNAT between pods, and hairpin (a pod reaching its own IP).

use std::net::Ipv4Addr;

use testbed_api::Backend;

use super::super::cluster::{Cluster, NodeInfo};
use super::super::harness::{evidence, nexec, pexec, succeeded, TestPod};
use super::super::probe::{self, HTTP_PORT, IPERF_PORT, TCP_PORT};
use super::super::runner::{CheckError, CheckOutcome, Level, Runner};
use super::fixture::Fixture;
use super::gated;

/// Runs the group's checks; `skip` (why cross-node traffic cannot work here) turns the cross-node ones to skips.
pub(super) async fn run<C: Cluster>(c: &C, r: &mut Runner, backend: Backend, f: &Fixture, skip: Option<&str>) {
    let (net, b, e) = ("pod-network", Some(backend), Level::Error);
    let (a1, a2, b1, nb) = (&f.a1, &f.a2, f.cross_pod(), f.cross_node());
    r.run(net, b, "pod->pod same-node: icmp", e, icmp(c, a1, a2.ip)).await;
    r.run(net, b, "pod->pod same-node: tcp", e, tcp(c, a1, a2)).await;
    r.run(net, b, "pod->pod same-node: udp", e, udp(c, a1, a2, 512)).await;
    r.run(net, b, "pod->pod same-node: http", e, http(c, a1, a2)).await;
    r.run(net, b, "pod->pod cross-node: icmp", e, gated(skip, icmp(c, a1, b1.ip))).await;
    r.run(net, b, "pod->pod cross-node: tcp", e, gated(skip, tcp(c, a1, b1))).await;
    r.run(net, b, "pod->pod cross-node: udp", e, gated(skip, udp(c, a1, b1, 512))).await;
    r.run(net, b, "pod->pod cross-node: http", e, gated(skip, http(c, a1, b1))).await;
    r.run(net, b, "every pod reaches every other pod", e, matrix(c, &f.pods(), skip.is_none())).await;
    r.run(net, b, "node->pod same-node", e, node_to_pod(c, &f.a, a2)).await;
    r.run(net, b, "node->pod cross-node", e, gated(skip, node_to_pod(c, &f.a, b1))).await;
    r.run(net, b, "pod->node same-node", e, pod_to_node(c, a1, &f.a)).await;
    r.run(net, b, "pod->node cross-node", e, gated(skip, pod_to_node(c, a1, nb))).await;
    r.run(net, b, "no SNAT pod->pod same-node", e, no_snat(c, a1, a2)).await;
    r.run(net, b, "no SNAT pod->pod cross-node", e, gated(skip, no_snat(c, a1, b1))).await;
    r.run(net, b, "hairpin: bridge port hairpin on, pod reaches its own IP", e, hairpin(c, a1)).await;
}

/// Passes when `cmd` exits 0 in the pod.
pub(super) async fn pod_cmd<C: Cluster>(c: &C, from: &TestPod, what: &str, cmd: &str) -> CheckOutcome {
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

/// iperf3 UDP from `from` to `to` with `len`-byte datagrams; some must arrive, and the server must have seen
/// them come from the client's own pod IP (no SNAT for UDP either).
pub(super) async fn udp<C: Cluster>(c: &C, from: &TestPod, to: &TestPod, len: u32) -> CheckOutcome {
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
    let seen = got.remote_host.as_deref().and_then(|h| h.trim_start_matches("::ffff:").parse::<Ipv4Addr>().ok());
    if seen != Some(from.ip) {
        return Err(CheckError::Fail(format!(
            "datagrams arrived from {}, not the client pod IP {} (SNAT)\n{ev}",
            got.remote_host.as_deref().unwrap_or("an address iperf3 did not report"),
            from.ip
        )));
    }
    Ok(format!("{arrived}/{} datagrams of {len} bytes arrived from {}", got.packets, from.ip))
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
