//! The container reaper on this host's kernel (agent/src/pod/reaper.rs): a container's launcher execs a
//! tiny reaper once the container runs, and everything that went through the launcher still works through
//! it. Its exit status reaches the exit file and the agent when the agent is restarted between the
//! container's start and its exit (whether the container ends while no agent runs or after the new agent has
//! adopted it), and a deleted pod's SIGTERM reaches the container. Root only. As in runtime_real.rs, the test
//! thread unshares a network namespace of its own (the agent inherits it) and cgroups go to a private subtree.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testbed_test_support::agent_http::{request as http, try_request as try_http};
use testbed_test_support::host::is_root;
use testbed_test_support::node_spec::loopback_node_spec;

struct TestAgent {
    child: Option<Child>,
    state_dir: tempfile::TempDir,
    cgroup_name: String,
}

impl TestAgent {
    fn start(test: &str) -> TestAgent {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap().success());
        let cgroup_name = format!("tbtest-{}-{test}", std::process::id());
        let mut a = TestAgent { child: None, state_dir: tempfile::tempdir().unwrap(), cgroup_name };
        a.spawn();
        let (code, body) = http("PUT", "/v1/node", Some(serde_json::to_value(loopback_node_spec()).unwrap()));
        assert_eq!(code, 200, "{body}");
        a
    }

    fn spawn(&mut self) {
        assert!(self.try_spawn(), "the agent did not answer /healthz");
    }

    fn try_spawn(&mut self) -> bool {
        let Ok(child) = Command::new(env!("CARGO_BIN_EXE_testbed-agent"))
            .args(["serve", "--cgroup-name", &self.cgroup_name, "--state-dir"])
            .arg(self.state_dir.path())
            .stdin(Stdio::null())
            .spawn()
        else {
            return false;
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(try_http("GET", "/healthz", None), Ok((200, _))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Kills the agent process only (pods keep running).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // A test that failed while the agent was down leaves pods running: an agent deletes them.
        if self.child.is_some() || self.try_spawn() {
            if let Ok((200, Value::Array(pods))) = try_http("GET", "/v1/pods", None) {
                for p in pods {
                    let name = p["name"].as_str().unwrap_or("");
                    let _ = try_http("DELETE", &format!("/v1/pods/{name}?grace_period_secs=0"), None);
                }
            }
        }
        self.kill();
        for root in cgroup_roots(&self.cgroup_name) {
            let _ = std::fs::remove_dir(root);
        }
    }
}

/// Our cgroup subtree in every hierarchy (v2: one; v1: cpu, memory, pids below our own cgroup).
fn cgroup_roots(name: &str) -> Vec<PathBuf> {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return vec![PathBuf::from("/sys/fs/cgroup").join(name)];
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path_of = |ctrl: &str| {
        own.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
            ctrls.split(',').any(|x| x == ctrl).then(|| path.trim_start_matches('/').to_string())
        })
    };
    ["cpu", "memory", "pids"]
        .iter()
        .map(|c| PathBuf::from("/sys/fs/cgroup").join(c).join(path_of(c).unwrap_or_default()).join(name))
        .collect()
}

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
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut agent = TestAgent::start("reaper");
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
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut agent = TestAgent::start("reaperterm");
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
