//! One reconcile of a Deployment (`syncDeployment`): claim its ReplicaSets, note pause and resume, then
//! either only scale (paused, or `replicas` changed) or roll out with the strategy.

use testbed_api::objects::{Deployment, LabelSelector, ReplicaSet};

use super::progress::{self, PAUSED, RESUMED};
use super::replicasets::by_creation;
use super::util::{
    desired_replicas_annotation, is_rolling, is_saturated, max_surge, proportion, replicas, rs_replicas, spec_count,
};
use super::{Controller, SyncError};
use crate::controllers::events::EventType;
use crate::controllers::owners::{self, Claim};

/// Reconciles the Deployment with `key`.
pub async fn sync(c: &Controller, key: String) -> Result<(), SyncError> {
    let Some(mut d) = c.deployments.get(&key) else { return Ok(()) };
    if d.spec.selector == LabelSelector::default() {
        let msg = "This deployment is selecting all pods. A non-empty selector is required.";
        c.event(&d, EventType::Warning, "SelectingAll", msg).await;
        return Ok(());
    }
    let rss = claim(c, &d).await?;
    paused_conditions(c, &mut d).await?;
    if d.spec.paused || scaling_event(c, &mut d, rss.clone()).await? {
        return scale_only(c, &mut d, rss).await;
    }
    if is_rolling(&d) {
        c.rollout_rolling(&mut d, rss).await
    } else {
        c.rollout_recreate(&mut d, rss).await
    }
}

/// The ReplicaSets of `d`: its own that match, and matching orphans it adopts; its own that stopped
/// matching are released.
async fn claim(c: &Controller, d: &Deployment) -> Result<Vec<ReplicaSet>, SyncError> {
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let mut owned = Vec::new();
    for rs in c.replicasets.list(&ns) {
        let path = super::replicasets::rs_path(&rs);
        match owners::claim(&d.metadata, &d.spec.selector, &rs.metadata) {
            Claim::Owned => owned.push(rs),
            Claim::Adopt => match owners::adopt(&c.ctx.client, &path, "Deployment", &d.metadata, &rs.metadata).await {
                Ok(adopted) => owned.push(adopted),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            },
            Claim::Release => {
                match owners::release::<ReplicaSet>(&c.ctx.client, &path, &d.metadata, &rs.metadata).await {
                    Err(e) if !e.is_not_found() => return Err(e.into()),
                    _ => {}
                }
            }
            Claim::Ignore => {}
        }
    }
    Ok(owned)
}

/// `Progressing` Unknown with `DeploymentPaused` while paused, `DeploymentResumed` after
/// (`checkPausedConditions`).
async fn paused_conditions(c: &Controller, d: &mut Deployment) -> Result<(), SyncError> {
    if progress::progress_deadline(d).is_none() {
        return Ok(());
    }
    let mut status = d.status.clone().unwrap_or_default();
    let reason = progress::get(&status, "Progressing").and_then(|c| c.reason.clone());
    if reason.as_deref() == Some(progress::TIMED_OUT) {
        return Ok(());
    }
    let paused_cond = reason.as_deref() == Some(PAUSED);
    let cond = if d.spec.paused && !paused_cond {
        progress::condition("Progressing", "Unknown", PAUSED, "Deployment is paused")
    } else if !d.spec.paused && paused_cond {
        progress::condition("Progressing", "Unknown", RESUMED, "Deployment is resumed")
    } else {
        return Ok(());
    };
    progress::set(&mut status, cond);
    c.write_status(d, status).await?;
    Ok(())
}

/// Some active ReplicaSet was sized for another `replicas` (`isScalingEvent`).
async fn scaling_event(c: &Controller, d: &mut Deployment, rss: Vec<ReplicaSet>) -> Result<bool, SyncError> {
    let (new, old) = c.all_replicasets(d, rss, false).await?;
    Ok(new
        .iter()
        .chain(&old)
        .filter(|rs| rs_replicas(rs) > 0)
        .any(|rs| desired_replicas_annotation(rs).is_some_and(|desired| desired != replicas(d))))
}

