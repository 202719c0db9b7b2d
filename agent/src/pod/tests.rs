//! The pod runtime's rules against `FakeProcesses`: create, restart with back-off, restartPolicy, delete,
//! re-adoption after an agent restart and a lost sandbox. No root needed; tokio's clock is paused, so
//! back-off sleeps take no time and launch times are exact. Pods use hostNetwork: the node network (netlink)
//! is not part of these rules.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use testbed_api::{
    ContainerSpec, ContainerState, LeakKind, LogChunk, LogQuery, PodPhase, PodSpec, PodStatus, RestartPolicy,
};

use super::fake::{FakeCgroups, FakeProcesses, Run};
use super::processes::{PodProcess, PodProcesses};
use super::record::{ContainerRecord, PodRecord};
use super::store::write_json_atomic;
use super::{Agent, AgentError, Config};

mod probes;

struct Harness {
    agent: Arc<Agent>,
    fake: FakeProcesses,
    cgroups: FakeCgroups,
    dir: tempfile::TempDir,
}

/// An agent on `dir` (a second one on the same dir is the agent after a restart).
async fn agent_on(dir: &std::path::Path, fake: &FakeProcesses, cgroups: &FakeCgroups) -> Arc<Agent> {
    let cfg = Config {
        state_dir: dir.join("state"),
        lease_dir: dir.join("ipam"),
        exe: PathBuf::from("/nonexistent/testbed-agent"),
        kill_grace: Duration::from_secs(1),
    };
    Agent::with_processes(cfg, Box::new(cgroups.clone()), Box::new(fake.clone())).await.unwrap()
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (fake, cgroups) = (FakeProcesses::default(), FakeCgroups::default());
    let agent = agent_on(dir.path(), &fake, &cgroups).await;
    Harness { agent, fake, cgroups, dir }
}

