//! Probes against `FakeProcesses` (scripted probe results, paused clock): liveness kills and restarts with
//! the kubelet's back-off, readiness flips `ready` both ways, startup holds liveness back.

use testbed_api::probe::{ExecAction, Probe, ProbeKind, Probes};

use super::*;

/// An exec probe every second, `failure` failures to fail.
fn every_second(failure: i32) -> Option<Probe> {
    Some(Probe {
        exec: Some(ExecAction { command: vec!["true".into()] }),
        period_seconds: Some(1),
        failure_threshold: Some(failure),
        termination_grace_period_seconds: Some(1),
        ..Default::default()
    })
}

fn probed(name: &str, probes: Probes) -> PodSpec {
    let mut spec = pod(name, RestartPolicy::Always, &["app"]);
    spec.containers[0].probes = probes;
    spec
}

#[tokio::test(start_paused = true)]
async fn a_failing_liveness_probe_kills_the_container_and_restarts_back_off() {
    let h = harness().await;
    h.fake.set_probe("app", ProbeKind::Liveness, false);
    let probes = Probes { liveness_probe: every_second(3), ..Default::default() };
    h.agent.create_pod(probed("wedged", probes)).await.unwrap();
    until("4 launches", || h.fake.launches("app").len() == 4).await;
    // Killed at the third failure (probes at 0, 1, 2 s); restarted at once, then 10 s and 20 s later.
    assert_eq!(h.launch_gaps("app"), vec![secs(2), secs(2 + 10), secs(2 + 20)]);
    let status = h.status("wedged");
    assert_eq!(status.containers[0].restart_count, 3);
    // SIGTERM (the fake's launcher forwards it): exit 143, an Error.
    let last = ContainerState::Terminated { exit_code: 143, reason: "Error".into() };
    assert_eq!(status.containers[0].last_state, Some(last));
    // Killed again: it waits out the 40 s back-off as CrashLoopBackOff, the pod still Running.
    until("back-off", || matches!(h.state("wedged", 0), ContainerState::Waiting { .. })).await;
    let status = h.status("wedged");
    assert_eq!(status.containers[0].state, ContainerState::Waiting { reason: "CrashLoopBackOff".into() });
    assert_eq!(status.phase, PodPhase::Running);
    assert!(!status.containers[0].ready);

    // Healthy again: no more kills.
    h.fake.set_probe("app", ProbeKind::Liveness, true);
    until("5 launches", || h.fake.launches("app").len() == 5).await;
    tokio::time::sleep(secs(600)).await;
    assert_eq!(h.fake.launches("app").len(), 5);
    assert!(h.status("wedged").containers[0].ready, "running with no readiness probe is ready");
}

#[tokio::test(start_paused = true)]
async fn readiness_sets_ready_both_ways_and_never_restarts() {
    let h = harness().await;
    h.fake.set_probe("app", ProbeKind::Readiness, false);
    let probes = Probes { readiness_probe: every_second(2), ..Default::default() };
    h.agent.create_pod(probed("shy", probes)).await.unwrap();
    let ready = || h.status("shy").containers[0].ready;
    assert!(!ready(), "not ready before the first success");
    tokio::time::sleep(secs(5)).await;
    assert!(!ready());
    h.fake.set_probe("app", ProbeKind::Readiness, true);
    until("ready", ready).await;
    h.fake.set_probe("app", ProbeKind::Readiness, false);
    let flipped = tokio::time::Instant::now();
    until("unready", || !ready()).await;
    // failureThreshold 2 at a 1 s period: unready at the second failure.
    assert!(flipped.elapsed() <= secs(2), "{:?}", flipped.elapsed());
    assert_eq!(h.fake.launches("app").len(), 1, "readiness never restarts");
}

#[tokio::test(start_paused = true)]
async fn startup_holds_liveness_back_and_kills_when_it_keeps_failing() {
    let h = harness().await;
    h.fake.set_probe("app", ProbeKind::Startup, false);
    h.fake.set_probe("app", ProbeKind::Liveness, false);
    let probes = Probes { liveness_probe: every_second(1), startup_probe: every_second(5), ..Default::default() };
    h.agent.create_pod(probed("slow", probes)).await.unwrap();
    until("2 launches", || h.fake.launches("app").len() == 2).await;
    // The startup probe's fifth failure (at 4 s) kills it; liveness never ran meanwhile.
    assert_eq!(h.launch_gaps("app"), vec![secs(4)]);
    assert!(h.fake.probe_times("app", ProbeKind::Liveness).is_empty());

    // A container whose startup probe passes at once: liveness begins at its next tick, and its first
    // failure kills.
    h.fake.set_probe("quick", ProbeKind::Liveness, false);
    let probes = Probes { liveness_probe: every_second(1), startup_probe: every_second(5), ..Default::default() };
    let mut spec = probed("fast", probes);
    spec.containers[0].name = "quick".into();
    h.agent.create_pod(spec).await.unwrap();
    until("quick restarted", || h.fake.launches("quick").len() == 2).await;
    let started = h.fake.launches("quick")[0];
    let liveness = h.fake.probe_times("quick", ProbeKind::Liveness);
    assert_eq!(liveness.first().map(|t| *t - started), Some(secs(1)));
    assert_eq!(h.launch_gaps("quick"), vec![secs(1)]);
}
