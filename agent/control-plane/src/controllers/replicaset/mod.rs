//! The ReplicaSet controller (pkg/controller/replicaset/replica_set.go): keeps `spec.replicas` pods made
//! from the template, owned through a controller reference, adopting matching orphans and releasing pods
//! that stop matching. It watches ReplicaSets and pods; a pod's change queues its owner (or, for an
//! orphan, every ReplicaSet whose selector matches it), and expectations hold a ReplicaSet back until the
//! pods it created or deleted show up in the watch.

mod status;
mod sync;

use std::sync::Arc;
use std::time::Duration;

use testbed_api::objects::{Pod, ReplicaSet};

use super::cache::{key_of, Cache};
use super::expectations::Expectations;
use super::podutil::{controller_of, is_ready};
use super::queue::Queue;
use super::{resync, work, Context};
use crate::client::{paths, ClientError};
use crate::resources::Kind;

/// The component name in Events.
const COMPONENT: &str = "replicaset-controller";

/// The controller's state: caches, queue and expectations.
#[derive(Clone)]
struct Controller {
    ctx: Context,
    replicasets: Cache<ReplicaSet>,
    pods: Cache<Pod>,
    queue: Queue,
    expectations: Expectations,
}

/// Runs the ReplicaSet controller until dropped.
pub async fn run(ctx: Context) -> Result<(), ClientError> {
    let c = Controller {
        ctx,
        replicasets: Cache::default(),
        pods: Cache::default(),
        queue: Queue::default(),
        expectations: Expectations::default(),
    };
    let rs_informer = c.replicasets.clone().run(
        c.ctx.client.clone(),
        paths::collection(Kind::ReplicaSet, None),
        Box::new({
            let c = c.clone();
            move |_, new: Option<&ReplicaSet>| c.replicaset_changed(new)
        }),
    );
    let pod_informer = c.pods.clone().run(
        c.ctx.client.clone(),
        paths::collection(Kind::Pod, None),
        Box::new({
            let c = c.clone();
            move |old, new| c.pod_changed(old, new)
        }),
    );
    let workers = async {
        c.replicasets.synced().await;
        c.pods.synced().await;
        let c = Arc::new(c.clone());
        futures::join!(resync(&c.queue, || c.replicasets.all()), work(&c.queue, |key| sync::sync(&c, key)));
    };
    futures::join!(rs_informer, pod_informer, workers);
    Ok(())
}

impl Controller {
    fn replicaset_changed(&self, new: Option<&ReplicaSet>) {
        if let Some(rs) = new {
            self.queue.add(&key_of(rs));
        }
    }

    /// The key of the ReplicaSet controlling `pod`, if it is one this cache knows (same uid).
    fn owner_key(&self, pod: &Pod) -> Option<String> {
        let r = controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet")?;
        let key = format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), r.name);
        let rs = self.replicasets.get(&key)?;
        (rs.metadata.uid.as_ref() == Some(&r.uid)).then_some(key)
    }

    /// Queues every ReplicaSet whose selector matches the orphan `pod`: one of them may adopt it.
    fn queue_matching(&self, pod: &Pod) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        for rs in self.replicasets.list(ns) {
            if super::owners::claim(&rs.metadata, &rs.spec.selector, &pod.metadata) == super::owners::Claim::Adopt {
                self.queue.add(&key_of(&rs));
            }
        }
    }

    fn pod_changed(&self, old: Option<&Pod>, new: Option<&Pod>) {
        match (old, new) {
            (None, Some(pod)) => match self.owner_key(pod) {
                Some(key) => {
                    self.expectations.creation_observed(&key);
                    self.queue.add(&key);
                }
                None => self.queue_matching(pod),
            },
            (Some(old), Some(new)) => {
                let (old_key, new_key) = (self.owner_key(old), self.owner_key(new));
                if let Some(key) = &old_key {
                    if old_key != new_key {
                        self.queue.add(key);
                    }
                }
                match &new_key {
                    Some(key) => {
                        self.queue.add(key);
                        // A pod that just became Ready becomes available minReadySeconds later: look again then.
                        let min_ready = self.replicasets.get(key).and_then(|rs| rs.spec.min_ready_seconds);
                        if let Some(secs) = min_ready.filter(|s| *s > 0 && !is_ready(old) && is_ready(new)) {
                            self.queue.add_after(key, Duration::from_secs(secs as u64 + 1));
                        }
                    }
                    None if old.metadata.labels != new.metadata.labels || old_key.is_some() => self.queue_matching(new),
                    None => {}
                }
            }
            (Some(pod), None) => {
                if let Some(key) = self.owner_key(pod) {
                    self.expectations.deletion_observed(&key, &key_of(pod));
                    self.queue.add(&key);
                }
            }
            (None, None) => {}
        }
    }
}
