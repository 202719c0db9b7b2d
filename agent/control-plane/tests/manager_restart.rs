//! The controller manager's restart of failed loops, against real etcd and the API server (no VM): a loop
//! that fails on purpose (its first two runs end with an error, as a list or watch the API did not answer
//! in time) is started again with the manager's back-off, together with the real loops, while this member
//! keeps the leader Lease; the real loops then still roll a Deployment out.

#![allow(clippy::unwrap_used)]

mod apiserver_lab;
mod common;
// Shared with the other controller tests; this one uses part of it.
#[allow(dead_code)]
mod controllers_lab;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use testbed_api::objects::Lease;
use testbed_control_plane::client::{paths, ClientError};
use testbed_control_plane::controllers::leader::Timing;
use testbed_control_plane::controllers::manager::{self, Loop};
use testbed_control_plane::controllers::Context;

use controllers_lab::{deployment, wait_for, Cluster};

/// When the failing loop was started, in order.
static STARTS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

/// How many of the failing loop's runs end with an error before it keeps running.
const FAILURES: usize = 2;

/// The injected fault: a loop whose first [`FAILURES`] runs fail after 200 ms, later runs run until dropped.
fn failing_loop(_ctx: Context) -> BoxFuture<'static, Result<(), ClientError>> {
    Box::pin(async {
        let run = {
            let mut starts = STARTS.lock().unwrap();
            starts.push(Instant::now());
            starts.len()
        };
        if run <= FAILURES {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Err(ClientError::Unreachable(format!("injected failure of run {run}")));
        }
        std::future::pending().await
    })
}

async fn leader_lease(c: &Cluster) -> Lease {
    c.api.get(&paths::lease(manager::LEASE_NAMESPACE, manager::LEASE_NAME)).await.unwrap()
}

#[tokio::test]
async fn a_failed_loop_is_started_again_with_back_off_and_the_lease_is_kept() {
    let c = Cluster::without_manager().await;
    let loops: Vec<(&'static str, Loop)> =
        manager::LOOPS.iter().copied().chain([("failing", failing_loop as Loop)]).collect();
    let loops: &'static [(&'static str, Loop)] = Box::leak(loops.into_boxed_slice());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let ctx = Context::new(c.lab.client(), "cp1");
    let manager = tokio::spawn(manager::run_loops(ctx, Timing::default(), loops, async {
        let _ = stopped.await;
    }));

    wait_for("the failing loop's first run", Duration::from_secs(20), || async {
        (!STARTS.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let held = leader_lease(&c).await;
    assert_eq!(held.spec.holder_identity.as_deref(), Some("cp1"));

    // Back after each failure: 200 ms of run, then 1 s, then 2 s of back-off.
    wait_for("the failing loop started again after each failure", Duration::from_secs(15), || async {
        (STARTS.lock().unwrap().len() > FAILURES).then_some(())
    })
    .await;
    let starts = STARTS.lock().unwrap().clone();
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= Duration::from_millis(1200), "first restart after {:?}, before the 1 s back-off", gaps[0]);
    assert!(gaps[1] >= Duration::from_millis(2200), "second restart after {:?}, before the 2 s back-off", gaps[1]);
    eprintln!("restarts after {gaps:?}");

    // The Lease stayed with cp1 all along: same holder, same acquisition, no transition, and renewed.
    let kept = leader_lease(&c).await;
    assert_eq!(kept.spec.holder_identity.as_deref(), Some("cp1"));
    assert_eq!(kept.spec.acquire_time, held.spec.acquire_time, "the Lease was acquired again");
    assert_eq!(kept.spec.lease_transitions, held.spec.lease_transitions, "the Lease changed hands");
    assert_ne!(kept.spec.renew_time, held.spec.renew_time, "the Lease was not renewed meanwhile");

    // The real loops, started again with it, work: a Deployment rolls out.
    c.create(&deployment("after-restart", 3, 1, 0)).await;
    c.wait_rolled_out("after-restart", 3, Duration::from_secs(30)).await;

    let _ = stop.send(());
    manager.await.unwrap();
    let released = leader_lease(&c).await;
    assert_eq!(released.spec.holder_identity.as_deref().unwrap_or(""), "", "the Lease was not given up at shutdown");
}
