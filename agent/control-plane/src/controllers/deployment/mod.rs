//! The Deployment controller (pkg/controller/deployment): one ReplicaSet per template version, named
//! `<deployment>-<pod-template-hash>`, rolled from the old to the new with `RollingUpdate` (within
//! `maxSurge` / `maxUnavailable`) or `Recreate`; scaling changes the current ReplicaSet (proportionally
//! across all of them mid-rollout); `paused` holds rollouts but not scaling; old ReplicaSets beyond
//! `revisionHistoryLimit` are deleted; the status carries `Available` and `Progressing`.
//!
//! The arithmetic is pure ([`util`], [`rolling`], [`progress`]); `sync` and `replicasets` apply it.

mod progress;
mod replicasets;
mod rolling;
mod rollout;
mod sync;
#[cfg(test)]
mod test_objects;
pub mod util;

use std::sync::Arc;

use testbed_api::objects::{Deployment, Pod, ReplicaSet};

use super::cache::{key_of, Cache};
use super::podutil::controller_of;
use super::queue::Queue;
use super::{resync, work, Context};
use crate::client::{paths, ClientError};
use crate::resources::Kind;

/// The component name in Events.
const COMPONENT: &str = "deployment-controller";

/// Why a Deployment could not be reconciled (it is retried after a delay either way, as Kubernetes does).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A request failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// `maxSurge` or `maxUnavailable` is malformed.
    #[error("spec.strategy.rollingUpdate: {0}")]
    Invalid(#[from] util::InvalidIntOrPercent),
}

/// The controller's caches and queue.
#[derive(Clone)]
struct Controller {
    ctx: Context,
    deployments: Cache<Deployment>,
    replicasets: Cache<ReplicaSet>,
    pods: Cache<Pod>,
    queue: Queue,
}

/// Runs the Deployment controller until dropped.
pub async fn run(ctx: Context) -> Result<(), ClientError> {
    let c = Controller {
        ctx,
        deployments: Cache::default(),
        replicasets: Cache::default(),
        pods: Cache::default(),
        queue: Queue::default(),
    };
    let client = c.ctx.client.clone();
    let d_informer = c.deployments.clone().run(
        client.clone(),
        paths::collection(Kind::Deployment, None),
        Box::new({
            let q = c.queue.clone();
            move |_, new: Option<&Deployment>| {
                if let Some(d) = new {
                    q.add(&key_of(d));
                }
            }
        }),
    );
    let rs_informer = c.replicasets.clone().run(
        client.clone(),
        paths::collection(Kind::ReplicaSet, None),
        Box::new({
            let c = c.clone();
            move |old: Option<&ReplicaSet>, new: Option<&ReplicaSet>| {
                for rs in old.into_iter().chain(new) {
                    c.queue_for_replicaset(rs);
                }
            }
        }),
    );
    let pod_informer = c.pods.clone().run(
        client,
        paths::collection(Kind::Pod, None),
        Box::new({
            let c = c.clone();
            // Only a pod's end matters: a Recreate rollout waits for the old pods to be gone.
            move |old: Option<&Pod>, new: Option<&Pod>| {
                if let (Some(pod), None) = (old, new) {
                    c.queue_for_pod(pod);
                }
            }
        }),
    );
    let workers = async {
        c.deployments.synced().await;
        c.replicasets.synced().await;
        c.pods.synced().await;
        let c = Arc::new(c.clone());
        futures::join!(resync(&c.queue, || c.deployments.all()), work(&c.queue, |key| sync::sync(&c, key)));
    };
    futures::join!(d_informer, rs_informer, pod_informer, workers);
    Ok(())
}

impl Controller {
    /// Queues the Deployment controlling `rs`, or for an orphan every Deployment whose selector matches it.
    fn queue_for_replicaset(&self, rs: &ReplicaSet) {
        let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
        match controller_of(&rs.metadata) {
            Some(r) if r.kind == "Deployment" => self.queue.add(&format!("{ns}/{}", r.name)),
            Some(_) => {}
            None => {
                for d in self.deployments.list(ns) {
                    if super::owners::claim(&d.metadata, &d.spec.selector, &rs.metadata) == super::owners::Claim::Adopt
                    {
                        self.queue.add(&key_of(&d));
                    }
                }
            }
        }
    }

    /// Queues the Deployment over the ReplicaSet controlling `pod`.
    fn queue_for_pod(&self, pod: &Pod) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let Some(r) = controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet") else { return };
        if let Some(rs) = self.replicasets.get(&format!("{ns}/{}", r.name)) {
            self.queue_for_replicaset(&rs);
        }
    }
}