fn pod(name: &str, policy: RestartPolicy, containers: &[&str]) -> PodSpec {
    PodSpec {
        name: name.into(),
        containers: containers
            .iter()
            .map(|c| ContainerSpec {
                name: (*c).into(),
                command: vec!["sleep".into(), "infinity".into()],
                env: Default::default(),
                resources: Default::default(),
                pids_limit: None,
                args: vec![],
                image: None,
                volume_mounts: vec![],
                security_context: None,
                probes: Default::default(),
            })
            .collect(),
        restart_policy: policy,
        share_process_namespace: false,
        host_network: true,
        ..Default::default()
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Lets the supervisors run until `done` holds (with the clock paused, each sleep advances it at once).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

impl Harness {
    fn status(&self, pod: &str) -> PodStatus {
        self.agent.get_pod(pod).unwrap()
    }

    fn state(&self, pod: &str, container: usize) -> ContainerState {
        self.status(pod).containers[container].state.clone()
    }

    /// Gaps between the launches of `container`.
    fn launch_gaps(&self, container: &str) -> Vec<Duration> {
        self.fake.launches(container).windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Writes `record` where a previous agent would have left it, with the pod's directory for exit files.
    fn leave_record(&self, record: &PodRecord) {
        std::fs::create_dir_all(self.agent.pod_dir(&record.spec.name)).unwrap();
        write_json_atomic(&self.agent.pod_file(&record.spec.name), record).unwrap();
    }

    fn stored_record(&self, pod: &str) -> PodRecord {
        serde_json::from_slice(&std::fs::read(self.agent.pod_file(pod)).unwrap()).unwrap()
    }
}

fn running(name: &str, launcher: u32, pid: u32, restart_count: u32) -> ContainerRecord {
    ContainerRecord {
        name: name.into(),
        state: ContainerState::Running { pid },
        restart_count,
        launcher_pid: Some(launcher),
        oom_baseline: 0,
        last_terminated: None,
        started: false,
        ready: false,
    }
}

fn exited(name: &str, exit_code: i32) -> ContainerRecord {
    let reason = if exit_code == 0 { "Completed" } else { "Error" };
    ContainerRecord {
        name: name.into(),
        state: ContainerState::Terminated { exit_code, reason: reason.into() },
        restart_count: 0,
        launcher_pid: None,
        oom_baseline: 0,
        last_terminated: None,
        started: false,
        ready: false,
    }
}

fn record_with_infra(spec: &PodSpec, infra_pid: u32, containers: Vec<ContainerRecord>) -> PodRecord {
    PodRecord { infra_pid: Some(infra_pid), containers, ..PodRecord::without_sandbox(spec) }
}

// ---- create ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn create_starts_the_sandbox_then_every_container_and_is_idempotent() {
    let h = harness().await;
    let spec = pod("web", RestartPolicy::Always, &["app", "sidecar"]);
    let (created, status) = h.agent.create_pod(spec.clone()).await.unwrap();
    assert!(created);
    assert_eq!(status.phase, PodPhase::Running);
    assert_eq!(h.fake.infra_spawns(), 1);
    let infra = status.infra_pid.unwrap();
    assert!(h.fake.is_ours(infra, PodProcess::Infra { pod: "web" }));
    // Both containers run before the answer, and the record on disk names their launchers.
    let stored = h.stored_record("web");
    assert_eq!(stored.infra_pid, Some(infra));
    for (idx, name) in ["app", "sidecar"].into_iter().enumerate() {
        assert!(matches!(status.containers[idx].state, ContainerState::Running { .. }), "{name}");
        // No probes: ready in the answer already, as the kubelet reports a running container without one.
        assert!(status.containers[idx].ready && status.containers[idx].started, "{name}: {status:?}");
        assert_eq!(h.fake.launches(name).len(), 1);
        let launcher = stored.containers[idx].launcher_pid.unwrap();
        assert!(h.fake.is_ours(launcher, PodProcess::Launcher { pod: "web", container: name }));
    }

    // The same spec again changes nothing; another spec under the name is refused.
    let (created, _) = h.agent.create_pod(spec.clone()).await.unwrap();
    assert!(!created);
    assert_eq!(h.fake.infra_spawns(), 1);
    assert_eq!(h.fake.launches("app").len(), 1);
    let other = pod("web", RestartPolicy::Never, &["app"]);
    assert!(matches!(h.agent.create_pod(other).await, Err(AgentError::Conflict(_))));
}

// ---- supervise: back-off and restartPolicy --------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn restarts_back_off_as_the_kubelet_at_once_then_10s_doubling_to_5min() {
    let h = harness().await;
    h.fake.script("app", [Run::ExitsAfter(Duration::ZERO, 1); 8]);
    h.agent.create_pod(pod("crashy", RestartPolicy::Always, &["app"])).await.unwrap();
    until("9 launches", || h.fake.launches("app").len() == 9).await;
    let expected: Vec<Duration> = [0, 10, 20, 40, 80, 160, 300, 300].into_iter().map(secs).collect();
    assert_eq!(h.launch_gaps("app"), expected);
    let status = h.status("crashy");
    assert_eq!(status.containers[0].restart_count, 8);
    assert!(matches!(status.containers[0].state, ContainerState::Running { .. }));
    let last = ContainerState::Terminated { exit_code: 1, reason: "Error".into() };
    assert_eq!(status.containers[0].last_state, Some(last));
}

#[tokio::test(start_paused = true)]
async fn back_off_starts_over_after_a_container_ran_10_min() {
    let h = harness().await;
    let quick = Run::ExitsAfter(Duration::ZERO, 1);
    h.fake.script("app", [quick, quick, Run::ExitsAfter(secs(601), 1), quick]);
    h.agent.create_pod(pod("flappy", RestartPolicy::Always, &["app"])).await.unwrap();
    until("5 launches", || h.fake.launches("app").len() == 5).await;
    // At once, 10 s, then 601 s of running (more than 10 min since the last exit): at once again, and 10 s
    // (not the 20 s the history would give).
    assert_eq!(h.launch_gaps("app"), vec![secs(0), secs(10), secs(601), secs(10)]);
}

#[tokio::test(start_paused = true)]
async fn restart_policy_decides_which_exits_restart() {
    struct Case {
        policy: RestartPolicy,
        exits: &'static [i32],
        launches: usize,
        phase: PodPhase,
    }
    use RestartPolicy::*;
    let cases = [
        Case { policy: Never, exits: &[0], launches: 1, phase: PodPhase::Succeeded },
        Case { policy: Never, exits: &[3], launches: 1, phase: PodPhase::Failed },
        Case { policy: OnFailure, exits: &[0], launches: 1, phase: PodPhase::Succeeded },
        Case { policy: OnFailure, exits: &[2, 0], launches: 2, phase: PodPhase::Succeeded },
        // Always restarts a clean exit too; the third launch runs on.
        Case { policy: Always, exits: &[0, 0], launches: 3, phase: PodPhase::Running },
    ];
    let h = harness().await;
    for (i, case) in cases.iter().enumerate() {
        let container = format!("c{i}");
        h.fake.script(&container, case.exits.iter().map(|code| Run::ExitsAfter(Duration::ZERO, *code)));
        h.agent.create_pod(pod(&format!("p{i}"), case.policy, &[&container])).await.unwrap();
    }
    // Long enough for any restart still to come.
    tokio::time::sleep(secs(120)).await;
    for (i, case) in cases.iter().enumerate() {
        let what = format!("case {i}: {:?} exiting {:?}", case.policy, case.exits);
        assert_eq!(h.fake.launches(&format!("c{i}")).len(), case.launches, "{what}");
        let status = h.status(&format!("p{i}"));
        assert_eq!(status.phase, case.phase, "{what}");
        assert_eq!(status.containers[0].restart_count as usize, case.launches - 1, "{what}");
        if case.phase != PodPhase::Running {
            let last = *case.exits.last().unwrap();
            let ContainerState::Terminated { exit_code, reason } = &status.containers[0].state else {
                panic!("{what}: {:?}", status.containers[0].state)
            };
            assert_eq!((*exit_code, reason.as_str()), (last, if last == 0 { "Completed" } else { "Error" }), "{what}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_is_retried_only_when_the_policy_restarts_it() {
    let h = harness().await;
    h.fake.script("once", [Run::FailsToStart]);
    h.fake.script("retried", [Run::FailsToStart]);
    h.agent.create_pod(pod("never", RestartPolicy::Never, &["once"])).await.unwrap();
    h.agent.create_pod(pod("onfailure", RestartPolicy::OnFailure, &["retried"])).await.unwrap();
    tokio::time::sleep(secs(60)).await;
    assert_eq!(h.fake.launches("once").len(), 1);
    assert_eq!(h.state("never", 0), ContainerState::Terminated { exit_code: 128, reason: "StartError".into() });
    assert_eq!(h.fake.launches("retried").len(), 2);
    assert!(matches!(h.state("onfailure", 0), ContainerState::Running { .. }));
}

// ---- delete ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn delete_stops_every_process_and_nothing_restarts() {
    let h = harness().await;
    let (_, status) = h.agent.create_pod(pod("gone", RestartPolicy::Always, &["app"])).await.unwrap();
    let infra = status.infra_pid.unwrap();
    let launcher = h.stored_record("gone").containers[0].launcher_pid.unwrap();
    h.agent.delete_pod("gone", Some(secs(1))).await.unwrap();
    assert!(matches!(h.agent.get_pod("gone"), Err(AgentError::NotFound(_))));
    assert!(!h.fake.is_alive(launcher), "the launcher ends on SIGTERM");
    assert!(!h.fake.is_alive(infra) && h.fake.killed().contains(&infra));
    assert!(!h.agent.pod_file("gone").exists());
    tokio::time::sleep(secs(60)).await;
    assert_eq!(h.fake.launches("app").len(), 1, "a deleted pod's container came back");
}

#[tokio::test(start_paused = true)]
async fn a_teardown_that_leaks_fails_the_delete_and_is_finished_later() {
    let h = harness().await;
    h.agent.create_pod(pod("leaky", RestartPolicy::Always, &["app"])).await.unwrap();
    // A process the agent did not start sits in the container's cgroup: rmdir fails, for its parent too.
    h.cgroups.hold("pod-leaky/app");
    let Err(AgentError::Leaked { pod: leaked_pod, leaks }) = h.agent.delete_pod("leaky", Some(secs(0))).await else {
        panic!("a teardown that left cgroups behind answered success")
    };
    assert_eq!(leaked_pod, "leaky");
    let left: Vec<(LeakKind, &str)> = leaks.iter().map(|l| (l.kind, l.name.as_str())).collect();
    assert_eq!(left, vec![(LeakKind::Cgroup, "pod-leaky/app"), (LeakKind::Cgroup, "pod-leaky")]);
    let message = AgentError::Leaked { pod: leaked_pod, leaks }.to_string();
    assert!(message.contains("cgroup pod-leaky/app (cgroup pod-leaky/app: still has processes)"), "{message}");
    // The pod is gone from the API, but its name stays taken and a repeated DELETE retries (and fails again).
    assert!(matches!(h.agent.get_pod("leaky"), Err(AgentError::NotFound(_))));
    assert!(matches!(
        h.agent.create_pod(pod("leaky", RestartPolicy::Always, &["app"])).await,
        Err(AgentError::Conflict(_))
    ));
    assert!(matches!(h.agent.delete_pod("leaky", None).await, Err(AgentError::Leaked { .. })));

    // An agent restart keeps the unfinished teardown; its reconcile pass finishes it once nothing holds on.
    let restarted = agent_on(h.dir.path(), &h.fake, &h.cgroups).await;
    restarted.restore().await;
    assert!(restarted.get_pod("leaky").is_err(), "an unfinished teardown is not a pod to re-adopt");
    restarted.finish_teardowns().await;
    assert!(matches!(restarted.delete_pod("leaky", None).await, Err(AgentError::Leaked { .. })));
    h.cgroups.release("pod-leaky/app");
    restarted.finish_teardowns().await;
    assert!(matches!(restarted.delete_pod("leaky", None).await, Err(AgentError::NotFound(_))));
    assert!(std::fs::read_dir(h.dir.path().join("state/teardown")).unwrap().next().is_none());
    // And the name is free again.
    restarted.create_pod(pod("leaky", RestartPolicy::Always, &["app"])).await.unwrap();
}

// ---- re-adoption after an agent restart -----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn readopts_live_pods_and_reads_adopted_exits_from_the_exit_file() {
    let h = harness().await;
    let kept = pod("kept", RestartPolicy::OnFailure, &["web"]);
    let done = pod("done", RestartPolicy::OnFailure, &["job"]);
    for (spec, infra, launcher, container) in [(&kept, 500, 501, "web"), (&done, 510, 511, "job")] {
        h.fake.left_running(infra, PodProcess::Infra { pod: &spec.name });
        h.fake.left_running(launcher, PodProcess::Launcher { pod: &spec.name, container });
        h.leave_record(&record_with_infra(spec, infra, vec![running(container, launcher, launcher + 1, 2)]));
    }
    h.agent.restore().await;
    // Nothing is started again: the pods are as the previous agent left them.
    assert_eq!(h.fake.infra_spawns(), 0);
    let status = h.status("kept");
    assert_eq!(status.infra_pid, Some(500));
    assert_eq!(status.containers[0].state, ContainerState::Running { pid: 502 });
    assert_eq!(status.containers[0].restart_count, 2);

    // The adopted launchers exit; only their exit files tell how.
    std::fs::write(h.agent.pod_dir("kept").join("web.exit"), "3\n").unwrap();
    std::fs::write(h.agent.pod_dir("done").join("job.exit"), "0\n").unwrap();
    h.fake.dies(501);
    h.fake.dies(511);
    until("web restarted", || h.fake.launches("web").len() == 1).await;
    assert_eq!(h.status("kept").containers[0].restart_count, 3);
    tokio::time::sleep(secs(60)).await;
    assert_eq!(h.fake.launches("job").len(), 0, "exit 0 under OnFailure is final");
    assert_eq!(h.state("done", 0), ContainerState::Terminated { exit_code: 0, reason: "Completed".into() });
    assert_eq!(h.status("done").phase, PodPhase::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn readoption_restarts_only_the_exited_containers_the_policy_restarts() {
    let h = harness().await;
    let spec = pod("mixed", RestartPolicy::OnFailure, &["ok", "bad"]);
    h.fake.left_running(600, PodProcess::Infra { pod: "mixed" });
    h.leave_record(&record_with_infra(&spec, 600, vec![exited("ok", 0), exited("bad", 1)]));
    h.agent.restore().await;
    until("bad restarted", || h.fake.launches("bad").len() == 1).await;
    tokio::time::sleep(secs(60)).await;
    assert_eq!(h.fake.launches("ok").len(), 0);
    assert_eq!(h.fake.infra_spawns(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_pod_whose_infra_died_while_the_agent_was_down_is_recreated() {
    let h = harness().await;
    let spec = pod("phoenix", RestartPolicy::Always, &["web"]);
    // Infra 700 is gone; its launcher 701 is still there.
    h.fake.left_running(701, PodProcess::Launcher { pod: "phoenix", container: "web" });
    h.leave_record(&record_with_infra(&spec, 700, vec![running("web", 701, 702, 4)]));
    h.agent.restore().await;
    assert!(h.fake.killed().contains(&701), "the old launcher is stopped");
    assert_eq!(h.fake.infra_spawns(), 1);
    let status = h.status("phoenix");
    assert_ne!(status.infra_pid, Some(700));
    assert!(matches!(status.containers[0].state, ContainerState::Running { .. }));
    assert_eq!(status.containers[0].restart_count, 0, "a recreated pod starts its counts over");
    assert_eq!(h.fake.launches("web").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_never_pod_that_ran_stays_finished_when_its_infra_died() {
    let h = harness().await;
    let spec = pod("oneshot", RestartPolicy::Never, &["job"]);
    h.fake.left_running(801, PodProcess::Launcher { pod: "oneshot", container: "job" });
    h.leave_record(&record_with_infra(&spec, 800, vec![running("job", 801, 802, 0)]));
    h.agent.restore().await;
    assert!(h.fake.killed().contains(&801));
    assert_eq!(h.fake.infra_spawns(), 0, "a Never pod that has run is not started again");
    assert_eq!(h.state("oneshot", 0), ContainerState::Terminated { exit_code: 137, reason: "Error".into() });
    assert_eq!(h.status("oneshot").phase, PodPhase::Failed);
    assert!(h.stored_record("oneshot").sandbox_lost);
    tokio::time::sleep(secs(60)).await;
    assert_eq!(h.fake.launches("job").len(), 0);
}

// ---- lost sandbox (reconcile loop) ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_lost_sandbox_is_recreated_by_the_reconcile_pass() {
    let h = harness().await;
    let (_, status) = h.agent.create_pod(pod("lost", RestartPolicy::Always, &["app"])).await.unwrap();
    let infra = status.infra_pid.unwrap();
    let launcher = h.stored_record("lost").containers[0].launcher_pid.unwrap();
    h.fake.dies(infra);
    h.agent.recreate_lost_sandboxes().await;
    assert_eq!(h.fake.infra_spawns(), 2);
    assert!(!h.fake.is_alive(launcher), "the old containers are stopped");
    let status = h.status("lost");
    assert_ne!(status.infra_pid, Some(infra));
    assert!(matches!(status.containers[0].state, ContainerState::Running { .. }));
    assert_eq!(h.fake.launches("app").len(), 2);
}

// ---- logs ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_container_log_is_read_in_chunks_from_an_offset() {
    let h = harness().await;
    h.agent.create_pod(pod("web", RestartPolicy::Always, &["app", "sidecar"])).await.unwrap();
    std::fs::write(h.dir.path().join("state/pods/web/app.log"), "hello\nworld\n").unwrap();
    let read = |container: Option<&str>, offset: Option<u64>| {
        h.agent.container_log("web", &LogQuery { container: container.map(Into::into), offset, previous: false })
    };
    let all = read(Some("app"), None).unwrap();
    assert_eq!((all.text.as_str(), all.offset, all.next_offset, all.size), ("hello\nworld\n", 0, 12, 12));
    let rest = read(Some("app"), Some(6)).unwrap();
    assert_eq!((rest.text.as_str(), rest.next_offset), ("world\n", 12));
    let past = read(Some("app"), Some(99)).unwrap();
    assert_eq!((past.text.as_str(), past.offset), ("", 12), "an offset past the end reads nothing");
    assert_eq!(read(Some("sidecar"), None).unwrap().text, "", "nothing written yet");
    let field = |r: Result<LogChunk, AgentError>| match r {
        Err(AgentError::Invalid(e)) => e.field,
        other => panic!("{other:?}"),
    };
    assert_eq!(field(read(None, None)).as_deref(), Some("container"), "two containers: one must be named");
    assert_eq!(field(read(Some("db"), None)).as_deref(), Some("container"));
    assert!(matches!(h.agent.container_log("nope", &LogQuery::default()), Err(AgentError::NotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn a_restart_starts_a_new_log_and_keeps_the_last_one_as_the_previous() {
    let h = harness().await;
    h.fake.script("app", [Run::ExitsAfter(secs(5), 1)]);
    h.agent.create_pod(pod("flaky", RestartPolicy::Always, &["app"])).await.unwrap();
    let log = h.dir.path().join("state/pods/flaky/app.log");
    let read = |previous: bool| h.agent.container_log("flaky", &LogQuery { previous, ..Default::default() });
    let refused = |r: Result<LogChunk, AgentError>| match r {
        Err(AgentError::Invalid(e)) => (e.field.unwrap_or_default(), e.message),
        other => panic!("{other:?}"),
    };
    // What the first instance wrote (the fake launches write nothing themselves).
    std::fs::write(&log, "first instance\n").unwrap();
    let (field, message) = refused(read(true));
    assert_eq!(field, "previous");
    assert_eq!(message, "previous terminated container \"app\" in pod \"flaky\" not found");
    until("2 launches", || h.fake.launches("app").len() == 2).await;
    let current = read(false).unwrap();
    assert_eq!((current.text.as_str(), current.restart_count), ("", 1), "the new instance has written nothing");
    let previous = read(true).unwrap();
    assert_eq!((previous.text.as_str(), previous.restart_count), ("first instance\n", 0));
    std::fs::write(&log, "second instance\n").unwrap();
    assert_eq!(read(false).unwrap().text, "second instance\n");
    assert_eq!(read(true).unwrap().text, "first instance\n");
}
