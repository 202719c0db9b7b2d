//! The controller manager: every control loop of [`LOOPS`], run while this member holds the Lease
//! `kube-system/testbed-controller-manager` and stopped at once when it loses it. A standby keeps trying
//! and takes over when the Lease runs out (or at once when the leader gives it up on shutdown).

use std::future::Future;
use std::time::{Duration, Instant};

use futures::future::{select_all, BoxFuture};

use super::leader::{Elector, Timing};
use super::{deployment, endpointslice, gc, node_lifecycle, replicaset, scheduler, Context};
use crate::client::ClientError;

/// The namespace of the leader Lease.
pub const LEASE_NAMESPACE: &str = "kube-system";
/// The name of the leader Lease.
pub const LEASE_NAME: &str = "testbed-controller-manager";

/// A control loop's entry point: runs until dropped; an error (or its end) has the manager start every loop
/// again after a back-off.
pub type Loop = fn(Context) -> BoxFuture<'static, Result<(), ClientError>>;

/// The control loops, one entry each; a loop with settings reads them from `ctx.settings`.
pub const LOOPS: &[(&str, Loop)] = &[
    ("replicaset", |ctx| Box::pin(replicaset::run(ctx))),
    ("deployment", |ctx| Box::pin(deployment::run(ctx))),
    ("garbage-collector", |ctx| Box::pin(gc::run(ctx))),
    ("endpointslice", |ctx| Box::pin(endpointslice::run(ctx))),
    ("scheduler", |ctx| {
        let config = ctx.settings.scheduler.clone();
        Box::pin(scheduler::run(ctx, config))
    }),
    ("node-lifecycle", |ctx| {
        let config = ctx.settings.node_lifecycle.clone();
        Box::pin(node_lifecycle::run(ctx, config))
    }),
];

/// How one run of the loops ended.
enum Term {
    /// A loop failed.
    Failed(&'static str, ClientError),
    /// A renewal did not succeed within the renew deadline.
    Lost,
    /// The manager was told to stop.
    Shutdown,
}

/// The pause before a leader starts its loops again after one failed: doubling from the first to the
/// last, back to the first once the loops ran for `LOOPS_RAN` (client-go's reflectors back off alike).
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
const LOOPS_RAN: Duration = Duration::from_secs(60);

/// Runs the manager until `shutdown` completes (the Lease is then given up). A loop that fails (a list or
/// watch the API server did not answer in time, as happens on a loaded host) has every loop started again
/// after a back-off, each listing afresh, while this member keeps the Lease: giving it up and leaving the
/// process, as the manager did first, made the members hand the Lease round and round (14 transitions in
/// 5 minutes on a lab at load 17, with no ReplicaSet ever created) while every new leader listed everything
/// at once again.
pub async fn run(ctx: Context, timing: Timing, shutdown: impl Future<Output = ()>) {
    run_loops(ctx, timing, LOOPS, shutdown).await;
}

/// [`run`] with another list of loops: the seam through which a test runs a loop that fails on purpose
/// beside the real ones.
pub async fn run_loops(
    ctx: Context,
    timing: Timing,
    loops: &'static [(&'static str, Loop)],
    shutdown: impl Future<Output = ()>,
) {
    let mut elector = Elector::new(ctx.client.clone(), &ctx.identity, LEASE_NAMESPACE, LEASE_NAME, timing);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = elector.acquire() => {}
            _ = &mut shutdown => return,
        }
        tracing::info!(identity = ctx.identity, "leading: starting the control loops");
        let mut pause = RESTART_FIRST;
        loop {
            let started = Instant::now();
            let running = select_all(loops.iter().map(|(name, run)| {
                let fut = run(ctx.clone());
                Box::pin(async move { (*name, fut.await) })
            }));
            let term = tokio::select! {
                ((name, result), _, _) = running => match result {
                    Ok(()) => Term::Failed(name, ClientError::Unreachable(format!("the {name} loop ended"))),
                    Err(e) => Term::Failed(name, e),
                },
                _ = elector.hold() => Term::Lost,
                _ = &mut shutdown => Term::Shutdown,
            };
            match term {
                Term::Lost => {
                    tracing::warn!(identity = ctx.identity, "leadership lost: the control loops stopped");
                    break;
                }
                Term::Shutdown => {
                    elector.release().await;
                    return;
                }
                Term::Failed(name, e) => {
                    if started.elapsed() >= LOOPS_RAN {
                        pause = RESTART_FIRST;
                    }
                    tracing::error!(loop_ = name, error = %e, "a control loop failed; starting the loops again in {pause:?}");
                    // Still the leader meanwhile: the Lease is renewed through the pause.
                    let interrupted = tokio::select! {
                        () = tokio::time::sleep(pause) => None,
                        () = elector.hold() => Some(Term::Lost),
                        () = &mut shutdown => Some(Term::Shutdown),
                    };
                    pause = (pause * 2).min(RESTART_MAX);
                    match interrupted {
                        None => {}
                        Some(Term::Shutdown) => {
                            elector.release().await;
                            return;
                        }
                        Some(_) => {
                            tracing::warn!(identity = ctx.identity, "leadership lost during the pause");
                            break;
                        }
                    }
                }
            }
        }
    }
}
