//! The `probe` group: liveness, readiness and startup probes as the kubelet runs them, seen through the pod
//! status the agent reports. Each test pod is one busybox container whose exec probe tests for a file the
//! check writes or removes inside it; the container runs in the image, so a restart starts it without the
//! file again. Every probe runs each second with a threshold of one, to keep the group short under TCG; the
//! kubelet's back-off restarts at once the first time and after 10 s the second, so no check waits a third.
//! The liveness pod prints a line of its own at each start, which tells its log's instances apart. A fourth
//! pod checks the network handlers the kubelet runs from the node to the pod's IP: its container serves a
//! directory over HTTP until a file the check writes tells it to stop serving (the port closes, the process
//! lives on); readiness is an `httpGet` of a file in that directory, liveness a `tcpSocket` to the port, behind
//! a `tcpSocket` startup probe (the server takes a moment to listen under TCG).

use std::cell::Cell;
use std::time::{Duration, Instant};

use testbed_api::probe::{ExecAction, HttpGetAction, PortRef, Probe, Probes, TcpSocketAction};
use testbed_api::{ContainerSpec, ContainerState, ContainerStatus, LogQuery, PodStatus, RestartPolicy};

use super::super::cluster::{nodes_of, Cluster};
use super::super::fsops::Op;
use super::super::harness::{container, create_tracked, pod, wait_running, CreatedPods, TestPod};
use super::super::poll;
use super::super::probe::sh;
use super::super::runner::{CheckError, CheckOutcome, Level, Runner};
use super::images::{busybox_on, in_container, skip_all, Group};

pub(super) const POD_LIVE: &str = "tb-c-live";
pub(super) const POD_READY: &str = "tb-c-ready";
pub(super) const POD_START: &str = "tb-c-start";
pub(super) const POD_NET: &str = "tb-c-net";
const WEDGED: &str = "/tmp/tb-wedged";
const READY: &str = "/tmp/tb-ready";
const STARTED: &str = "/tmp/tb-started";
/// What the liveness pod's container prints at each start, followed by a random id: one line per instance.
pub const INSTANCE_MARKER: &str = "tb-instance";
/// What the network probes' pod serves over HTTP on NET_PORT.
pub const DOC_ROOT: &str = "/tmp/tb-www";
/// The file readiness asks for: 200 while it exists in DOC_ROOT, 404 once removed.
const SERVED: &str = "/ready";
/// Once this file exists the network probes' pod stops its server: the port closes, the container lives on.
pub const PORT_CLOSED: &str = "/tmp/tb-closed";
const NET_PORT: i32 = 8080;
/// How long a probe's effect may take to show: a 1 s period, a 1 s grace, an exec under TCG.
const WITHIN: Duration = Duration::from_secs(if cfg!(test) { 2 } else { 20 });
/// The kubelet's back-off before a second restart is 10 s; what the check requires of it (polling and the
/// kill's grace blur the edges). The fake cluster backs off for 600 ms.
const MIN_BACK_OFF: Duration = Duration::from_millis(if cfg!(test) { 300 } else { 7000 });
/// How long the startup check watches a container whose liveness probe would fail at once: longer than the
/// probe's period times its threshold plus the grace.
const STARTUP_HOLD: Duration = Duration::from_millis(if cfg!(test) { 300 } else { 4000 });

const GROUP: Group = Group {
    name: "probe",
    checks: &[
        "liveness: a wedged container is killed and restarted, its restart count grows",
        "a restarted container's log starts over; the previous instance's stays readable (logs --previous)",
        "liveness: the second restart waits out the kubelet's back-off as CrashLoopBackOff",
        "readiness flips the pod's Ready condition both ways",
        "a startup probe holds liveness off until it succeeds",
        "readiness over httpGet: a 200 makes the pod Ready, a 404 from the same server not Ready",
        "liveness over tcpSocket: a closed port gets the container restarted",
    ],
};

/// An exec probe run each second: `test [!] -e PATH`, failing after one miss.
fn file_probe(exists: bool, path: &str) -> Probe {
    let mut command = vec!["test".to_string()];
    if !exists {
        command.push("!".into());
    }
    command.extend(["-e".into(), path.into()]);
    Probe { exec: Some(ExecAction { command }), ..every_second() }
}