/// Scales without rolling out (`sync`), then writes the status; cleans up history when paused.
async fn scale_only(c: &Controller, d: &mut Deployment, rss: Vec<ReplicaSet>) -> Result<(), SyncError> {
    let (mut new, mut old) = c.all_replicasets(d, rss, false).await?;
    scale(c, d, new.as_mut(), &mut old).await?;
    if d.spec.paused {
        c.cleanup(d, &old).await?;
    }
    let mut all: Vec<&ReplicaSet> = old.iter().collect();
    all.extend(new.as_ref());
    let status = progress::calculate(d, &all, new.as_ref())?;
    if d.status.as_ref() != Some(&status) {
        c.write_status(d, status).await?;
    }
    Ok(())
}

/// Brings the ReplicaSets to the Deployment's size (`scale`): the only active one takes it all; a
/// saturated new one has the old ones emptied; mid-rollout the change is shared in proportion to size
/// (largest first when growing, smallest first when shrinking), the rounding leftover to the first.
async fn scale(
    c: &Controller,
    d: &Deployment,
    new: Option<&mut ReplicaSet>,
    old: &mut [ReplicaSet],
) -> Result<(), SyncError> {
    let new_name = new.as_ref().map(|rs| rs.metadata.name.clone());
    let mut all: Vec<&mut ReplicaSet> = old.iter_mut().chain(new).collect();
    let active: Vec<usize> = (0..all.len()).filter(|i| rs_replicas(all[*i]) > 0).collect();
    if active.len() <= 1 {
        // The active one, or else the newest (the new ReplicaSet first).
        let target = active.first().copied().or_else(|| {
            let newest = all.iter().enumerate().max_by(|a, b| by_creation(a.1, b.1)).map(|(i, _)| i);
            all.iter().position(|rs| Some(&rs.metadata.name) == new_name.as_ref()).or(newest)
        });
        if let Some(i) = target {
            c.scale(d, all[i], replicas(d)).await?;
        }
        return Ok(());
    }
    let new_rs = all.iter().find(|rs| Some(&rs.metadata.name) == new_name.as_ref()).map(|rs| &**rs);
    if is_saturated(d, new_rs) {
        for rs in all.iter_mut().filter(|rs| Some(&rs.metadata.name) != new_name.as_ref()) {
            if rs_replicas(rs) > 0 {
                c.scale(d, rs, 0).await?;
            }
        }
        return Ok(());
    }
    if !is_rolling(d) {
        return Ok(());
    }
    let mut active: Vec<&mut ReplicaSet> = all.into_iter().filter(|rs| rs_replicas(rs) > 0).collect();
    let current = spec_count(&active.iter().map(|rs| &**rs).collect::<Vec<_>>());
    let allowed = if replicas(d) > 0 { replicas(d) + max_surge(d)? } else { 0 };
    let to_add = allowed - current;
    // ReplicaSetsBySizeNewer / BySizeOlder: by size, ties to the newer (growing) or older (shrinking).
    active.sort_by(|a, b| {
        let by_size = rs_replicas(b).cmp(&rs_replicas(a));
        if to_add > 0 {
            by_size.then_with(|| by_creation(b, a))
        } else {
            by_size.then_with(|| by_creation(a, b))
        }
    });
    let mut sizes = Vec::with_capacity(active.len());
    let mut added = 0;
    for rs in &active {
        let share = if to_add != 0 { proportion(rs, d, to_add, added)? } else { 0 };
        added += share;
        sizes.push(rs_replicas(rs) + share);
    }
    for (i, rs) in active.into_iter().enumerate() {
        let mut size = sizes[i];
        if i == 0 && to_add != 0 {
            size = (size + to_add - added).max(0);
        }
        c.scale(d, rs, size).await?;
    }
    Ok(())
}
