//! deployment_util_test.go's tables.

use testbed_api::objects::DeploymentStrategy;

use super::*;
use crate::controllers::deployment::test_objects::{deployment, int, rs, text};

#[test]
fn resolve_fenceposts_table() {
    let s = |v: &str| Some(text(v));
    // (maxSurge, maxUnavailable, desired, expected)
    let cases = [
        (s("0%"), s("0%"), 0, Ok((0, 1))),
        (s("39%"), s("39%"), 10, Ok((4, 3))),
        (s("oops"), s("39%"), 10, Err(InvalidIntOrPercent("oops".into()))),
        (s("55%"), s("urg"), 10, Err(InvalidIntOrPercent("urg".into()))),
        (s("5"), s("1"), 7, Err(InvalidIntOrPercent("5".into()))),
        (s("100%"), s("0%"), 4, Ok((4, 0))),
        (None, None, 10, Ok((0, 1))),
        (Some(int(1)), Some(int(1)), 2, Ok((1, 1))),
        (s("25%"), s("25%"), 8, Ok((2, 2))),
    ];
    for (i, (surge, unavailable, desired, expected)) in cases.into_iter().enumerate() {
        assert_eq!(resolve_fenceposts(surge.as_ref(), unavailable.as_ref(), desired), expected, "case {i}");
    }
}

#[test]
fn max_unavailable_table() {
    let cases = [
        (10, int(5), 5),
        (10, int(10), 10),
        (5, int(10), 5),
        (0, int(10), 0),
        (10, text("50%"), 5),
        (10, text("100%"), 10),
        (5, text("100%"), 5),
    ];
    for (i, (replicas, unavailable, expected)) in cases.into_iter().enumerate() {
        assert_eq!(max_unavailable(&deployment(replicas, int(1), unavailable)), Ok(expected), "case {i}");
    }
    let mut recreate = Deployment::default();
    recreate.spec.strategy = Some(DeploymentStrategy { type_: Some("Recreate".into()), rolling_update: None });
    assert_eq!((max_unavailable(&recreate), max_surge(&recreate)), (Ok(0), Ok(0)));
    // Unset limits are the API's 25% defaults: 10 pods surge 3 (up), lose at most 2 (down).
    let mut defaults = Deployment::default();
    defaults.spec.replicas = Some(10);
    assert_eq!((max_surge(&defaults), max_unavailable(&defaults)), (Ok(3), Ok(2)));
}

#[test]
fn new_rs_new_replicas_table() {
    // (strategy, deployment replicas, new RS replicas, maxSurge, expected); the other RS has 5.
    let cases = [("RollingUpdate", 1, 5, 1, 5), ("RollingUpdate", 6, 2, 10, 6), ("Recreate", 3, 1, 1, 3)];
    for (i, (strategy, replicas, new, surge, expected)) in cases.into_iter().enumerate() {
        let mut d = deployment(replicas, int(surge), int(1));
        if let Some(s) = d.spec.strategy.as_mut() {
            s.type_ = Some(strategy.into());
        }
        let (new_rs, rs5) = (rs("new", new, 0), rs("rs5", 5, 0));
        assert_eq!(new_rs_new_replicas(&d, &[&rs5], &new_rs), Ok(expected), "case {i}");
    }
}

#[test]
fn proportions() {
    // getReplicaSetFraction / GetProportion: 10 -> 15 pods (surge 0) with the RSs at 6 and 4 of 10 max.
    let d = deployment(15, int(0), int(1));
    let mut a = rs("a", 6, 6);
    let mut b = rs("b", 4, 4);
    set_replicas_annotations(&mut a, 10, 10);
    set_replicas_annotations(&mut b, 10, 10);
    assert_eq!(proportion(&a, &d, 5, 0), Ok(3));
    assert_eq!(proportion(&b, &d, 5, 3), Ok(2));
    assert_eq!(proportion(&b, &d, 5, 5), Ok(0), "nothing left to add");
    let down = deployment(5, int(0), int(1));
    assert_eq!(proportion(&a, &down, -5, 0), Ok(-3));
    assert_eq!(proportion(&rs("empty", 0, 0), &d, 5, 0), Ok(0));
}

#[test]
fn annotations_and_saturation() {
    let mut r = rs("r", 1, 1);
    assert!(set_replicas_annotations(&mut r, 10, 11));
    assert!(!set_replicas_annotations(&mut r, 10, 11), "unchanged");
    assert_eq!(r.metadata.annotations[MAX_REPLICAS], "11");
    let d = deployment(1, int(1), int(0));
    assert!(!is_saturated(&d, Some(&r)), "desired-replicas says 10");
    set_replicas_annotations(&mut r, 1, 2);
    assert!(is_saturated(&d, Some(&r)));
    assert!(!is_saturated(&d, None));
}

#[test]
fn hash_is_stable_safe_encoded_and_moved_by_collisions() {
    let mut t = testbed_api::objects::PodTemplateSpec::default();
    t.metadata.labels.insert("app".into(), "web".into());
    let h = compute_hash(&t, None);
    assert_eq!(h, compute_hash(&t.clone(), None));
    assert!(h.bytes().all(|b| SAFE_ALPHABET.contains(&b)), "{h}");
    assert_ne!(h, compute_hash(&t, Some(1)));
    let mut other = t.clone();
    other.metadata.labels.insert("v".into(), "2".into());
    assert_ne!(h, compute_hash(&other, None));
    let mut hashed = t.clone();
    hashed.metadata.labels.insert(HASH_LABEL.into(), h);
    assert!(equal_ignore_hash(&t, &hashed));
    assert!(!equal_ignore_hash(&other, &hashed));
}