/// A probe's timing in this group, without its handler: each second, failing after one miss.
fn every_second() -> Probe {
    Probe {
        period_seconds: Some(1),
        // Not the default 1 s: an exec into a container on a loaded TCG host took longer, and a timeout is a
        // failure (a liveness probe then killed a healthy container).
        timeout_seconds: Some(5),
        failure_threshold: Some(1),
        termination_grace_period_seconds: Some(1),
        ..Default::default()
    }
}

fn probed(name: &str, digest: &str, probes: Probes, command: Vec<String>) -> testbed_api::PodSpec {
    let c = ContainerSpec { image: Some(digest.into()), probes, ..container("c", command) };
    pod(name, vec![c], RestartPolicy::Always)
}

/// The network probes' pod: readiness an `httpGet` of SERVED, liveness and startup a `tcpSocket` to the port.
fn net_pod(digest: &str) -> testbed_api::PodSpec {
    let tcp = || Probe { tcp_socket: Some(TcpSocketAction { port: PortRef::Number(NET_PORT) }), ..every_second() };
    let http = HttpGetAction { path: Some(SERVED.into()), port: PortRef::Number(NET_PORT) };
    let probes = Probes {
        startup_probe: Some(Probe { failure_threshold: Some(60), ..tcp() }),
        liveness_probe: Some(tcp()),
        readiness_probe: Some(Probe { http_get: Some(http), ..every_second() }),
    };
    let serve = sh(format!(
        "mkdir -p {DOC_ROOT}; httpd -f -p {NET_PORT} -h {DOC_ROOT} & while [ ! -e {PORT_CLOSED} ]; do sleep 1; done; \
         kill $!; exec sleep 3600"
    ));
    probed(POD_NET, digest, probes, serve)
}

/// The group's pods: a liveness probe that fails once WEDGED exists, a readiness probe that passes while
/// READY exists, and a startup probe waiting for STARTED in front of a liveness probe that needs it too.
fn probe_pods(digest: &str) -> [testbed_api::PodSpec; 3] {
    let live = Probes { liveness_probe: Some(file_probe(false, WEDGED)), ..Default::default() };
    let ready = Probes { readiness_probe: Some(file_probe(true, READY)), ..Default::default() };
    let start = Probes {
        startup_probe: Some(Probe { failure_threshold: Some(60), ..file_probe(true, STARTED) }),
        liveness_probe: Some(file_probe(true, STARTED)),
        ..Default::default()
    };
    let sleep = || vec!["sleep".into(), "3600".into()];
    let says_instance = sh(format!("echo {INSTANCE_MARKER} $(cat /proc/sys/kernel/random/uuid); exec sleep 3600"));
    [
        probed(POD_LIVE, digest, live, says_instance),
        probed(POD_READY, digest, ready, sleep()),
        probed(POD_START, digest, start, sleep()),
    ]
}

/// Runs the group on the first node; its pods are added to `created`.
pub(super) async fn run<C: Cluster>(c: &C, r: &mut Runner, created: &CreatedPods) {
    if !GROUP.any_selected(r) {
        return;
    }
    let Some(node) = nodes_of(c.plan()).into_iter().next().map(|n| n.name) else { return };
    let ([live, ready, start], net) = match busybox_on(c, &node).await {
        Ok(digest) => (probe_pods(&digest), net_pod(&digest)),
        Err(e) => return skip_all(r, &GROUP, &e),
    };
    // The startup check creates its own pod: it watches the container from its start.
    for spec in [&live, &ready, &net] {
        if let Err(e) = create_tracked(c, &node, spec, created).await {
            return skip_all(r, &GROUP, &CheckError::from(e));
        }
    }
    let (g, e, n, names) = (GROUP.name, Level::Error, node.as_str(), GROUP.checks);
    r.run(g, None, names[0], e, liveness(c, n)).await;
    r.run(g, None, names[1], e, log_per_instance(c, n)).await;
    r.run(g, None, names[2], e, back_off(c, n)).await;
    r.run(g, None, names[3], e, readiness(c, n)).await;
    r.run(g, None, names[4], e, startup(c, n, &start, created)).await;
    r.run(g, None, names[5], e, http_readiness(c, n)).await;
    r.run(g, None, names[6], e, tcp_liveness(c, n)).await;
}

