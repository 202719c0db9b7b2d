//! The sizes a rolling update wants (pkg/controller/deployment/rolling.go), as pure functions over
//! copies of the ReplicaSets: grow the new one up to `replicas + maxSurge` pods in all, shrink the old ones
//! while keeping `replicas - maxUnavailable` pods available, unhealthy old pods going first.

use testbed_api::objects::{Deployment, ReplicaSet};

use super::util::{
    max_unavailable, new_rs_new_replicas, replicas, rs_available, rs_available_within_size, rs_replicas, spec_count,
    InvalidIntOrPercent,
};

/// The new ReplicaSet's next size, if it changes (`reconcileNewReplicaSet`): down to `replicas` when above
/// it, else as far up as the surge allows.
pub fn reconcile_new(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: &ReplicaSet,
) -> Result<Option<i32>, InvalidIntOrPercent> {
    let (current, wanted) = (rs_replicas(new), replicas(d));
    if current == wanted {
        return Ok(None);
    }
    if current > wanted {
        return Ok(Some(wanted));
    }
    let next = new_rs_new_replicas(d, all, new)?;
    Ok((next != current).then_some(next))
}

/// Shrinks the old ReplicaSets (`old`, oldest first) as far as availability allows
/// (`reconcileOldReplicaSets`): first their unavailable pods, then available ones down to the minimum.
/// Sets their `spec.replicas`; answers how many pods were taken away.
pub fn reconcile_old(d: &Deployment, old: &mut [ReplicaSet], new: &ReplicaSet) -> Result<i32, InvalidIntOrPercent> {
    let old_count = spec_count(&old.iter().collect::<Vec<_>>());
    if old_count == 0 {
        return Ok(0);
    }
    let all_count = old_count + rs_replicas(new);
    let min_available = replicas(d) - max_unavailable(d)?;
    let new_unavailable = rs_replicas(new) - rs_available(new);
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Ok(0);
    }
    let cleaned = cleanup_unhealthy(old, max_scaled_down);
    let scaled = scale_down_old(d, old, new)?;
    Ok(cleaned + scaled)
}

/// Takes up to `max_cleanup` unavailable pods off the old ReplicaSets, oldest first
/// (`cleanupUnhealthyReplicas`); answers how many.
pub fn cleanup_unhealthy(old: &mut [ReplicaSet], max_cleanup: i32) -> i32 {
    let mut total = 0;
    for rs in old.iter_mut() {
        if total >= max_cleanup {
            break;
        }
        let (size, available) = (rs_replicas(rs), rs_available(rs));
        // A status from before the ReplicaSet was shrunk can show more available pods than its size:
        // nothing unhealthy to clean then (Kubernetes errors out and retries).
        if size == 0 || size <= available {
            continue;
        }
        let down = (max_cleanup - total).min(size - available);
        rs.spec.replicas = Some(size - down);
        total += down;
    }
    total
}

/// Takes available pods off the old ReplicaSets, oldest first, while more than `replicas - maxUnavailable`
/// stay available (`scaleDownOldReplicaSetsForRollingUpdate`); answers how many.
pub fn scale_down_old(d: &Deployment, old: &mut [ReplicaSet], new: &ReplicaSet) -> Result<i32, InvalidIntOrPercent> {
    let min_available = replicas(d) - max_unavailable(d)?;
    let mut all: Vec<&ReplicaSet> = old.iter().collect();
    all.push(new);
    let available: i32 = all.iter().map(|rs| rs_available_within_size(rs)).sum();
    if available <= min_available {
        return Ok(0);
    }
    let to_scale_down = available - min_available;
    let mut total = 0;
    for rs in old.iter_mut() {
        if total >= to_scale_down {
            break;
        }
        let size = rs_replicas(rs);
        if size == 0 {
            continue;
        }
        let down = size.min(to_scale_down - total);
        rs.spec.replicas = Some(size - down);
        total += down;
    }
    Ok(total)
}

#[cfg(test)]
#[path = "rolling_tests.rs"]
mod tests;
