//! A Deployment's ReplicaSets (sync.go): finding the one of the current template (or making it), writing
//! a new size with the replica annotations, the revision bookkeeping, and deleting history past the limit.

use std::cmp::Ordering;

use testbed_api::objects::{Deployment, LabelSelector, ObjectMeta, ReplicaSet, ReplicaSetSpec};

use super::progress::{self, FOUND_NEW_RS, NEW_RS_CREATED};
use super::util::{
    compute_hash, equal_ignore_hash, max_revision, max_surge, new_rs_new_replicas, replicas, revision, rs_replicas,
    set_replicas_annotations, with_label, DESIRED_REPLICAS, HASH_LABEL, MAX_REPLICAS, REVISION,
};
use super::{Controller, SyncError, COMPONENT};
use crate::client::{paths, ClientError};
use crate::controllers::events::EventType;
use crate::controllers::podutil::controller_ref;
use crate::resources::Kind;

/// Annotations of the Deployment a ReplicaSet does not copy (`skipCopyAnnotation`).
const NOT_COPIED: &[&str] =
    &["kubectl.kubernetes.io/last-applied-configuration", REVISION, DESIRED_REPLICAS, MAX_REPLICAS];

/// Older first, by creation time then name (`ReplicaSetsByCreationTimestamp`).
pub fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    let t = |rs: &ReplicaSet| rs.metadata.creation_timestamp.clone().unwrap_or_default();
    t(a).cmp(&t(b)).then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// The new ReplicaSet (the oldest with the Deployment's template) and the others.
pub fn split(d: &Deployment, mut rss: Vec<ReplicaSet>) -> (Option<ReplicaSet>, Vec<ReplicaSet>) {
    rss.sort_by(by_creation);
    let at = rss.iter().position(|rs| equal_ignore_hash(&rs.spec.template, &d.spec.template));
    let new = at.map(|i| rss.remove(i));
    (new, rss)
}

