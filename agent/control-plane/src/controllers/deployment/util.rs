//! The rollout arithmetic of pkg/controller/deployment/util/deployment_util.go, as pure functions over
//! the objects: surge and unavailability limits, the new ReplicaSet's next size, proportional scaling,
//! template hashes, revisions and the replica annotations.

use std::collections::BTreeMap;

use testbed_api::objects::{Deployment, IntOrString, PodTemplateSpec, ReplicaSet};

/// The label that ties a ReplicaSet and its pods to one template version.
pub const HASH_LABEL: &str = "pod-template-hash";
/// The revision of a ReplicaSet (and of the Deployment: its current one).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The Deployment's `replicas` when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// The Deployment's `replicas + maxSurge` when the ReplicaSet was last scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// The alphabet of `rand.SafeEncodeString`: no vowels (no words), no look-alikes.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `maxSurge` or `maxUnavailable` is neither a count nor a percentage.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid value {0:?}: must be an integer or a percentage")]
pub struct InvalidIntOrPercent(pub String);

/// A count, or a percentage of `total` rounded up or down (`GetScaledValueFromIntOrPercent`).
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Result<i32, InvalidIntOrPercent> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => {
            let bad = || InvalidIntOrPercent(s.clone());
            let percent: i64 = s.strip_suffix('%').ok_or_else(bad)?.parse().map_err(|_| bad())?;
            let scaled = percent * i64::from(total);
            Ok((if round_up { (scaled + 99).div_euclid(100) } else { scaled.div_euclid(100) }) as i32)
        }
    }
}

/// The Deployment rolls out with `RollingUpdate` (the default).
pub fn is_rolling(d: &Deployment) -> bool {
    d.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()).is_none_or(|t| t == "RollingUpdate")
}

/// `spec.replicas`, 1 when unset.
pub fn replicas(d: &Deployment) -> i32 {
    d.spec.replicas.unwrap_or(1)
}

/// A ReplicaSet's `spec.replicas`, 1 when unset.
pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1)
}

/// A ReplicaSet's available pods.
pub fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
}

/// (maxSurge, maxUnavailable) of `desired` pods: surge rounded up, unavailability down (an unset one is
/// 0), and never both 0 (`ResolveFenceposts`: unavailability 1 then, or the rollout could not move).
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), InvalidIntOrPercent> {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(max_surge.unwrap_or(&zero), desired, true)?;
    let unavailable = scaled_value(max_unavailable.unwrap_or(&zero), desired, false)?;
    Ok(if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable) })
}

/// The Deployment's fenceposts, unset limits taking the API's defaults (25% each) first.
fn fenceposts(d: &Deployment) -> Result<(i32, i32), InvalidIntOrPercent> {
    let ru = d.spec.strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
    let default = IntOrString::String("25%".into());
    let surge = ru.and_then(|r| r.max_surge.as_ref()).unwrap_or(&default);
    let unavailable = ru.and_then(|r| r.max_unavailable.as_ref()).unwrap_or(&default);
    resolve_fenceposts(Some(surge), Some(unavailable), replicas(d))
}

/// Pods allowed above `replicas` (`MaxSurge`; 0 for `Recreate`).
pub fn max_surge(d: &Deployment) -> Result<i32, InvalidIntOrPercent> {
    if !is_rolling(d) {
        return Ok(0);
    }
    Ok(fenceposts(d)?.0)
}

/// Pods allowed below `replicas` available (`MaxUnavailable`; 0 for `Recreate` or no replicas, at most
/// `replicas`).
pub fn max_unavailable(d: &Deployment) -> Result<i32, InvalidIntOrPercent> {
    if !is_rolling(d) || replicas(d) == 0 {
        return Ok(0);
    }
    Ok(fenceposts(d)?.1.min(replicas(d)))
}

/// The pods a ReplicaSet may have now: its size, or more while pods it was shrunk by are still being
/// deleted (`status.replicas` still counts them). Stricter than Kubernetes, which counts the size only and
/// so can exceed `maxSurge` while old pods terminate.
pub fn rs_pods(rs: &ReplicaSet) -> i32 {
    rs_replicas(rs).max(rs.status.as_ref().map_or(0, |s| s.replicas))
}

/// A ReplicaSet's available pods as far as its size allows: a status written before the ReplicaSet was
/// shrunk still counts the pods being deleted (the least available go first, so this is what remains).
/// Keeps a stale status from shrinking old ReplicaSets twice; Kubernetes takes the status as it is.
pub fn rs_available_within_size(rs: &ReplicaSet) -> i32 {
    rs_available(rs).min(rs_replicas(rs))
}

/// The sum of `spec.replicas` (`GetReplicaCountForReplicaSets`).
pub fn spec_count(rss: &[&ReplicaSet]) -> i32 {
    rss.iter().map(|rs| rs_replicas(rs)).sum()
}

/// The sum of `status.replicas` (`GetActualReplicaCountForReplicaSets`).
pub fn actual_count(rss: &[&ReplicaSet]) -> i32 {
    rss.iter().map(|rs| rs.status.as_ref().map_or(0, |s| s.replicas)).sum()
}

