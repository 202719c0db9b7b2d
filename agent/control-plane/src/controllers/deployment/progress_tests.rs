//! deployment_util_test.go's DeploymentComplete / DeploymentProgressing / DeploymentTimedOut tables.

use super::*;

fn deployment(replicas: i32, updated: i32, current: i32, available: i32) -> Deployment {
    let mut d = Deployment::default();
    d.spec.replicas = Some(replicas);
    d.metadata.generation = Some(1);
    d.status = Some(status(updated, current, available, 1));
    d
}

fn status(updated: i32, current: i32, available: i32, generation: i64) -> DeploymentStatus {
    DeploymentStatus {
        updated_replicas: nonzero(updated),
        replicas: nonzero(current),
        available_replicas: nonzero(available),
        observed_generation: Some(generation),
        ..Default::default()
    }
}

#[test]
fn complete_table() {
    // (replicas, updated, current, available, complete)
    let cases =
        [(5, 5, 5, 5, true), (5, 5, 5, 4, false), (5, 5, 6, 5, false), (5, 4, 5, 5, false), (5, 6, 6, 6, false)];
    for (i, (r, u, c, a, expected)) in cases.into_iter().enumerate() {
        let d = deployment(r, u, c, a);
        assert_eq!(complete(&d, d.status.as_ref().unwrap_or(&DeploymentStatus::default())), expected, "case {i}");
    }
    let mut stale = deployment(5, 5, 5, 5);
    stale.metadata.generation = Some(2);
    assert!(!complete(&stale, &status(5, 5, 5, 1)), "status of an older generation");
}

#[test]
fn progressing_table() {
    let ready = |mut s: DeploymentStatus, n: i32| {
        s.ready_replicas = nonzero(n);
        s
    };
    let d = deployment(10, 4, 4, 4);
    assert!(!progressing(&d, &status(4, 4, 4, 1)), "no change");
    assert!(progressing(&d, &status(5, 5, 4, 1)), "more updated");
    let old = deployment(10, 10, 11, 9);
    assert!(progressing(&old, &status(10, 10, 9, 1)), "fewer old pods");
    assert!(progressing(&d, &ready(status(4, 4, 4, 1), 1)), "more ready");
    assert!(progressing(&deployment(10, 10, 10, 9), &status(10, 10, 10, 1)), "more available");
}

#[test]
fn timed_out_table() {
    let at = |min: u32, sec: u32| format!("2016-01-01T00:{min:02}:{sec:02}Z");
    let with = |pds: Option<i32>, reason: &str, from: &str| {
        let mut d = Deployment::default();
        d.spec.progress_deadline_seconds = pds;
        let mut s = DeploymentStatus::default();
        s.conditions.push(Condition {
            type_: "Progressing".into(),
            status: "True".into(),
            reason: Some(reason.into()),
            last_update_time: Some(from.into()),
            ..Default::default()
        });
        (d, s)
    };
    let now = parse_rfc3339(&at(1, 20)).unwrap_or_default();
    let (d, s) = with(Some(i32::MAX), "", &at(1, 9));
    assert!(!timed_out(&d, &s, now), "infinite deadline");
    let (d, s) = with(Some(10), "", &at(1, 9));
    assert!(timed_out(&d, &s, now), "11 s > 10 s");
    let (d, s) = with(Some(10), "", &at(1, 11));
    assert!(!timed_out(&d, &s, now), "9 s < 10 s");
    let (d, s) = with(Some(10), NEW_RS_AVAILABLE, &at(0, 0));
    assert!(!timed_out(&d, &s, now), "a complete rollout never times out");
}

#[test]
fn set_condition_keeps_transition_time_on_reason_change() {
    let mut s = DeploymentStatus::default();
    let mut first = condition("Progressing", "True", NEW_RS_CREATED, "a");
    first.last_transition_time = Some("2016-01-01T00:00:00Z".into());
    set(&mut s, first);
    set(&mut s, condition("Progressing", "True", RS_UPDATED, "b"));
    assert_eq!(s.conditions.len(), 1);
    assert_eq!(s.conditions[0].last_transition_time.as_deref(), Some("2016-01-01T00:00:00Z"));
    set(&mut s, condition("Progressing", "False", TIMED_OUT, "c"));
    assert_ne!(s.conditions[0].last_transition_time.as_deref(), Some("2016-01-01T00:00:00Z"));
}
