//! The controller manager: every control loop of [`LOOPS`], run while this member holds the Lease
//! `kube-system/testbed-controller-manager` and stopped at once when it loses it. A standby keeps trying
//! and takes over when the Lease runs out (or at once when the leader gives it up on shutdown).

use std::future::Future;

use futures::future::{select_all, BoxFuture};

use super::leader::{Elector, Timing};
use super::{deployment, endpointslice, gc, node_lifecycle, replicaset, scheduler, Context};
use crate::client::ClientError;

/// The namespace of the leader Lease.
pub const LEASE_NAMESPACE: &str = "kube-system";
/// The name of the leader Lease.
pub const LEASE_NAME: &str = "testbed-controller-manager";

/// A control loop's entry point: runs until dropped; an error ends the manager (and the process, which
/// inittab restarts).
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

/// How one term as leader ended.
enum Term {
    /// A loop failed.
    Failed(&'static str, ClientError),
    /// A renewal did not succeed within the renew deadline.
    Lost,
    /// The manager was told to stop.
    Shutdown,
}

/// Runs the manager until `shutdown` completes (the Lease is then given up) or a loop fails.
pub async fn run(ctx: Context, timing: Timing, shutdown: impl Future<Output = ()>) -> Result<(), ClientError> {
    let mut elector = Elector::new(ctx.client.clone(), &ctx.identity, LEASE_NAMESPACE, LEASE_NAME, timing);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = elector.acquire() => {}
            _ = &mut shutdown => return Ok(()),
        }
        tracing::info!(identity = ctx.identity, "leading: starting the control loops");
        let loops = select_all(LOOPS.iter().map(|(name, run)| {
            let fut = run(ctx.clone());
            Box::pin(async move { (*name, fut.await) })
        }));
        let term = tokio::select! {
            ((name, result), _, _) = loops => match result {
                Ok(()) => Term::Failed(name, ClientError::Unreachable(format!("the {name} loop ended"))),
                Err(e) => Term::Failed(name, e),
            },
            _ = elector.hold() => Term::Lost,
            _ = &mut shutdown => Term::Shutdown,
        };
        match term {
            Term::Lost => tracing::warn!(identity = ctx.identity, "leadership lost: the control loops stopped"),
            Term::Shutdown => {
                elector.release().await;
                return Ok(());
            }
            Term::Failed(name, e) => {
                tracing::error!(loop_ = name, error = %e, "a control loop failed");
                elector.release().await;
                return Err(e);
            }
        }
    }
}