fn only(st: &PodStatus) -> Result<&ContainerStatus, CheckError> {
    st.containers.first().ok_or_else(|| CheckError::Fail(format!("pod {} reports no container", st.name)))
}

fn running_pid(c: &ContainerStatus) -> Option<u32> {
    match c.state {
        ContainerState::Running { pid } => Some(pid),
        _ => None,
    }
}

fn brief(c: &ContainerStatus) -> String {
    format!(
        "state {:?}, restart_count {}, ready {}, started {}, last_state {:?}",
        c.state, c.restart_count, c.ready, c.started, c.last_state
    )
}

/// Writes `path` in the pod's container (its root: gone when the container restarts).
async fn touch<C: Cluster>(c: &C, p: &TestPod, path: &str) -> Result<String, CheckError> {
    let seen = in_container(c, p, "c", &[Op::write(path, "x")]).await?;
    match seen.get(path)? {
        super::super::fsops::Found::Wrote => Ok(seen.evidence),
        other => Err(CheckError::Fail(format!("cannot write {path}: {other:?}\n{}", seen.evidence))),
    }
}

async fn liveness<C: Cluster>(c: &C, node: &str) -> CheckOutcome {
    let r = restart_on_file(c, node, POD_LIVE, WEDGED, "the wedged container restarted").await?;
    if !matches!(r.after.last_state, Some(ContainerState::Terminated { .. })) {
        return Err(CheckError::Fail(format!("restarted without a terminated last state: {}", brief(&r.after))));
    }
    Ok(r.evidence())
}

/// A restart that writing a file into the pod's container caused: the statuses around it and how long it took.
struct Restart {
    before: ContainerStatus,
    after: ContainerStatus,
    touched: String,
    secs: f64,
}

impl Restart {
    fn evidence(&self) -> String {
        format!("{}\nbefore: {}\nafter {:.1} s: {}", self.touched, brief(&self.before), self.secs, brief(&self.after))
    }
}

/// Writes `file` into the running `pod`'s container and waits for the container to be running again as a new
/// process with a higher restart count.
async fn restart_on_file<C: Cluster>(
    c: &C,
    node: &str,
    pod: &str,
    file: &str,
    what: &str,
) -> Result<Restart, CheckError> {
    let p = wait_running(c, node, pod).await?;
    let before = only(&p.status)?.clone();
    let touched = touch(c, &p, file).await?;
    let since = Instant::now();
    let after = poll::until(what, WITHIN, || async {
        let st = c.get_pod(node, pod).await?;
        let ct = only(&st)?.clone();
        let restarted = ct.restart_count > before.restart_count
            && running_pid(&ct).is_some_and(|pid| Some(pid) != running_pid(&before));
        Ok(restarted.then_some(ct))
    })
    .await
    .map_err(|e| match e {
        CheckError::Fail(m) => CheckError::Fail(format!("{m}; before: {}\n{touched}", brief(&before))),
        other => other,
    })?;
    Ok(Restart { before, after, touched, secs: since.elapsed().as_secs_f64() })
}

/// The instance lines of a log: one per start of the liveness pod's container that wrote into it.
fn instances(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.starts_with(INSTANCE_MARKER)).collect()
}

