//! rolling_test.go's tables.

use super::*;
use crate::controllers::deployment::test_objects::{deployment, int, rs};

#[test]
fn reconcile_new_replica_set() {
    // (deployment replicas, maxSurge, old replicas, new replicas, expected new size)
    let cases = [
        (10, 0, 10, 0, None),
        (10, 2, 10, 0, Some(2)),
        (10, 2, 5, 0, Some(7)),
        (10, 2, 10, 2, None),
        (10, 2, 2, 11, Some(10)),
    ];
    for (i, (replicas, surge, old, new, expected)) in cases.into_iter().enumerate() {
        let d = deployment(replicas, int(surge), int(0));
        let (new_rs, old_rs) = (rs("foo-v2", new, 0), rs("foo-v1", old, 0));
        assert_eq!(reconcile_new(&d, &[&new_rs, &old_rs], &new_rs), Ok(expected), "case {i}");
    }
}

#[test]
fn reconcile_old_replica_sets() {
    // (deployment replicas, maxUnavailable, old replicas, new replicas, old ready, new ready, expected old size)
    let cases = [
        (10, 0, 10, 0, 10, 0, Some(9)),
        (10, 2, 10, 0, 10, 0, Some(8)),
        // Unhealthy old pods are cleaned up first.
        (10, 2, 10, 0, 8, 0, Some(8)),
        // One unhealthy cleaned up, one ready scaled down.
        (10, 2, 10, 0, 9, 0, Some(8)),
        // The new RS's unavailable pods hold the old ones back.
        (10, 2, 8, 2, 8, 0, None),
    ];
    for (i, (replicas, unavailable, old, new, old_ready, new_ready, expected)) in cases.into_iter().enumerate() {
        let d = deployment(replicas, int(0), int(unavailable));
        let new_rs = rs("foo-new", new, new_ready);
        let mut olds = vec![rs("foo-old", old, old_ready)];
        let scaled = reconcile_old(&d, &mut olds, &new_rs);
        assert_eq!(scaled.map(|n| n > 0), Ok(expected.is_some()), "case {i}");
        if let Some(size) = expected {
            assert_eq!(olds[0].spec.replicas, Some(size), "case {i}");
        }
    }
}

#[test]
fn cleanup_unhealthy_replicas() {
    // (old replicas, ready, max cleanup, expected cleaned)
    for (i, (old, ready, max, expected)) in
        [(10, 8, 1, 1), (10, 8, 3, 2), (10, 8, 0, 0), (10, 10, 3, 0)].into_iter().enumerate()
    {
        let mut olds = vec![rs("foo-v2", old, ready)];
        assert_eq!(cleanup_unhealthy(&mut olds, max), expected, "case {i}");
    }
}

#[test]
fn scale_down_old_replica_sets_for_rolling_update() {
    // (deployment replicas, maxUnavailable, ready, old replicas, expected old size)
    let cases = [
        (10, 0, 10, 10, Some(9)),
        (10, 2, 10, 10, Some(8)),
        (10, 2, 8, 10, None),
        (10, 2, 10, 0, None),
        (10, 2, 1, 10, None),
    ];
    for (i, (replicas, unavailable, ready, old, expected)) in cases.into_iter().enumerate() {
        let d = deployment(replicas, int(0), int(unavailable));
        let mut olds = vec![rs("foo-v2", old, ready)];
        // Kubernetes' table has no new ReplicaSet: an empty one adds nothing.
        let scaled = scale_down_old(&d, &mut olds, &rs("none", 0, 0));
        assert_eq!(scaled.map(|n| n > 0), Ok(expected.is_some()), "case {i}");
        if let Some(size) = expected {
            assert_eq!(olds[0].spec.replicas, Some(size), "case {i}");
        }
    }
}
