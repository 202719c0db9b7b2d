//! One reconcile of a ReplicaSet (`syncReplicaSet`): claim the pods, create or delete the difference
//! (when the expectations allow), write the status.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use rand::Rng;
use testbed_api::objects::{ObjectMeta, Pod, ReplicaSet};

use super::{status, Controller, COMPONENT};
use crate::client::{now_seconds, paths, ClientError};
use crate::controllers::cache::key_of;
use crate::controllers::events::EventType;
use crate::controllers::owners::{self, Claim};
use crate::controllers::podutil::{controller_ref, is_active, is_terminating, pods_to_delete};
use crate::resources::Kind;

/// Most pods created or deleted in one reconcile (Kubernetes' `burstReplicas`).
const BURST: usize = 500;

/// The alphabet of generated name suffixes (Kubernetes' `rand.String`: no vowels, no 0/1/3 look-alikes).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Reconciles the ReplicaSet with `key`.
pub async fn sync(c: &Controller, key: String) -> Result<(), ClientError> {
    let Some(rs) = c.replicasets.get(&key) else {
        c.expectations.delete(&key);
        return Ok(());
    };
    let may_act = c.expectations.satisfied(&key);
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let mut owned = Vec::new();
    for pod in c.pods.list(&ns) {
        let path = paths::pod(&ns, &pod.metadata.name);
        match owners::claim(&rs.metadata, &rs.spec.selector, &pod.metadata) {
            // Terminating: its kubelet is stopping it; not counted (replaced at once), not deleted again.
            Claim::Owned if is_terminating(&pod) => {}
            Claim::Owned if !is_active(&pod) => {
                // A finished pod no longer counts; it is replaced, and deleted so it does not pile up.
                ignore_not_found(c.ctx.client.delete(&path).await)?;
            }
            Claim::Owned => owned.push(pod),
            Claim::Adopt if is_active(&pod) => {
                match owners::adopt(&c.ctx.client, &path, "ReplicaSet", &rs.metadata, &pod.metadata).await {
                    Ok(adopted) => owned.push(adopted),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            Claim::Release => {
                ignore_not_found(owners::release::<Pod>(&c.ctx.client, &path, &rs.metadata, &pod.metadata).await)?;
            }
            Claim::Adopt | Claim::Ignore => {}
        }
    }
    let managed = if may_act { manage(c, &key, &rs, &owned).await } else { Ok(()) };
    let error = managed.as_ref().err().map(ToString::to_string);
    let new_status = status::calculate(&rs, &owned, error.as_deref(), now_seconds());
    let status = write_status(c, &rs, new_status).await?;
    let replicas = rs.spec.replicas.unwrap_or(1);
    let min_ready = rs.spec.min_ready_seconds.unwrap_or(0);
    if managed.is_ok()
        && min_ready > 0
        && status.ready_replicas.unwrap_or(0) == replicas
        && status.available_replicas.unwrap_or(0) != replicas
    {
        c.queue.add_after(&key, Duration::from_secs(min_ready as u64));
    }
    managed
}

fn ignore_not_found<T>(r: Result<T, ClientError>) -> Result<(), ClientError> {
    match r {
        Err(e) if !e.is_not_found() => Err(e),
        _ => Ok(()),
    }
}

/// Creates or deletes pods so that `owned` becomes `spec.replicas`.
async fn manage(c: &Controller, key: &str, rs: &ReplicaSet, owned: &[Pod]) -> Result<(), ClientError> {
    let wanted = rs.spec.replicas.unwrap_or(1).max(0) as usize;
    if owned.len() < wanted {
        let missing = (wanted - owned.len()).min(BURST);
        c.expectations.expect_creations(key, missing);
        create(c, key, rs, missing).await
    } else if owned.len() > wanted {
        let surplus = (owned.len() - wanted).min(BURST);
        let doomed = pods_to_delete(owned.to_vec(), surplus);
        c.expectations.expect_deletions(key, doomed.iter().map(key_of).collect::<HashSet<_>>());
        let deletes = doomed.iter().map(|pod| async move {
            let path = paths::pod(pod.metadata.namespace.as_deref().unwrap_or_default(), &pod.metadata.name);
            let result = c.ctx.client.delete(&path).await;
            match &result {
                Ok(()) => {
                    let msg = format!("Deleted pod: {}", pod.metadata.name);
                    c.ctx
                        .events
                        .record(Kind::ReplicaSet, rs, COMPONENT, EventType::Normal, "SuccessfulDelete", &msg)
                        .await;
                }
                Err(e) => {
                    // Its deletion event will not come: do not wait for it.
                    c.expectations.deletion_observed(key, &key_of(pod));
                    let msg = format!("Error deleting: {e}");
                    c.ctx
                        .events
                        .record(Kind::ReplicaSet, rs, COMPONENT, EventType::Warning, "FailedDelete", &msg)
                        .await;
                }
            }
            ignore_not_found(result)
        });
        join_all(deletes).await.into_iter().collect()
    } else {
        Ok(())
    }
}

/// Creates `count` pods in batches of 1, 2, 4, ... (`slowStartBatch`), stopping at a batch with a failure
/// so that a quota or a bad template fails one request, not hundreds.
async fn create(c: &Controller, key: &str, rs: &ReplicaSet, count: usize) -> Result<(), ClientError> {
    let (mut done, mut batch) = (0, 1);
    while done < count {
        let size = batch.min(count - done);
        let results = join_all((0..size).map(|_| create_one(c, rs))).await;
        done += size;
        if let Some(error) = results.into_iter().find_map(Result::err) {
            // The pods never asked for will not show up either.
            for _ in done..count {
                c.expectations.creation_observed(key);
            }
            return Err(error);
        }
        batch *= 2;
    }
    Ok(())
}

async fn create_one(c: &Controller, rs: &ReplicaSet) -> Result<(), ClientError> {
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let pod = pod_from_template(rs, &format!("{}-{}", rs.metadata.name, suffix()));
    match c.ctx.client.create(&paths::pods(Some(&ns)), &pod).await {
        Ok(pod) => {
            let msg = format!("Created pod: {}", pod.metadata.name);
            c.ctx.events.record(Kind::ReplicaSet, rs, COMPONENT, EventType::Normal, "SuccessfulCreate", &msg).await;
            Ok(())
        }
        Err(e) => {
            c.expectations.creation_observed(&key_of(rs));
            let msg = format!("Error creating: {e}");
            c.ctx.events.record(Kind::ReplicaSet, rs, COMPONENT, EventType::Warning, "FailedCreate", &msg).await;
            Err(e)
        }
    }
}

/// 5 random characters of [`ALPHABET`].
fn suffix() -> String {
    let mut rng = rand::thread_rng();
    (0..5).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// A pod of `rs`'s template named `name`, controlled by `rs`.
fn pod_from_template(rs: &ReplicaSet, name: &str) -> Pod {
    let template = &rs.spec.template;
    Pod {
        api_version: "v1".into(),
        kind: "Pod".into(),
        metadata: ObjectMeta {
            name: name.into(),
            namespace: rs.metadata.namespace.clone(),
            labels: template.metadata.labels.clone(),
            annotations: template.metadata.annotations.clone(),
            owner_references: vec![controller_ref("ReplicaSet", &rs.metadata)],
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Writes `status` through `replicasets/status` unless it is what the ReplicaSet has; answers it.
async fn write_status(
    c: &Controller,
    rs: &ReplicaSet,
    status: testbed_api::objects::ReplicaSetStatus,
) -> Result<testbed_api::objects::ReplicaSetStatus, ClientError> {
    if rs.status.as_ref() == Some(&status) {
        return Ok(status);
    }
    let mut updated = rs.clone();
    updated.status = Some(status.clone());
    let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
    let path = format!("{}/status", paths::object(Kind::ReplicaSet, ns, &rs.metadata.name));
    c.ctx.client.update(&path, &updated).await?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pod_names_use_kubernetes_alphabet() {
        let s = super::suffix();
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| super::ALPHABET.contains(&b)), "{s}");
    }
}