/// After the liveness check's restart: the log read is the running instance's alone (not appended to the
/// killed one's), and `previous` reads the killed instance's, as the kubelet keeps them.
async fn log_per_instance<C: Cluster>(c: &C, node: &str) -> CheckOutcome {
    let p = wait_running(c, node, POD_LIVE).await?;
    let st = only(&p.status)?.clone();
    if st.restart_count == 0 {
        return Err(CheckError::Fail(format!("the container should have restarted once by now: {}", brief(&st))));
    }
    let query = |previous| LogQuery { container: Some("c".into()), offset: None, previous };
    // The new instance prints its line once it runs, maybe after the status says Running.
    let current = poll::until("the running instance's line in its log", WITHIN, || async {
        let chunk = c.container_log(node, POD_LIVE, &query(false)).await?;
        Ok((!instances(&chunk.text).is_empty()).then_some(chunk))
    })
    .await?;
    let previous = c
        .container_log(node, POD_LIVE, &query(true))
        .await
        .map_err(|e| CheckError::Fail(format!("the previous instance's log: {e}")))?;
    let (now, before) = (instances(&current.text), instances(&previous.text));
    let seen = format!(
        "log (restart {}): {now:?}; previous log (restart {}): {before:?}",
        current.restart_count, previous.restart_count
    );
    if now.len() != 1 || before.len() != 1 || now == before {
        return Err(CheckError::Fail(format!("want one instance line in each, different ones: {seen}")));
    }
    if previous.restart_count + 1 != current.restart_count {
        return Err(CheckError::Fail(format!("the previous log is not the instance before the running one: {seen}")));
    }
    Ok(seen)
}

async fn back_off<C: Cluster>(c: &C, node: &str) -> CheckOutcome {
    let p = wait_running(c, node, POD_LIVE).await?;
    let before = only(&p.status)?.clone();
    // The kubelet resets its back-off only after 10 min of running: every restart after the first waits.
    if before.restart_count == 0 {
        return Err(CheckError::Fail(format!("the container should have restarted once by now: {}", brief(&before))));
    }
    let ev = touch(c, &p, WEDGED).await?;
    let backing_off: Cell<Option<Instant>> = Cell::new(None);
    let deadline = WITHIN + Duration::from_secs(if cfg!(test) { 1 } else { 15 });
    let after = poll::until("the second restart after the back-off", deadline, || async {
        let st = c.get_pod(node, POD_LIVE).await?;
        let ct = only(&st)?.clone();
        let waiting = matches!(&ct.state, ContainerState::Waiting { reason } if reason == "CrashLoopBackOff");
        if waiting && backing_off.get().is_none() {
            backing_off.set(Some(Instant::now()));
        }
        Ok((ct.restart_count > before.restart_count && running_pid(&ct).is_some()).then_some(ct))
    })
    .await?;
    let Some(since) = backing_off.get() else {
        return Err(CheckError::Fail(format!("restarted without showing CrashLoopBackOff: {}", brief(&after))));
    };
    let held = since.elapsed();
    if held < MIN_BACK_OFF {
        return Err(CheckError::Fail(format!(
            "the back-off held the container {:.1} s, not the kubelet's 10 s: {}",
            held.as_secs_f64(),
            brief(&after)
        )));
    }
    Ok(format!("{ev}\nCrashLoopBackOff for {:.1} s, then: {}", held.as_secs_f64(), brief(&after)))
}

/// The pod's Ready condition as the agent reports it: every container ready.
fn pod_ready(st: &PodStatus) -> bool {
    !st.containers.is_empty() && st.containers.iter().all(|c| c.ready)
}

