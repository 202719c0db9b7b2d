//! The two strategies (rolling.go, recreate.go) and the status a rollout ends its reconcile with
//! (`syncRolloutStatus`).

use std::time::Duration;

use testbed_api::objects::{Condition, Deployment, ReplicaSet};

use super::progress::{self, NEW_RS_AVAILABLE, TIMED_OUT};
use super::replicasets::by_creation;
use super::rolling::{reconcile_new, reconcile_old};
use super::util::{replicas, rs_replicas};
use super::{Controller, SyncError};
use crate::client::{now_seconds, parse_rfc3339};
use crate::controllers::cache::key_of;
use crate::controllers::podutil::{controller_of, is_finished};

impl Controller {
    /// `rolloutRolling`: grow the new ReplicaSet within the surge, else shrink the old ones within the
    /// unavailability, else (complete) clean up history; then the status.
    pub(super) async fn rollout_rolling(&self, d: &mut Deployment, rss: Vec<ReplicaSet>) -> Result<(), SyncError> {
        let (new, mut old) = self.all_replicasets(d, rss, true).await?;
        let Some(mut new) = new else { return Ok(()) };
        let all: Vec<&ReplicaSet> = old.iter().chain([&new]).collect();
        if let Some(size) = reconcile_new(d, &all, &new)? {
            self.scale(d, &mut new, size).await?;
            return self.rollout_status(d, &old, Some(&new)).await;
        }
        let mut active: Vec<ReplicaSet> = old.iter().filter(|rs| rs_replicas(rs) > 0).cloned().collect();
        active.sort_by(by_creation);
        let before: Vec<i32> = active.iter().map(rs_replicas).collect();
        let mut planned = active.clone();
        if reconcile_old(d, &mut planned, &new)? > 0 {
            for (i, rs) in active.iter_mut().enumerate() {
                if rs_replicas(&planned[i]) != before[i] {
                    self.scale(d, rs, rs_replicas(&planned[i])).await?;
                }
            }
            for rs in &active {
                if let Some(o) = old.iter_mut().find(|o| o.metadata.name == rs.metadata.name) {
                    *o = rs.clone();
                }
            }
            return self.rollout_status(d, &old, Some(&new)).await;
        }
        if d.status.as_ref().is_some_and(|s| progress::complete(d, s)) {
            self.cleanup(d, &old).await?;
        }
        self.rollout_status(d, &old, Some(&new)).await
    }

    /// `rolloutRecreate`: old ReplicaSets to 0, wait until none of their pods runs, then the new one to
    /// `replicas` at once.
    pub(super) async fn rollout_recreate(&self, d: &mut Deployment, rss: Vec<ReplicaSet>) -> Result<(), SyncError> {
        let (new, mut old) = self.all_replicasets(d, rss.clone(), false).await?;
        let mut scaled_down = false;
        for rs in old.iter_mut().filter(|rs| rs_replicas(rs) > 0) {
            scaled_down |= self.scale(d, rs, 0).await?;
        }
        if scaled_down || self.old_pods_running(new.as_ref(), &old) {
            return self.rollout_status(d, &old, new.as_ref()).await;
        }
        let mut new = match new {
            Some(rs) => rs,
            None => match self.all_replicasets(d, rss, true).await?.0 {
                Some(rs) => rs,
                None => return Ok(()),
            },
        };
        self.scale(d, &mut new, replicas(d)).await?;
        if d.status.as_ref().is_some_and(|s| progress::complete(d, s)) {
            self.cleanup(d, &old).await?;
        }
        self.rollout_status(d, &old, Some(&new)).await
    }

    /// Old ReplicaSets still have pods, or a pod of theirs has not finished (`oldPodsRunning`): a
    /// terminating pod still runs, so Recreate waits for it.
    fn old_pods_running(&self, new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> bool {
        if old.iter().any(|rs| rs.status.as_ref().is_some_and(|s| s.replicas > 0)) {
            return true;
        }
        let Some(ns) = old.first().and_then(|rs| rs.metadata.namespace.clone()) else { return false };
        let old_uids: Vec<_> =
            old.iter().filter(|rs| Some(*rs) != new).filter_map(|rs| rs.metadata.uid.clone()).collect();
        self.pods
            .list(&ns)
            .iter()
            .any(|p| controller_of(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid)) && !is_finished(p))
    }

    /// Writes the rollout's status (`syncRolloutStatus`): counts, `Available`, `Progressing`, and the
    /// ReplicaSets' `ReplicaFailure`; when nothing changed, looks again when the deadline would pass.
    async fn rollout_status(
        &self,
        d: &mut Deployment,
        old: &[ReplicaSet],
        new: Option<&ReplicaSet>,
    ) -> Result<(), SyncError> {
        let mut all: Vec<&ReplicaSet> = old.iter().collect();
        all.extend(new);
        let mut status = progress::calculate(d, &all, new)?;
        let now = now_seconds();
        progress::update_progressing(d, &mut status, new.map(|rs| rs.metadata.name.as_str()), now);
        match replica_failure(new, old) {
            Some(cond) => progress::set(&mut status, cond),
            None => progress::remove(&mut status, "ReplicaFailure"),
        }
        if d.status.as_ref() != Some(&status) {
            self.write_status(d, status).await?;
            return Ok(());
        }
        // requeueStuckDeployment: nothing will change by itself when the deadline passes, so look then.
        let deadline = progress::progress_deadline(d);
        let cond = progress::get(&status, "Progressing");
        if let (Some(deadline), Some(cond)) = (deadline, cond) {
            let reason = cond.reason.as_deref();
            if !progress::complete(d, &status) && reason != Some(TIMED_OUT) && reason != Some(NEW_RS_AVAILABLE) {
                let from = cond.last_update_time.as_deref().and_then(parse_rfc3339).unwrap_or(now);
                let after = (from + f64::from(deadline) - now).max(0.0) + 1.0;
                self.queue.add_after(&key_of(d), Duration::from_secs_f64(after));
            }
        }
        Ok(())
    }
}

/// The first `ReplicaFailure` of the new ReplicaSet, else of an old one (`getReplicaFailures`).
fn replica_failure(new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> Option<Condition> {
    new.into_iter()
        .chain(old)
        .filter_map(|rs| rs.status.as_ref())
        .flat_map(|s| s.conditions.iter())
        .find(|c| c.type_ == "ReplicaFailure")
        .map(|c| {
            progress::condition(
                "ReplicaFailure",
                &c.status,
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or(""),
            )
        })
}
