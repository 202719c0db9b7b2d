//! The contract: an endpoint whose pod is deleted, or becomes unready, leaves every node's proxy
//! within 2 s. A watcher on each node polls its `testbed-proxy` table for the endpoint's DNAT; the time is
//! from the change (the API delete, the connection that ends the pod's readiness container) to the
//! watcher's return over SSH, so an upper bound of what the node took.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};

use super::super::super::cluster::Cluster;
use super::super::super::harness::{evidence, nexec, pexec, TestPod};
use super::super::super::probe::HTTP_PORT;
use super::super::super::runner::{CheckError, CheckOutcome};
use super::super::control_plane::api_err;
use super::objects::UNREADY_PORT;
use super::{ServiceLab, NAMESPACE};

/// The bound.
const WITHIN: Duration = Duration::from_secs(2);
/// Time for the watchers' SSH sessions to start before the change.
const WATCHERS_START: Duration = Duration::from_secs(3);

/// Exits 0 once the DNAT to `ip` is gone from the table; 4 when it was not there to begin with, 3 when the
/// table cannot be read, 1 after 20 s.
fn watcher(ip: std::net::Ipv4Addr) -> String {
    let has = format!("nft list table ip testbed-proxy > /tmp/tb-svc-watch || exit 3; grep -q 'dnat to {ip}:{HTTP_PORT}' /tmp/tb-svc-watch");
    format!("{has} || exit 4; i=0; while {has}; do i=$((i+1)); [ $i -gt 200 ] && exit 1; sleep 0.1; done; echo gone")
}

/// Starts a watcher on every node, runs `change` once they have started, and gives each node's time.
async fn follows<C: Cluster, F>(c: &C, lab: &ServiceLab, victim: &TestPod, change: F) -> CheckOutcome
where
    F: std::future::Future<Output = Result<(), CheckError>>,
{
    let cmd = watcher(victim.ip);
    let changed = std::sync::OnceLock::<Instant>::new();
    let watchers = futures::future::join_all(lab.nodes.iter().map(|n| {
        let (cmd, changed) = (&cmd, &changed);
        async move {
            let r = nexec(c, &n.name, cmd).await;
            (n.name.clone(), r, changed.get().map(|t| t.elapsed()))
        }
    }));
    let trigger = async {
        tokio::time::sleep(WATCHERS_START).await;
        let _ = changed.set(Instant::now());
        change.await
    };
    let (results, triggered) = futures::join!(watchers, trigger);
    triggered?;
    let mut lines = Vec::new();
    let mut slow = Vec::new();
    for (node, r, took) in results {
        let r = r?;
        let took = took.ok_or_else(|| {
            CheckError::Fail(format!("node {node}: the watcher ended before the change\n{}", evidence(&cmd, &r)))
        })?;
        if r.exit_code != 0 {
            return Err(CheckError::Fail(format!(
                "node {node}: {} still in the proxy's rules (watcher exit {})\n{}",
                victim.ip,
                r.exit_code,
                evidence(&cmd, &r)
            )));
        }
        lines.push(format!("{node}: gone within {:.2} s", took.as_secs_f64()));
        if took > WITHIN {
            slow.push(node);
        }
    }
    if !slow.is_empty() {
        return Err(CheckError::Fail(format!("not within {} s on {slow:?}: {}", WITHIN.as_secs(), lines.join(", "))));
    }
    Ok(format!("{} {}: {}", victim.status.name, victim.ip, lines.join(", ")))
}

pub(super) async fn deleted<C: Cluster>(c: &C, lab: &ServiceLab) -> CheckOutcome {
    let victim = lab.endpoints.get(1).ok_or_else(|| CheckError::Infra("no second endpoint".into()))?;
    let api: Api<Pod> = Api::namespaced(lab.client.clone(), NAMESPACE);
    let now = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    follows(c, lab, victim, async {
        api.delete(&victim.status.name, &now).await.map_err(api_err("delete pod"))?;
        Ok(())
    })
    .await
}

pub(super) async fn unready<C: Cluster>(c: &C, lab: &ServiceLab) -> CheckOutcome {
    let victim = lab.endpoints.first().ok_or_else(|| CheckError::Infra("no endpoint".into()))?;
    let cmd = format!("echo bye | timeout 5 busybox nc -w 1 {} {UNREADY_PORT}", victim.ip);
    follows(c, lab, victim, async {
        let r = pexec(c, &lab.client_pod, None, &cmd, 10).await?;
        if r.exit_code != 0 {
            return Err(CheckError::Infra(format!(
                "could not end {}'s readiness\n{}",
                victim.status.name,
                evidence(&cmd, &r)
            )));
        }
        Ok(())
    })
    .await
}