async fn until_ready<C: Cluster>(c: &C, node: &str, pod: &str, want: bool) -> Result<f64, CheckError> {
    let started = Instant::now();
    let what = if want { "the pod Ready" } else { "the pod not Ready" };
    poll::until(what, WITHIN, || async {
        let st = c.get_pod(node, pod).await?;
        Ok((pod_ready(&st) == want).then_some(()))
    })
    .await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn readiness<C: Cluster>(c: &C, node: &str) -> CheckOutcome {
    let p = wait_running(c, node, POD_READY).await?;
    if pod_ready(&p.status) {
        return Err(CheckError::Fail(format!(
            "Ready before its readiness probe ever passed: {}",
            brief(only(&p.status)?)
        )));
    }
    let ev = touch(c, &p, READY).await?;
    let up = until_ready(c, node, POD_READY, true).await?;
    let removed = in_container(c, &p, "c", &[Op::remove(READY)]).await?;
    let down = until_ready(c, node, POD_READY, false).await?;
    Ok(format!("not Ready at first\n{ev}\nReady after {up:.1} s\n{}\nnot Ready after {down:.1} s", removed.evidence))
}

async fn startup<C: Cluster>(c: &C, node: &str, spec: &testbed_api::PodSpec, created: &CreatedPods) -> CheckOutcome {
    create_tracked(c, node, spec, created).await?;
    // Watched from the creation on (not through `wait_running`: a container liveness kills may never be seen
    // Running), for the hold once it runs.
    let mut running_since: Option<Instant> = None;
    let created_at = Instant::now();
    let first = loop {
        let st = c.get_pod(node, POD_START).await?;
        let ct = only(&st)?.clone();
        if created_at.elapsed() > WITHIN + STARTUP_HOLD {
            return Err(CheckError::Fail(format!("the container never ran for {STARTUP_HOLD:?}: {}", brief(&ct))));
        }
        let since = *running_since.get_or_insert_with(Instant::now);
        if running_pid(&ct).is_none() && ct.restart_count == 0 {
            running_since = None;
        }
        if ct.restart_count > 0 || ct.started {
            return Err(CheckError::Fail(format!(
                "{:.1} s after its start, before its startup probe could pass, the container has {}",
                since.elapsed().as_secs_f64(),
                brief(&ct)
            )));
        }
        if running_since.is_some_and(|t| t.elapsed() >= STARTUP_HOLD) {
            break ct;
        }
        tokio::time::sleep(Duration::from_millis(if cfg!(test) { 50 } else { 250 })).await;
    };
    let p = wait_running(c, node, POD_START).await?;
    let ev = touch(c, &p, STARTED).await?;
    let last = Cell::new(None);
    let started = poll::until("the startup probe passed", WITHIN, || async {
        let st = c.get_pod(node, POD_START).await?;
        let ct = only(&st)?.clone();
        last.set(Some(brief(&ct)));
        Ok(ct.started.then_some(ct))
    })
    .await
    .map_err(|e| match e {
        CheckError::Fail(m) => CheckError::Fail(format!("{m}: {}\n{ev}", last.take().unwrap_or_default())),
        other => other,
    })?;
    if started.restart_count > 0 {
        return Err(CheckError::Fail(format!("restarted before its startup probe passed: {}", brief(&started))));
    }
    Ok(format!(
        "running, not started and never restarted for {:.1} s: {}\n{ev}\nthen: {}",
        STARTUP_HOLD.as_secs_f64(),
        brief(&first),
        brief(&started)
    ))
}

/// The server answers 404 for SERVED until the check writes it, 200 then, 404 again once it is removed: the
/// pod is Ready only in between (a connection alone is not success; the status code decides).
async fn http_readiness<C: Cluster>(c: &C, node: &str) -> CheckOutcome {
    let p = wait_running(c, node, POD_NET).await?;
    // Started means the startup probe's tcpSocket connected: the server listens from here on.
    poll::until("the server listening (the startup probe passed)", WITHIN, || async {
        let st = c.get_pod(node, POD_NET).await?;
        Ok(only(&st)?.started.then_some(()))
    })
    .await?;
    let st = c.get_pod(node, POD_NET).await?;
    if pod_ready(&st) {
        return Err(CheckError::Fail(format!("Ready while {SERVED} answers 404: {}", brief(only(&st)?))));
    }
    let path = format!("{DOC_ROOT}{SERVED}");
    let ev = touch(c, &p, &path).await?;
    let up = until_ready(c, node, POD_NET, true).await?;
    let removed = in_container(c, &p, "c", &[Op::remove(&path)]).await?;
    let down = until_ready(c, node, POD_NET, false).await?;
    Ok(format!(
        "listening, not Ready (404)\n{ev}\nReady after {up:.1} s (200)\n{}\nnot Ready after {down:.1} s (404)",
        removed.evidence
    ))
}

/// The container stops its server (the port refuses connections) but lives on: only the tcpSocket probe can
/// tell, and the kubelet restarts the container, whose new instance serves again.
async fn tcp_liveness<C: Cluster>(c: &C, node: &str) -> CheckOutcome {
    let what = "the container restarted after its port closed";
    Ok(restart_on_file(c, node, POD_NET, PORT_CLOSED, what).await?.evidence())
}
