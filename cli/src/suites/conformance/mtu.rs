//! The `mtu` group. The expected MTU comes from the backend's header sizes (`overlay::overlay_mtu`), not from
//! the agent's formula, so a wrong overhead is caught. Across nodes a DF packet of exactly that size passes
//! (proving the pod MTU is not above what the path carries, and not below the expected value); one byte more
//! is refused with the MTU named, both at the pod's own eth0 and on the node's route to the remote pods (the
//! overlay device: flannel.1, flannel0, or eth1 for host-gw); payloads larger than the MTU (a 1.3 MB TCP
//! transfer, a fragmented UDP datagram) arrive whole.

use testbed_api::Backend;

use super::super::cluster::{Cluster, NodeInfo};
use super::super::harness::{evidence, nexec, pexec, TestPod};
use super::super::overlay::overlay_mtu;
use super::super::probe;
use super::super::runner::{CheckError, CheckOutcome, Level, Runner};
use super::fixture::Fixture;
use super::gated;
use super::pod_network::{pod_cmd, udp};

/// Runs the group's checks, all cross-node: `skip` says why they cannot run here, if they cannot.
pub(super) async fn run<C: Cluster>(c: &C, r: &mut Runner, backend: Backend, f: &Fixture, skip: Option<&str>) {
    let (g, b, e) = ("mtu", Some(backend), Level::Error);
    let (a1, b1) = (&f.a1, f.cross_pod());
    let mtu = overlay_mtu(backend, f.a.underlay_mtu);
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
        &format!("cross-node DF ping above the overlay MTU ({}) is refused at the pod's eth0 (mtu={mtu})", mtu + 1),
        e,
        gated(skip, df_above_mtu(c, a1, b1, mtu)),
    )
    .await;
    r.run(
        g,
        b,
        &format!(
            "cross-node DF ping above the overlay MTU ({}) from {} is refused by its overlay route (mtu={mtu})",
            mtu + 1,
            f.a.name
        ),
        e,
        gated(skip, node_route_refuses_above_mtu(c, &f.a, b1, mtu)),
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
}

async fn df_at_mtu<C: Cluster>(c: &C, from: &TestPod, to: &TestPod, mtu: u32) -> CheckOutcome {
    let link = pexec(c, from, None, "ip -o link show eth0", 10).await?;
    let pod_mtu = probe::link_mtu(&link.stdout);
    if pod_mtu != Some(mtu) {
        return Err(CheckError::Fail(format!("pod eth0 MTU is {pod_mtu:?}, expected {mtu}\n{}", link.stdout.trim())));
    }
    pod_cmd(c, from, &format!("DF ping of a {mtu}-byte packet"), &probe::ping_df(to.ip, mtu - 28)).await
}

/// The pod's own interface refuses the packet before it leaves (EMSGSIZE): what a pod sees when it ignores
/// its MTU. It must fail at once and name the expected MTU, not hang or pass.
async fn df_above_mtu<C: Cluster>(c: &C, from: &TestPod, to: &TestPod, mtu: u32) -> CheckOutcome {
    let cmd = probe::ping_df(to.ip, mtu - 27);
    let r = pexec(c, from, None, &cmd, 30).await?;
    refused_naming_mtu(&cmd, r.exit_code, &format!("{}{}", r.stdout, r.stderr), r.timed_out, mtu)
}

/// From the node's root namespace, whose own underlay NIC would take a bigger packet, the route to the remote
/// pods goes through the overlay device: the refusal comes from that device's MTU, so an overlay device set
/// larger than its encapsulation allows (or a route through the wrong device) is caught here.
async fn node_route_refuses_above_mtu<C: Cluster>(c: &C, node: &NodeInfo, to: &TestPod, mtu: u32) -> CheckOutcome {
    let cmd = probe::ping_df(to.ip, mtu - 27);
    let r = nexec(c, &node.name, &cmd).await?;
    refused_naming_mtu(&cmd, r.exit_code, &format!("{}{}", r.stdout, r.stderr), false, mtu)
}

fn refused_naming_mtu(cmd: &str, code: i32, out: &str, timed_out: bool, mtu: u32) -> CheckOutcome {
    let ev = format!("$ {cmd}\nexit {code}\n{}", out.trim());
    if code == 0 || out.contains(" bytes from ") {
        return Err(CheckError::Fail(format!("a {}-byte DF packet got through an MTU of {mtu}\n{ev}", mtu + 1)));
    }
    if timed_out {
        return Err(CheckError::Fail(format!("ping hung instead of failing\n{ev}")));
    }
    // iputils: "ping: local error: message too long, mtu=1450" (or "Frag needed and DF set (mtu = 1450)").
    let named = out.contains(&format!("mtu={mtu}")) || out.contains(&format!("mtu = {mtu}"));
    if !named {
        return Err(CheckError::Fail(format!("refused, but not for an MTU of {mtu}\n{ev}")));
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
