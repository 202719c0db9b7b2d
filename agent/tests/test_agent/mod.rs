//! The agent binary as the real-kernel tests run it: in a network namespace of the test thread's own (the
//! agent inherits it, so cni0 and the veths never appear in the host's namespace), with its cgroups in a
//! private subtree (`tbtest-<pid>-<test>`) and its state in a temporary directory; on drop every pod is
//! deleted (an agent is started again for it when a failed test left none running) and the subtree removed.

// Each test file compiles this module on its own, and not every one uses every method.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed_test_support::agent_http::{request as http, try_request as try_http};
use testbed_test_support::host::cgroup_roots;
use testbed_test_support::node_spec::loopback_node_spec;

pub struct TestAgent {
    child: Option<Child>,
    pub state_dir: tempfile::TempDir,
    cgroup_name: String,
    /// Extra `serve` arguments (`--kill-grace-secs 1`).
    args: Vec<&'static str>,
}

/// Moves the calling thread (and everything it spawns) into a fresh network namespace with `lo` up.
pub fn private_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let ok = Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip").success();
    assert!(ok, "ip link set lo up");
}

impl TestAgent {
    /// An agent for test `test`, serving once this returns (no NodeSpec applied yet).
    pub fn start(test: &str, args: &[&'static str]) -> TestAgent {
        private_netns();
        let cgroup_name = format!("tbtest-{}-{test}", std::process::id());
        let state_dir = tempfile::tempdir().expect("tempdir");
        let mut a = TestAgent { child: None, state_dir, cgroup_name, args: args.to_vec() };
        a.spawn();
        a
    }

    pub fn spawn(&mut self) {
        assert!(self.try_spawn(), "the agent did not answer /healthz");
    }

    pub fn try_spawn(&mut self) -> bool {
        let Ok(child) = Command::new(env!("CARGO_BIN_EXE_testbed-agent"))
            .arg("serve")
            .args(&self.args)
            .args(["--cgroup-name", &self.cgroup_name, "--state-dir"])
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

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the agent runs").id()
    }

    /// Kills the agent process only (pods keep running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Applies the loopback NodeSpec (cni0 and the pod subnet).
    pub fn apply_node(&self) {
        let (code, body) = http("PUT", "/v1/node", Some(serde_json::to_value(loopback_node_spec()).expect("json")));
        assert_eq!(code, 200, "{body}");
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
