//! One running lab seen from an end-to-end test that kills, freezes and resumes its nodes: `testbed` with
//! the test's state directory, kubectl with the lab's kubeconfig, a node's QEMU by its PID (checked before
//! anyone signals it), and what a node's kernel and agent hold of one pod.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kubectl::Kubectl;
use crate::lab::show;

pub struct VmLab {
    /// The test's `env!("CARGO_BIN_EXE_testbed")`.
    pub binary: PathBuf,
    pub state_dir: PathBuf,
    pub lab: String,
}

/// What a node holds of one node pod: processes that carry its name (its infra process and containers),
/// whether its agent lists it, and whether its host veth and its cgroup directory exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTrace {
    pub processes: usize,
    pub listed: bool,
    pub veth: bool,
    pub cgroup: bool,
}

impl PodTrace {
    pub fn is_gone(&self) -> bool {
        *self == PodTrace { processes: 0, listed: false, veth: false, cgroup: false }
    }
}

impl VmLab {
    pub fn testbed(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.env("TESTBED_STATE_DIR", &self.state_dir);
        c
    }

    /// `up` of `topo`, which must succeed.
    pub fn up(&self, topo: &Path) {
        let started = Instant::now();
        let out = self.testbed().arg("up").arg(topo).output().expect("run up");
        assert!(out.status.success(), "{}", show("up", &out));
        eprintln!("up: {:.1} s", started.elapsed().as_secs_f64());
    }

    /// kubectl with the lab's kubeconfig, its discovery cache beside the state directory.
    pub fn kubectl(&self) -> Kubectl {
        let cache = self.state_dir.parent().unwrap_or(&self.state_dir).join("kube-cache");
        Kubectl::new(&self.state_dir.join(&self.lab).join("kubeconfig"), &cache)
    }

    /// `testbed exec` of `script` on `node`, which must succeed; its stdout.
    pub fn exec(&self, node: &str, script: &str) -> String {
        let out = self.testbed().args(["exec", "--lab", &self.lab, node, "--", script]).output().expect("exec");
        assert!(out.status.success(), "{}", show(&format!("exec on {node}"), &out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl's stdout once it succeeds, tried again until `limit` has passed since `since`. None when it
    /// never succeeded (the last failure is printed).
    pub fn kubectl_until(&self, args: &[&str], since: Instant, limit: Duration) -> Option<String> {
        loop {
            let out = self.kubectl().run(args, None);
            if out.status.success() {
                return Some(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            if since.elapsed() > limit {
                eprintln!("{}", show(&format!("kubectl {}", args.join(" ")), &out));
                return None;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The status of node `node`'s Ready condition (`True`; `Unknown` once the node lifecycle controller
    /// has given up on it). The API server serves no Tables, so kubectl's `get node` has no STATUS column.
    pub fn node_ready(&self, node: &str, since: Instant, limit: Duration) -> Option<String> {
        let ready = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
        self.kubectl_until(&["get", "node", node, "-o", ready], since, limit).map(|s| s.trim().to_string())
    }

    /// Node `node`'s agent's pods (`GET /v1/pods`).
    pub fn agent_pods(&self, node: &str) -> Vec<serde_json::Value> {
        let text = self.exec(node, "busybox wget -q -O- http://127.0.0.1:7070/v1/pods");
        let pods: serde_json::Value =
            serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{node}'s agent pod list `{text}`: {e}"));
        pods.as_array().cloned().unwrap_or_else(|| panic!("{node}'s agent pod list is not an array: {text}"))
    }

    /// What node `node` holds of node pod `node_pod`, whose host veth is `veth` and cgroup directory
    /// `cgroup` (as its agent reported them while it ran).
    pub fn pod_trace(&self, node: &str, node_pod: &str, veth: &str, cgroup: &str) -> PodTrace {
        // A bracketed first character: the pattern does not match grep's own command line.
        // The cgroup directory, which carries the name too, as a glob of the same kind (it matches the
        // directory, and this script's command line no longer carries the name).
        let pattern = format!("[{}]{}", &node_pod[..1], &node_pod[1..]);
        let cgroup = cgroup.replace(node_pod, &pattern);
        let script = format!(
            "echo processes=$(grep -l -e '{pattern}' /proc/[0-9]*/cmdline 2>/dev/null | wc -l)\n\
             if ip link show '{veth}' >/dev/null 2>&1; then echo veth=1; else echo veth=0; fi\n\
             if ls -d {cgroup} >/dev/null 2>&1; then echo cgroup=1; else echo cgroup=0; fi"
        );
        let text = self.exec(node, &script);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{node}: no {name}= in `{text}`"))
        };
        let listed = self.agent_pods(node).iter().any(|p| p["name"] == node_pod);
        PodTrace { processes: field("processes"), listed, veth: field("veth") == 1, cgroup: field("cgroup") == 1 }
    }

    /// The PID of node `node`'s QEMU from the lab's state.json, checked to be that QEMU before anyone
    /// signals it.
    pub fn qemu_pid(&self, node: &str) -> u32 {
        let path = self.state_dir.join(&self.lab).join("state.json");
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("state.json")).expect("state.json is JSON");
        let pid = state["nodes"][node]["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("the node's pid");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the node's QEMU runs");
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let vm = format!("tb-{}-{node},", self.lab);
        assert!(
            args.first().is_some_and(|a| a.contains("qemu-system")) && args.iter().any(|a| a.starts_with(&vm)),
            "pid {pid} is not {node}'s QEMU: {args:?}"
        );
        pid
    }

    /// Stops control-plane service `service` (`etcd`, `controller-manager`) on `node` until
    /// `start_service`: without its .cmd file testbed-service leaves it stopped. `signal` is the one it gets
    /// (the controller manager releases its leader Lease on `INT`). It may take seconds to exit under load:
    /// waited for up to 15 s.
    pub fn stop_service(&self, node: &str, service: &str, signal: &str) {
        let script = format!(
            "set -e; mv /etc/testbed/{service}.cmd /etc/testbed/{service}.cmd.off; \
             pid=$(cat /run/testbed-{service}.pid); kill -{signal} $pid; \
             i=0; while [ -d /proc/$pid ]; do [ $i -lt 30 ] || exit 1; i=$((i+1)); sleep 0.5; done"
        );
        self.exec(node, &script);
    }

    /// Lets testbed-service start `service` on `node` again (within its 1 s loop).
    pub fn start_service(&self, node: &str, service: &str) {
        self.exec(node, &format!("mv /etc/testbed/{service}.cmd.off /etc/testbed/{service}.cmd"));
    }

    /// The last `lines` lines of node `node`'s agent log that match `pattern` (a grep regex).
    pub fn agent_log(&self, node: &str, pattern: &str, lines: usize) -> String {
        self.exec(node, &format!("grep -e '{pattern}' /var/log/testbed-agent.log | tail -n {lines}; true"))
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`) to node `node`'s QEMU.
    pub fn signal_node(&self, node: &str, signal: &str) {
        let pid = self.qemu_pid(node);
        let out = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).output().expect("kill");
        assert!(out.status.success(), "{}", show(&format!("kill -{signal} {node}'s QEMU ({pid})"), &out));
    }
}

/// Polls `probe` until it returns Some or `limit` has passed since `since`; returns its value and the
/// seconds since `since`, or None at the limit.
pub fn poll<T>(since: Instant, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<(T, f64)> {
    loop {
        if let Some(v) = probe() {
            return Some((v, since.elapsed().as_secs_f64()));
        }
        if since.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
