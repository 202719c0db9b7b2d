//! Deployment status and conditions (sync.go `calculateStatus`, progress.go, and the condition helpers of
//! deployment_util.go), as pure functions: `Available` says whether the minimum is up, `Progressing`
//! whether the rollout moves, finished, or stood still past `progressDeadlineSeconds`.

use testbed_api::objects::{Condition, Deployment, DeploymentStatus, ReplicaSet};

use super::util::{
    actual_count, available_count, max_unavailable, ready_count, replicas, spec_count, InvalidIntOrPercent,
};
use crate::client::{now_rfc3339, parse_rfc3339};

/// `Progressing` reasons.
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
/// A new ReplicaSet for the template existed already.
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
/// The rollout moved.
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
/// The rollout is complete.
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
/// No progress within `progressDeadlineSeconds`.
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
/// The Deployment is paused.
pub const PAUSED: &str = "DeploymentPaused";
/// The Deployment was resumed.
pub const RESUMED: &str = "DeploymentResumed";

/// `progressDeadlineSeconds`, 600 when unset (the API's default); none when `i32::MAX`, as Kubernetes.
pub fn progress_deadline(d: &Deployment) -> Option<i32> {
    Some(d.spec.progress_deadline_seconds.unwrap_or(600)).filter(|s| *s != i32::MAX)
}

/// A condition of `type_` set now.
pub fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    let now = now_rfc3339();
    Condition {
        type_: type_.into(),
        status: status.into(),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
        reason: Some(reason.into()),
        message: Some(message.into()),
        ..Default::default()
    }
}

/// The condition of `type_`.
pub fn get<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Sets `cond` (`SetDeploymentCondition`): nothing when status and reason are the same; the transition
/// time kept when only the reason changes.
pub fn set(status: &mut DeploymentStatus, mut cond: Condition) {
    if let Some(current) = get(status, &cond.type_) {
        if current.status == cond.status && current.reason == cond.reason {
            return;
        }
        if current.status == cond.status {
            cond.last_transition_time = current.last_transition_time.clone();
        }
    }
    status.conditions.retain(|c| c.type_ != cond.type_);
    status.conditions.push(cond);
}

/// Removes the condition of `type_`.
pub fn remove(status: &mut DeploymentStatus, type_: &str) {
    status.conditions.retain(|c| c.type_ != type_);
}

/// Zero is left out of the wire form, as Kubernetes' `omitempty`.
fn nonzero(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

/// The Deployment's status from its ReplicaSets (`calculateStatus`), with `Available` updated.
pub fn calculate(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
) -> Result<DeploymentStatus, InvalidIntOrPercent> {
    let old = d.status.clone().unwrap_or_default();
    let available = available_count(all);
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: nonzero(actual_count(all)),
        updated_replicas: nonzero(new.map_or(0, |rs| actual_count(&[rs]))),
        ready_replicas: nonzero(ready_count(all)),
        available_replicas: nonzero(available),
        unavailable_replicas: nonzero((spec_count(all) - available).max(0)),
        conditions: old.conditions,
        collision_count: old.collision_count,
    };
    if available >= replicas(d) - max_unavailable(d)? {
        set(
            &mut status,
            condition("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability."),
        );
    } else {
        set(
            &mut status,
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            ),
        );
    }
    Ok(status)
}

/// Every pod is updated and available, and the status is of the current generation (`DeploymentComplete`).
pub fn complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let n = Some(replicas(d)).filter(|n| *n != 0);
    s.updated_replicas == n
        && s.replicas == n
        && s.available_replicas == n
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// The rollout moved since the last status (`DeploymentProgressing`): more updated, ready or available
/// pods, or fewer old ones.
pub fn progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

/// The `Progressing` condition was last updated more than the deadline before `now` (`DeploymentTimedOut`).
pub fn timed_out(d: &Deployment, s: &DeploymentStatus, now: f64) -> bool {
    let (Some(deadline), Some(cond)) = (progress_deadline(d), get(s, "Progressing")) else { return false };
    match cond.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => cond
            .last_update_time
            .as_deref()
            .and_then(parse_rfc3339)
            .is_some_and(|from| from + f64::from(deadline) < now),
    }
}

/// Updates `Progressing` in `status` the way `syncRolloutStatus` does, for the new ReplicaSet named `new`.
pub fn update_progressing(d: &Deployment, status: &mut DeploymentStatus, new: Option<&str>, now: f64) {
    if progress_deadline(d).is_none() {
        remove(status, "Progressing");
        return;
    }
    let current = d.status.as_ref().and_then(|s| get(s, "Progressing")).cloned();
    let finished = status.replicas == status.updated_replicas
        && current.as_ref().is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
    if finished {
        return;
    }
    let subject = match new {
        Some(rs) => format!("ReplicaSet {rs:?}"),
        None => format!("Deployment {:?}", d.metadata.name),
    };
    if complete(d, status) {
        set(
            status,
            condition("Progressing", "True", NEW_RS_AVAILABLE, &format!("{subject} has successfully progressed.")),
        );
    } else if progressing(d, status) {
        let mut cond = condition("Progressing", "True", RS_UPDATED, &format!("{subject} is progressing."));
        if let Some(current) = &current {
            if current.status == "True" {
                cond.last_transition_time = current.last_transition_time.clone();
            }
            remove(status, "Progressing");
        }
        set(status, cond);
    } else if timed_out(d, status, now) {
        set(status, condition("Progressing", "False", TIMED_OUT, &format!("{subject} has timed out progressing.")));
    }
}

#[cfg(test)]
#[path = "progress_tests.rs"]
mod tests;
