//! Probes on this host's kernel: the agent binary runs exec probes in a real container and HTTP probes
//! against a real pod IP (a `busybox httpd` in the pod), kills a container whose liveness probe fails and
//! backs its restarts off as the kubelet does. In a network namespace of the test, like runtime_real.rs.
//! Skipped unless root (the CI runs it as root).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod test_agent;

use test_agent::TestAgent;
use testbed_test_support::agent_http::request as http;

/// Polls the pod until `done` holds (or panics after `secs`).
fn wait_pod(name: &str, secs: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (_, st) = http("GET", &format!("/v1/pods/{name}"), None);
        if done(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "pod {name}: not {what} within {secs} s: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn every_second(handler: Value, failures: u32) -> Value {
    let mut probe = json!({"periodSeconds": 1, "failureThreshold": failures, "terminationGracePeriodSeconds": 1});
    probe.as_object_mut().unwrap().extend(handler.as_object().unwrap().clone());
    probe
}

#[test]
fn exec_and_http_probes_set_readiness_and_liveness_restarts_with_back_off() {
    testbed_test_support::require_root!();
    let agent = TestAgent::start("probes", &["--kill-grace-secs", "30"]);
    agent.apply_node();
    let dir = tempfile::tempdir().unwrap();
    let (ready, wedged) = (dir.path().join("ready"), dir.path().join("wedged"));
    let test_f = |f: &std::path::Path, negate: bool| {
        let mut cmd = vec!["test"];
        if negate {
            cmd.push("!");
        }
        cmd.extend(["-f", f.to_str().unwrap()]);
        json!({"exec": {"command": cmd}})
    };
    // `sleep` as PID 1 of its PID namespace ignores SIGTERM: the probe's 1 s grace ends in SIGKILL.
    let pod = json!({"name": "probed", "containers": [{
        "name": "c", "command": ["sleep", "1000"],
        "probes": {"readinessProbe": every_second(test_f(&ready, false), 1),
                   "livenessProbe": every_second(test_f(&wedged, true), 2)}}]});
    let (code, body) = http("POST", "/v1/pods", Some(pod));
    assert_eq!(code, 201, "{body}");
    let c = |st: &Value, field: &str| st["containers"][0][field].clone();
    std::thread::sleep(Duration::from_secs(2));
    let st = wait_pod("probed", 1, "running", |st| c(st, "state")["state"] == "running");
    assert_eq!(c(&st, "ready"), false, "not ready before the readiness probe passed: {st}");

    std::fs::write(&ready, "").unwrap();
    wait_pod("probed", 5, "ready", |st| c(st, "ready") == true);
    std::fs::remove_file(&ready).unwrap();
    wait_pod("probed", 5, "unready", |st| c(st, "ready") == false);

    // Wedged: two failures (1-2 s), 1 s of grace, killed (137); restarted at once, killed again, and then
    // held back 10 s as CrashLoopBackOff.
    std::fs::write(&wedged, "").unwrap();
    let wedged_at = Instant::now();
    let st = wait_pod("probed", 15, "in CrashLoopBackOff", |st| c(st, "state")["reason"] == "CrashLoopBackOff");
    assert_eq!(c(&st, "restart_count"), 1, "{st}");
    assert_eq!(c(&st, "last_state"), json!({"state": "terminated", "exit_code": 137, "reason": "Error"}), "{st}");
    let backing_off = Instant::now();
    std::fs::remove_file(&wedged).unwrap();
    // The count grows when the back-off ends, a moment before the new container runs: wait for both.
    let st = wait_pod("probed", 15, "restarted after the back-off", |st| {
        c(st, "restart_count") == 2 && c(st, "state")["state"] == "running"
    });
    let held = backing_off.elapsed();
    assert!(
        held >= Duration::from_secs(7),
        "the 10 s back-off held it only {held:?} (wedged {:?} before)",
        backing_off - wedged_at
    );
    assert_eq!(c(&st, "state")["state"], "running", "{st}");
    std::thread::sleep(Duration::from_secs(4));
    let st = wait_pod("probed", 1, "still running", |st| c(st, "restart_count") == 2);
    assert_eq!(c(&st, "state")["state"], "running", "healthy again: no more kills: {st}");

    // httpGet from the agent to the pod IP: ready while the server answers 200, not on a 404.
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "ok").unwrap();
    let http_get = |path: &str| json!({"httpGet": {"path": path, "port": 8080}});
    let web = |name: &str, path: &str| {
        json!({"name": name, "containers": [{
            "name": "httpd", "command": ["busybox", "httpd", "-f", "-p", "8080", "-h", www.path().to_str().unwrap()],
            "probes": {"readinessProbe": every_second(http_get(path), 1)}}]})
    };
    for (name, path) in [("served", "/index.html"), ("missing", "/absent")] {
        let (code, body) = http("POST", "/v1/pods", Some(web(name, path)));
        assert_eq!(code, 201, "{body}");
    }
    wait_pod("served", 10, "ready", |st| c(st, "ready") == true);
    std::thread::sleep(Duration::from_secs(2));
    let st = wait_pod("missing", 1, "running", |st| c(st, "state")["state"] == "running");
    assert_eq!(c(&st, "ready"), false, "a 404 is not ready: {st}");
    drop(agent);
}