/// The sum of available pods.
pub fn available_count(rss: &[&ReplicaSet]) -> i32 {
    rss.iter().map(|rs| rs_available(rs)).sum()
}

/// The sum of Ready pods.
pub fn ready_count(rss: &[&ReplicaSet]) -> i32 {
    rss.iter().map(|rs| rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0)).sum()
}

/// The size the new ReplicaSet may grow to now (`NewRSNewReplicas`): up to `replicas + maxSurge` pods in
/// all for `RollingUpdate`, `replicas` at once for `Recreate`.
pub fn new_rs_new_replicas(
    d: &Deployment,
    all: &[&ReplicaSet],
    new_rs: &ReplicaSet,
) -> Result<i32, InvalidIntOrPercent> {
    if !is_rolling(d) {
        return Ok(replicas(d));
    }
    let current: i32 = all.iter().map(|rs| rs_pods(rs)).sum();
    let max_total = replicas(d) + max_surge(d)?;
    if current >= max_total {
        return Ok(rs_replicas(new_rs));
    }
    let scale_up = (max_total - current).min(replicas(d) - rs_replicas(new_rs));
    Ok(rs_replicas(new_rs) + scale_up)
}

/// An integer annotation of `rs`.
fn int_annotation(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.metadata.annotations.get(key)?.parse().ok()
}

/// The `desired-replicas` annotation.
pub fn desired_replicas_annotation(rs: &ReplicaSet) -> Option<i32> {
    int_annotation(rs, DESIRED_REPLICAS)
}

/// Sets `desired-replicas` and `max-replicas`; whether anything changed (`SetReplicasAnnotations`).
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let a = &mut rs.metadata.annotations;
    let mut changed = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        if a.get(key) != Some(&value.to_string()) {
            a.insert(key.into(), value.to_string());
            changed = true;
        }
    }
    changed
}

/// The ReplicaSet's share of `to_add` more (or fewer) pods (`GetProportion`), given `added` so far.
pub fn proportion(rs: &ReplicaSet, d: &Deployment, to_add: i32, added: i32) -> Result<i32, InvalidIntOrPercent> {
    if rs_replicas(rs) == 0 || to_add == 0 || to_add == added {
        return Ok(0);
    }
    let fraction = fraction(rs, d)?;
    let allowed = to_add - added;
    Ok(if to_add > 0 { fraction.min(allowed) } else { fraction.max(allowed) })
}

/// How many pods the ReplicaSet gains or loses when the Deployment's size changes (`getReplicaSetFraction`),
/// proportional to its size against the `max-replicas` it was scaled for.
fn fraction(rs: &ReplicaSet, d: &Deployment) -> Result<i32, InvalidIntOrPercent> {
    if replicas(d) == 0 {
        return Ok(-rs_replicas(rs));
    }
    let deployment_replicas = replicas(d) + max_surge(d)?;
    let annotated =
        int_annotation(rs, MAX_REPLICAS).unwrap_or_else(|| d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
    if annotated == 0 {
        return Ok(0);
    }
    let new_size = f64::from(rs_replicas(rs)) * f64::from(deployment_replicas) / f64::from(annotated);
    // Go's math.Round: halves away from zero, as f64::round.
    Ok(new_size.round() as i32 - rs_replicas(rs))
}

/// The new ReplicaSet has all the Deployment's pods, available (`IsSaturated`).
pub fn is_saturated(d: &Deployment, rs: Option<&ReplicaSet>) -> bool {
    rs.is_some_and(|rs| {
        rs_replicas(rs) == replicas(d)
            && desired_replicas_annotation(rs) == Some(replicas(d))
            && rs_available(rs) == replicas(d)
    })
}

/// The template's hash (`ComputeHash`): FNV-32a of its JSON, then of `collision_count` as 8 little-endian
/// bytes (its low 4 set) when there is one, the decimal of the sum safe-encoded.
pub fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut write = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    write(&serde_json::to_vec(template).unwrap_or_default());
    if let Some(n) = collision_count {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&(n as u32).to_le_bytes());
        write(&bytes);
    }
    hash.to_string().bytes().map(|b| SAFE_ALPHABET[b as usize % SAFE_ALPHABET.len()] as char).collect()
}

/// The templates are equal but for the hash label (`EqualIgnoreHash`).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        t.metadata.labels.remove(HASH_LABEL);
        t
    };
    strip(a) == strip(b)
}

/// `labels` with `key=value` added.
pub fn with_label(labels: &BTreeMap<String, String>, key: &str, value: &str) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    labels.insert(key.into(), value.into());
    labels
}

/// The revision annotation of `rs` (0 when missing).
pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata.annotations.get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// The highest revision among `rss` (`MaxRevision`).
pub fn max_revision(rss: &[&ReplicaSet]) -> i64 {
    rss.iter().map(|rs| revision(rs)).max().unwrap_or(0)
}

#[cfg(test)]
#[path = "util_tests.rs"]
mod tests;
