//! The garbage collector, reduced to background propagation: a pod, ReplicaSet or Deployment whose
//! owner references all name owners (by uid) that no longer exist is deleted; deleting a Deployment thus
//! takes its ReplicaSets, and then their pods, one sweep after the other. An owner missing from the
//! caches is looked up in the API before anything is deleted (the caches may lag behind a new owner).

use std::collections::HashSet;
use std::time::Duration;

use testbed_api::objects::{Deployment, ObjectMeta, OwnerReference, Pod, ReplicaSet};

use super::cache::Cache;
use super::Context;
use crate::client::{paths, ClientError, Object};
use crate::resources::{Kind, RESOURCES};

/// How often the caches are swept for orphans.
const SWEEP: Duration = Duration::from_secs(1);

/// The caches the collector reads.
#[derive(Clone, Default)]
struct Caches {
    pods: Cache<Pod>,
    replicasets: Cache<ReplicaSet>,
    deployments: Cache<Deployment>,
}

/// Runs the garbage collector until dropped.
pub async fn run(ctx: Context) -> Result<(), ClientError> {
    let caches = Caches::default();
    let client = ctx.client.clone();
    let sweeper = async {
        caches.pods.synced().await;
        caches.replicasets.synced().await;
        caches.deployments.synced().await;
        loop {
            sweep(&ctx, &caches).await;
            tokio::time::sleep(SWEEP).await;
        }
    };
    futures::join!(
        caches.pods.clone().run(client.clone(), paths::collection(Kind::Pod, None), ignore()),
        caches.replicasets.clone().run(client.clone(), paths::collection(Kind::ReplicaSet, None), ignore()),
        caches.deployments.clone().run(client, paths::collection(Kind::Deployment, None), ignore()),
        sweeper,
    );
    Ok(())
}

/// The collector acts on sweeps, not on single changes.
fn ignore<T>() -> super::cache::Handler<T> {
    Box::new(|_, _| {})
}

/// Any object, for its metadata: an owner of any kind is looked up the same way.
#[derive(serde::Serialize, serde::Deserialize)]
struct AnyObject {
    #[serde(default)]
    metadata: ObjectMeta,
}

impl Object for AnyObject {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
}

/// Deletes every dependent whose owners are all gone.
async fn sweep(ctx: &Context, caches: &Caches) {
    let uids = |metas: Vec<ObjectMeta>| metas.into_iter().filter_map(|m| m.uid).collect::<Vec<_>>();
    let mut known: HashSet<String> = HashSet::new();
    known.extend(uids(caches.pods.all().into_iter().map(|o| o.metadata).collect()));
    known.extend(uids(caches.replicasets.all().into_iter().map(|o| o.metadata).collect()));
    known.extend(uids(caches.deployments.all().into_iter().map(|o| o.metadata).collect()));
    let dependents = caches
        .pods
        .all()
        .into_iter()
        .map(|o| (Kind::Pod, o.metadata))
        .chain(caches.replicasets.all().into_iter().map(|o| (Kind::ReplicaSet, o.metadata)))
        .chain(caches.deployments.all().into_iter().map(|o| (Kind::Deployment, o.metadata)));
    for (kind, meta) in dependents {
        if meta.owner_references.is_empty() || meta.owner_references.iter().any(|r| known.contains(&r.uid)) {
            continue;
        }
        let ns = meta.namespace.clone().unwrap_or_default();
        match all_gone(ctx, &ns, &meta.owner_references).await {
            Ok(true) => {
                let path = paths::object(kind, &ns, &meta.name);
                match ctx.client.delete(&path).await {
                    Ok(()) => tracing::info!(path, "garbage collector: deleted (its owners are gone)"),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => tracing::warn!(path, error = %e, "garbage collector: delete failed"),
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "garbage collector: owner lookup failed"),
        }
    }
}

/// Every owner is gone from the API (not found, or the name now holds another uid). An owner of a kind
/// the server does not serve is taken to exist.
async fn all_gone(ctx: &Context, namespace: &str, owners: &[OwnerReference]) -> Result<bool, ClientError> {
    for owner in owners {
        let Some(res) = RESOURCES.iter().find(|r| r.kind_name == owner.kind) else { return Ok(false) };
        let path = paths::object(res.kind, namespace, &owner.name);
        match ctx.client.get::<AnyObject>(&path).await {
            Ok(found) if found.metadata.uid.as_ref() == Some(&owner.uid) => return Ok(false),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
