//! The container reaper on this host's kernel (agent/src/pod/reaper.rs): a container's launcher execs a
//! tiny reaper once the container runs, and everything that went through the launcher still works through
//! it. Its exit status reaches the exit file and the agent when the agent is restarted between the
//! container's start and its exit (whether the container ends while no agent runs or after the new agent has
//! adopted it), and a deleted pod's SIGTERM reaches the container. Root only. As in runtime_real.rs, the test
//! thread unshares a network namespace of its own (the agent inherits it) and cgroups go to a private subtree.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testbed_test_support::agent_http::request as http;

mod test_agent;

use test_agent::TestAgent;

fn wait_for(what: &str, secs: u64, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !matches!(s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()), Some('Z') | None))
        .unwrap_or(false)
}

/// Creates a pod of one container `c` running `sh -c script` and returns the container's PID, after checking
/// that its parent is the reaper, recognisable as the pod's launcher by its argv.
fn create(name: &str, policy: &str, script: &str) -> u64 {
    let spec =
        json!({"name": name, "restart_policy": policy, "containers": [{"name": "c", "command": ["sh", "-c", script]}]});
    let (code, st) = http("POST", "/v1/pods", Some(spec));
    assert_eq!(code, 201, "{st}");
    let pid = st["containers"][0]["state"]["pid"].as_u64().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().to_string();
    // The launcher reports the PID, then execs the reaper.
    let exe = || std::fs::read_link(format!("/proc/{ppid}/exe")).unwrap_or_default();
    wait_for(&format!("the launcher of {name} to become the reaper"), 5, || {
        exe().to_string_lossy().contains("memfd:tb-reaper")
    });
    let argv = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap();
    let want = format!("run-container\0--pod\0{name}\0--container\0c\0");
    assert!(argv.windows(want.len()).any(|w| w == want.as_bytes()), "{}", String::from_utf8_lossy(&argv));
    pid
}

fn wait_pod(name: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_for(&format!("pod {name}"), 20, || done(&http("GET", &format!("/v1/pods/{name}"), None).1));
    http("GET", &format!("/v1/pods/{name}"), None).1
}

/// A container that exits with `code` once `go` exists.
fn exit_on(go: &Path, code: i32) -> String {
    format!("while [ ! -e {} ]; do sleep 0.05; done; exit {code}", go.display())
}

#[test]
fn exit_status_reaches_the_agent_across_an_agent_restart() {
    testbed_test_support::require_root!();
    let mut agent = TestAgent::start("reaper", &[]);
    agent.apply_node();
    let dir = tempfile::tempdir().unwrap();
    let (go_down, go_adopted) = (dir.path().join("down"), dir.path().join("adopted"));
    let down = create("down", "Never", &exit_on(&go_down, 7));
    let adopted = create("adopted", "Never", &exit_on(&go_adopted, 9));

    // Ends while no agent runs: only the reaper is there to write the status.
    agent.kill();
    std::fs::write(&go_down, "").unwrap();
    wait_for("the container of `down` to exit", 10, || !alive(down));
    let exit_file = agent.state_dir.path().join("pods/down/c.exit");
    wait_for("the reaper to write the exit file", 10, || exit_file.exists());
    assert_eq!(std::fs::read_to_string(&exit_file).unwrap(), "7\n");
    agent.spawn();
    let st = wait_pod("down", |s| s["phase"] == "Failed");
    assert_eq!(st["containers"][0]["state"]["exit_code"], 7, "{st}");

    // Ends after the new agent adopted its reaper (not its child: it polls it, then reads the exit file).
    assert!(alive(adopted));
    std::fs::write(&go_adopted, "").unwrap();
    let st = wait_pod("adopted", |s| s["phase"] == "Failed");
    assert_eq!(st["containers"][0]["state"]["exit_code"], 9, "{st}");
}

#[test]
fn a_deleted_pods_sigterm_reaches_the_container_through_the_reaper() {
    testbed_test_support::require_root!();
    let mut agent = TestAgent::start("reaperterm", &[]);
    agent.apply_node();
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("term");
    // PID 1 of its PID namespace: the signal is delivered only because the container handles it.
    let pid = create(
        "t",
        "Always",
        &format!("trap 'echo term > {}; exit 0' TERM; while :; do sleep 0.1; done", mark.display()),
    );
    // Through an adopted reaper: the new agent must recognise it to signal it.
    agent.kill();
    agent.spawn();
    wait_pod("t", |s| s["containers"][0]["state"]["state"] == "running");
    let t = Instant::now();
    assert_eq!(http("DELETE", "/v1/pods/t?grace_period_secs=20", None).0, 204);
    assert!(t.elapsed() < Duration::from_secs(10), "the container ignored SIGTERM: it took {:?}", t.elapsed());
    assert_eq!(std::fs::read_to_string(&mark).unwrap_or_default(), "term\n");
    assert!(!alive(pid));
}
