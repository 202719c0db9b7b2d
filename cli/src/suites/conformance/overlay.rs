//! The `overlay` group: each agent's routes, neighbours and FDB entries match what the plan expects for the
//! backend, connectivity survives a peer re-applying its spec, and the agent repairs a route deleted behind its
//! back (drift) within 10 s.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use testbed_api::Backend;

use super::super::cluster::{Cluster, NodeInfo};
use super::super::harness::{evidence, nexec, pexec, TestPod, POLL};
use super::super::overlay::{expected_routes, mismatches};
use super::super::probe;
use super::super::runner::{CheckError, CheckOutcome, Level, Runner};
use super::fixture::Fixture;
use super::gated;

/// The agent's periodic reconcile must repair drift within this (the requirement).
const DRIFT_REPAIR_LIMIT: Duration = Duration::from_secs(10);

/// Runs the group's checks; `skip` (why cross-node traffic cannot work here) turns re-apply and drift to skips.
pub(super) async fn run<C: Cluster>(c: &C, r: &mut Runner, backend: Backend, f: &Fixture, skip: Option<&str>) {
    let (g, b, e) = ("overlay", Some(backend), Level::Error);
    let (a1, b1, nb) = (&f.a1, f.cross_pod(), f.cross_node());
    for n in &c.plan().nodes {
        r.run(g, b, &format!("control state on {} matches the plan", n.name), e, overlay_state(c, &n.name, backend))
            .await;
    }
    r.run(
        g,
        b,
        &format!("{} re-applies its unchanged spec: no change, connectivity kept", nb.name),
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
}

async fn overlay_state<C: Cluster>(c: &C, node: &str, backend: Backend) -> CheckOutcome {
    let plan = c.plan();
    let np = plan.node(node).ok_or_else(|| CheckError::Infra(format!("node {node} is not in the plan")))?;
    let spec = plan.node_spec(np, backend);
    let st = c.node_status(node).await?;
    let m = mismatches(&spec, &st.network);
    let seen = format!(
        "links:\n{}\nroutes:\n{}\nneighbours:\n{}\nfdb:\n{}",
        st.network.links.join("\n"),
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
    // The peer already runs exactly this spec: re-applying it must change nothing (the agent is idempotent),
    // and traffic must still flow afterwards.
    let resp = c.apply(&peer.name, &plan.node_spec(np, backend)).await?;
    if !resp.changes.is_empty() {
        return Err(CheckError::Fail(format!(
            "re-applying the unchanged spec on {} changed: {:?}",
            peer.name, resp.changes
        )));
    }
    let ping = retry_ping(c, a1, b1.ip, Duration::from_secs(15)).await?;
    Ok(format!("re-apply of the unchanged spec on {} changed nothing\n{ping}", peer.name))
}

/// Deletes the route to the peer's pods on node A behind the agent's back and waits for the agent to put it back.
async fn drift<C: Cluster>(c: &C, a: &NodeInfo, backend: Backend, a1: &TestPod, b1: &TestPod) -> CheckOutcome {
    let plan = c.plan();
    let np = plan.node(&a.name).ok_or_else(|| CheckError::Infra(format!("node {} not in plan", a.name)))?;
    let spec = plan.node_spec(np, backend);
    let Some(route) = expected_routes(&spec).into_iter().find(|r| r.dest.contains(&b1.ip)) else {
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
