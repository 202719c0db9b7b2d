//! The creates and deletes the loop starts: each in a task of its own (a pod's creation or teardown runs to
//! its end even when the session that decided it ends), its name busy meanwhile so no second action on it
//! is decided, and a wake-up for the loop when it is done.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testbed_control_plane::client::Client;

use super::diff::{node_pod_name, Owner, PodKey, Wanted};
use super::lock;
use super::owned::Owned;
use crate::pod::{Agent, AgentError};

#[derive(Clone, Default)]
pub struct Tasks {
    busy: Arc<Mutex<HashSet<String>>>,
    /// UIDs of API pods whose spec the runtime refused, with why (their status says Failed).
    rejected: Arc<Mutex<HashMap<String, String>>>,
    /// UIDs of terminating API pods this node finished (deleted from the API): not asked again while their
    /// DELETED event is on its way.
    finished: Arc<Mutex<HashSet<String>>>,
    /// Notified when a create or delete ends.
    pub done: Arc<tokio::sync::Notify>,
}

impl Tasks {
    pub fn busy(&self) -> HashSet<String> {
        lock(&self.busy).clone()
    }

    pub fn rejected(&self) -> HashMap<String, String> {
        lock(&self.rejected).clone()
    }

    fn start(&self, name: String, work: impl std::future::Future<Output = ()> + Send + 'static) {
        lock(&self.busy).insert(name.clone());
        let (busy, done) = (self.busy.clone(), self.done.clone());
        tokio::spawn(async move {
            work.await;
            lock(&busy).remove(&name);
            done.notify_one();
        });
    }

    /// Runs `wanted` on the node as `owner`'s pod: the ownership record first, so the pod is never on the
    /// node without it.
    pub fn create(&self, agent: &Arc<Agent>, owned: &Arc<Owned>, owner: Owner, wanted: Wanted) {
        let (agent, owned, rejected) = (agent.clone(), owned.clone(), self.rejected.clone());
        let name = wanted.spec.name.clone();
        self.start(name.clone(), async move {
            if let Err(e) = owned.insert(&name, owner.clone()) {
                tracing::error!(pod = %owner.key, "control plane: recording the pod: {e}");
                return;
            }
            match agent.create_pod(wanted.spec).await {
                Ok(_) => tracing::info!(pod = %owner.key, "control plane: pod created"),
                Err(e) => {
                    if let AgentError::Invalid(why) = &e {
                        lock(&rejected).insert(owner.uid.clone(), why.to_string());
                    }
                    // Nothing of the pod is left on the node after a failed create; the next pass retries.
                    tracing::warn!(pod = %owner.key, "control plane: creating the pod: {e}");
                    if let Err(e) = owned.remove(&name) {
                        tracing::error!(pod = %owner.key, "control plane: {e}");
                    }
                }
            }
        });
    }

    /// Removes the node pod `name`; its ownership record goes once nothing of it runs.
    pub fn delete(&self, agent: &Arc<Agent>, owned: &Arc<Owned>, name: String, grace_secs: Option<u64>) {
        let (agent, owned) = (agent.clone(), owned.clone());
        self.start(name.clone(), async move {
            match agent.delete_pod(&name, grace_secs.map(Duration::from_secs)).await {
                // A leak is the runtime's to retry (its teardown list); the pod itself is gone.
                Ok(()) | Err(AgentError::NotFound(_) | AgentError::Leaked { .. }) => {
                    tracing::info!(pod = %name, "control plane: pod deleted");
                    if let Err(e) = owned.remove(&name) {
                        tracing::error!(pod = %name, "control plane: {e}");
                    }
                }
                Err(e) => tracing::warn!(pod = %name, "control plane: deleting the pod: {e}; retrying"),
            }
        });
    }

    /// Deletes the terminating API pod `key` (grace 0, on its `uid`, as the kubelet does once a pod has
    /// stopped), its node pod name busy meanwhile. Gone already or replaced (404, 409) counts as done; any
    /// other error leaves it for the next pass.
    pub fn finish(&self, api: &Arc<Client>, key: PodKey, uid: String) {
        if lock(&self.finished).contains(&uid) {
            return;
        }
        let (api, finished) = (api.clone(), self.finished.clone());
        self.start(node_pod_name(&key), async move {
            match api.force_delete_pod(&key.namespace, &key.name, &uid).await {
                Ok(()) => tracing::info!(pod = %key, "control plane: terminated pod deleted from the API"),
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => {
                    tracing::warn!(pod = %key, "control plane: deleting the terminated pod: {e}; retrying");
                    return;
                }
            }
            lock(&finished).insert(uid);
        });
    }
}