/// Copies the Deployment's annotations, raises the revision to `new_revision`, and for a new ReplicaSet
/// sets the replica annotations (`SetNewReplicaSetAnnotations`); whether anything changed.
fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
) -> Result<bool, SyncError> {
    let mut changed = false;
    for (k, v) in &d.metadata.annotations {
        if !NOT_COPIED.contains(&k.as_str()) && rs.metadata.annotations.get(k) != Some(v) {
            rs.metadata.annotations.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    if revision(rs) < new_revision {
        rs.metadata.annotations.insert(REVISION.into(), new_revision.to_string());
        changed = true;
    }
    if !exists {
        let surge = max_surge(d)?;
        changed |= set_replicas_annotations(rs, replicas(d), replicas(d) + surge);
    }
    Ok(changed)
}

impl Controller {
    /// The new ReplicaSet (created when `create` and missing) and the old ones, with the revisions synced
    /// (`getAllReplicaSetsAndSyncRevision`); `d` is updated with what was written to it.
    pub(super) async fn all_replicasets(
        &self,
        d: &mut Deployment,
        rss: Vec<ReplicaSet>,
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), SyncError> {
        let (existing, old) = split(d, rss);
        let new_revision = max_revision(&old.iter().collect::<Vec<_>>()) + 1;
        if let Some(mut rs) = existing {
            let annotations = set_new_rs_annotations(d, &mut rs, new_revision, true)?;
            if annotations || rs.spec.min_ready_seconds != d.spec.min_ready_seconds {
                rs.spec.min_ready_seconds = d.spec.min_ready_seconds;
                rs = self.ctx.client.update(&rs_path(&rs), &rs).await?;
            }
            self.set_revision(d, revision(&rs)).await?;
            let status = d.status.clone().unwrap_or_default();
            if progress::progress_deadline(d).is_some() && progress::get(&status, "Progressing").is_none() {
                let mut status = status;
                let msg = format!("Found new replica set {:?}", rs.metadata.name);
                progress::set(&mut status, progress::condition("Progressing", "True", FOUND_NEW_RS, &msg));
                self.write_status(d, status).await?;
            }
            return Ok((Some(rs), old));
        }
        if !create {
            return Ok((None, old));
        }
        let rs = self.create_new(d, &old, new_revision).await?;
        Ok((Some(rs), old))
    }

    /// Creates the ReplicaSet of the current template.
    async fn create_new(
        &self,
        d: &mut Deployment,
        old: &[ReplicaSet],
        new_revision: i64,
    ) -> Result<ReplicaSet, SyncError> {
        let status = d.status.clone().unwrap_or_default();
        let hash = compute_hash(&d.spec.template, status.collision_count);
        let mut template = d.spec.template.clone();
        template.metadata.labels = with_label(&template.metadata.labels, HASH_LABEL, &hash);
        let selector = LabelSelector {
            match_labels: with_label(&d.spec.selector.match_labels, HASH_LABEL, &hash),
            match_expressions: d.spec.selector.match_expressions.clone(),
        };
        let mut rs = ReplicaSet {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            metadata: ObjectMeta {
                name: format!("{}-{hash}", d.metadata.name),
                namespace: d.metadata.namespace.clone(),
                labels: template.metadata.labels.clone(),
                owner_references: vec![controller_ref("Deployment", &d.metadata)],
                ..Default::default()
            },
            spec: ReplicaSetSpec { replicas: Some(0), min_ready_seconds: d.spec.min_ready_seconds, selector, template },
            status: None,
        };
        let mut all: Vec<&ReplicaSet> = old.iter().collect();
        all.push(&rs);
        let size = new_rs_new_replicas(d, &all, &rs)?;
        rs.spec.replicas = Some(size);
        set_new_rs_annotations(d, &mut rs, new_revision, false)?;
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let created = match self.ctx.client.create(&paths::collection(Kind::ReplicaSet, Some(&ns)), &rs).await {
            Ok(created) => {
                if size > 0 {
                    let msg = format!("Scaled up replica set {} from 0 to {size}", created.metadata.name);
                    self.event(d, EventType::Normal, "ScalingReplicaSet", &msg).await;
                }
                created
            }
            Err(e) if e.is_conflict() => {
                // The name is taken: ours from an earlier sync whose watch event is not in yet, or another
                // template's with the same hash; then the collision count moves the hash on.
                let theirs: ReplicaSet = self.ctx.client.get(&rs_path(&rs)).await?;
                let ours = crate::controllers::podutil::controller_of(&theirs.metadata)
                    .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
                if ours && equal_ignore_hash(&theirs.spec.template, &d.spec.template) {
                    return Ok(theirs);
                }
                let mut status = status;
                status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
                self.write_status(d, status).await?;
                return Err(e.into());
            }
            Err(e) => {
                let msg = format!("Failed to create new replica set {:?}: {e}", rs.metadata.name);
                if progress::progress_deadline(d).is_some() {
                    let mut status = status;
                    progress::set(
                        &mut status,
                        progress::condition("Progressing", "False", "ReplicaSetCreateError", &msg),
                    );
                    self.write_status(d, status).await?;
                }
                self.event(d, EventType::Warning, "FailedCreate", &msg).await;
                return Err(e.into());
            }
        };
        self.set_revision(d, new_revision).await?;
        if progress::progress_deadline(d).is_some() {
            let mut status = d.status.clone().unwrap_or_default();
            let msg = format!("Created new replica set {:?}", created.metadata.name);
            progress::set(&mut status, progress::condition("Progressing", "True", NEW_RS_CREATED, &msg));
            self.write_status(d, status).await?;
        }
        Ok(created)
    }

    /// Writes `size` (and the replica annotations) to `rs`; an Event when the size changed
    /// (`scaleReplicaSet`). Whether the size changed.
    pub(super) async fn scale(&self, d: &Deployment, rs: &mut ReplicaSet, size: i32) -> Result<bool, SyncError> {
        let from = rs_replicas(rs);
        let surge = max_surge(d)?;
        let mut updated = rs.clone();
        let annotations = set_replicas_annotations(&mut updated, replicas(d), replicas(d) + surge);
        if from == size && !annotations {
            return Ok(false);
        }
        updated.spec.replicas = Some(size);
        *rs = self.ctx.client.update(&rs_path(rs), &updated).await?;
        if from != size {
            let direction = if from < size { "up" } else { "down" };
            let msg = format!("Scaled {direction} replica set {} from {from} to {size}", rs.metadata.name);
            self.event(d, EventType::Normal, "ScalingReplicaSet", &msg).await;
        }
        Ok(from != size)
    }

    /// Deletes the oldest old ReplicaSets beyond `revisionHistoryLimit` (default 10) that have no pods
    /// left (`cleanupDeployment`).
    pub(super) async fn cleanup(&self, d: &Deployment, old: &[ReplicaSet]) -> Result<(), ClientError> {
        let limit = d.spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        if old.len() <= limit {
            return Ok(());
        }
        let mut old: Vec<&ReplicaSet> = old.iter().collect();
        old.sort_by(|a, b| revision(a).cmp(&revision(b)).then_with(|| by_creation(a, b)));
        for rs in &old[..old.len() - limit] {
            let status = rs.status.clone().unwrap_or_default();
            if status.replicas != 0 || rs_replicas(rs) != 0 || rs.metadata.generation > status.observed_generation {
                continue;
            }
            match self.ctx.client.delete(&rs_path(rs)).await {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Sets the Deployment's revision annotation (`SetDeploymentRevision`).
    async fn set_revision(&self, d: &mut Deployment, revision: i64) -> Result<(), ClientError> {
        let revision = revision.to_string();
        if d.metadata.annotations.get(REVISION) == Some(&revision) {
            return Ok(());
        }
        let patch = serde_json::json!({"metadata": {"annotations": {REVISION: revision}}});
        *d = self.ctx.client.merge_patch(&d_path(d), &patch).await?;
        Ok(())
    }

    /// Writes the Deployment's status (through `deployments/status`) and keeps `d` current.
    pub(super) async fn write_status(
        &self,
        d: &mut Deployment,
        status: testbed_api::objects::DeploymentStatus,
    ) -> Result<(), ClientError> {
        let mut updated = d.clone();
        updated.status = Some(status);
        *d = self.ctx.client.update(&format!("{}/status", d_path(d)), &updated).await?;
        Ok(())
    }

    /// Records an Event about `d`.
    pub(super) async fn event(&self, d: &Deployment, type_: EventType, reason: &str, message: &str) {
        self.ctx.events.record(Kind::Deployment, d, COMPONENT, type_, reason, message).await;
    }
}

/// The path of a ReplicaSet.
pub fn rs_path(rs: &ReplicaSet) -> String {
    paths::object(Kind::ReplicaSet, rs.metadata.namespace.as_deref().unwrap_or_default(), &rs.metadata.name)
}

/// The path of a Deployment.
pub fn d_path(d: &Deployment) -> String {
    paths::object(Kind::Deployment, d.metadata.namespace.as_deref().unwrap_or_default(), &d.metadata.name)
}
