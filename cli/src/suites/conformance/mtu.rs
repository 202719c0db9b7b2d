//! The `mtu` group: across nodes, a DF packet of exactly the pod MTU passes and one byte more fails cleanly, and
//! payloads larger than the MTU (a 1.3 MB TCP transfer, a fragmented UDP datagram) arrive whole.

use testbed_api::Backend;

use super::super::cluster::Cluster;
use super::super::harness::{evidence, pexec, TestPod};
use super::super::probe;
use super::super::runner::{CheckError, CheckOutcome, Level, Runner};
use super::fixture::Fixture;
use super::gated;
use super::pod_network::{pod_cmd, udp};

/// Runs the group's checks, all cross-node: `skip` says why they cannot run here, if they cannot.
pub(super) async fn run<C: Cluster>(c: &C, r: &mut Runner, backend: Backend, f: &Fixture, skip: Option<&str>) {
    let (g, b, e) = ("mtu", Some(backend), Level::Error);
    let (a1, b1) = (&f.a1, f.cross_pod());
    let mtu = backend.pod_mtu(f.a.underlay_mtu);
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
