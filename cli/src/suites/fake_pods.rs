//! The fake cluster's containers with an image, for unit tests only: a root of their own (the image's files,
//! an upper layer, the pod's /etc files, emptyDirs where `volumeMounts` say), the process's ids and
//! capabilities in `/proc/<pid>/status`, and exec probes (`test [!] -e PATH`) evaluated on that root at every
//! status read (the network handlers as the `[probe]` group's server would answer them), with the kubelet's
//! restarts and back-off. It answers the suite's `fsops` scripts inside a
//! container and on a node. Faults break one part each, so every `[container]` and `[probe]` check is seen
//! failing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use testbed_api::probe::Probe;
use testbed_api::{ContainerSpec, ContainerState, ExecResponse, PodSpec, PodStatus};

use super::conformance::{DOC_ROOT, PORT_CLOSED};
use super::fsops::{self, Found, Op};
use crate::image::oci::BUSYBOX;

/// The digest the fake's image store answers for any image.
pub const FAKE_DIGEST: &str = "sha256:00000000000000000000000000000000000000000000000000000000000000bb";
/// The fake kubelet's back-off before a second restart (the real one's 10 s, shortened for unit tests).
const BACK_OFF: Duration = Duration::from_millis(600);
/// containerd's default capability set, as `CapEff` shows it.
const DEFAULT_CAPS: u64 = 0xa804_25fb;
const CAP_NET_RAW: u64 = 1 << 13;

#[derive(Debug, Clone, Copy, Default)]
pub struct PodFaults {
    /// A container with an image sees and writes the node's files (no root of its own).
    pub node_root: bool,
    /// A container's upper layer outlives its pod: a recreated pod's container finds the old writes.
    pub upper_kept: bool,
    /// Each container gets its own copy of an emptyDir.
    pub volume_per_container: bool,
    /// The containers of a pod share one upper layer.
    pub shared_root: bool,
    /// readOnlyRootFilesystem is ignored.
    pub root_writable: bool,
    /// A read-only root makes the volumes mounted in it read-only too.
    pub volumes_follow_root: bool,
    /// The process runs as root; only an exec into the container reports the asked-for ids.
    pub user_only_in_exec: bool,
    /// Dropped capabilities stay.
    pub caps_kept: bool,
    /// An exec into a container runs as root with every capability (the agent's), whatever the container's.
    pub exec_as_root: bool,
    /// The container sees the node's /etc/hostname, /etc/hosts and /etc/resolv.conf.
    pub node_etc: bool,
    /// Failing liveness probes kill nothing.
    pub liveness_ignored: bool,
    /// Every restart is at once: no back-off, no CrashLoopBackOff.
    pub no_back_off: bool,
    /// Ready never changes from its first value.
    pub readiness_stuck: bool,
    /// Liveness is probed before the startup probe has passed.
    pub startup_ignored: bool,
    /// An httpGet probe passes on any answer, a 404 included.
    pub http_status_ignored: bool,
    /// A tcpSocket probe passes whether or not the port accepts.
    pub tcp_refusal_ignored: bool,
    /// A container naming an image the node does not have runs anyway (on the node's files).
    pub unknown_name_runs: bool,
    /// A restart appends to the container's log and keeps no previous one (the agent before logs per
    /// instance).
    pub log_appended: bool,
}

struct Ctr {
    node: String,
    spec: ContainerSpec,
    pid: u32,
    restarts: u32,
    last_state: Option<ContainerState>,
    /// Set while the container waits out the back-off.
    waiting_until: Option<Instant>,
    started: bool,
    ready: bool,
    /// Whether readiness was ever decided (`readiness_stuck` keeps the first decision).
    ready_decided: bool,
    /// What the running instance wrote, and the one before it (after a restart).
    log: String,
    previous_log: Option<String>,
}

#[derive(Default)]
pub struct Containers {
    faults: PodFaults,
    ctrs: BTreeMap<(String, String), Ctr>,
    /// Upper layers by (pod, container).
    uppers: BTreeMap<(String, String), BTreeMap<String, String>>,
    /// emptyDirs by (pod, volume[, container]).
    volumes: BTreeMap<String, BTreeMap<String, String>>,
    /// Files written on nodes: (node, path).
    node_files: BTreeMap<(String, String), String>,
    pids: BTreeMap<u32, (String, String)>,
    images: BTreeSet<String>,
    /// Pod specs and IPs, for the pod's /etc files and mounts.
    pods: BTreeMap<String, (PodSpec, String)>,
    next_pid: u32,
}

fn ok(stdout: String) -> ExecResponse {
    ExecResponse { exit_code: 0, stdout, stderr: String::new(), timed_out: false }
}

/// What a Debian node has that the busybox image has not.
fn node_default(node: &str, path: &str) -> Option<String> {
    Some(match path {
        "/etc/passwd" => "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin".into(),
        "/etc/os-release" => "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"".into(),
        "/etc/resolv.conf" => "nameserver 10.0.2.3".into(),
        "/etc/hostname" => node.into(),
        "/etc/hosts" => "127.0.0.1\tlocalhost".into(),
        "/tmp" => String::new(),
        _ => return None,
    })
}

fn image_file(path: &str) -> Option<String> {
    Some(match path {
        "/etc/passwd" => "root:x:0:0:root:/root:/bin/sh".into(),
        "/etc/group" => "root:x:0:\nnogroup:x:65534:".into(),
        "/tmp" | "/bin" | "/etc" => String::new(),
        _ => return None,
    })
}

impl Containers {
    pub fn new(faults: PodFaults) -> Self {
        Containers { faults, ..Default::default() }
    }

    pub fn add_image(&mut self, node: &str) -> String {
        self.images.insert(node.to_string());
        FAKE_DIGEST.to_string()
    }

    /// The containers of `spec` whose image is not in `node`'s store (the busybox image is, by digest and by
    /// name, once `add_image` put it there): the agent keeps them waiting as `ErrImageNeverPull` (none under
    /// `unknown_name_runs`).
    pub fn missing_images(&self, node: &str, spec: &PodSpec) -> Vec<usize> {
        let stored = |image: &str| (image == FAKE_DIGEST || image == BUSYBOX) && self.images.contains(node);
        let missing = |c: &ContainerSpec| c.image.as_deref().is_some_and(|i| !stored(i));
        let all = spec.containers.iter().enumerate().filter(|(_, c)| missing(c)).map(|(i, _)| i);
        all.filter(|_| !self.faults.unknown_name_runs).collect()
    }

    /// Takes over the pod's containers with an image; fills in what the status shows of them.
    pub fn created(&mut self, node: &str, spec: &PodSpec, status: &mut PodStatus) {
        if spec.containers.iter().all(|c| c.image.is_none()) {
            return;
        }
        let ip = status.ip.map(|i| i.to_string()).unwrap_or_default();
        self.pods.insert(spec.name.clone(), (spec.clone(), ip));
        for (c, st) in spec.containers.iter().zip(&status.containers) {
            let ContainerState::Running { pid } = st.state else { continue };
            self.pids.insert(pid, (spec.name.clone(), c.name.clone()));
            let ctr = Ctr {
                node: node.into(),
                spec: c.clone(),
                pid,
                restarts: 0,
                last_state: None,
                waiting_until: None,
                started: c.probes.startup_probe.is_none(),
                ready: false,
                ready_decided: false,
                log: String::new(),
                previous_log: None,
            };
            self.ctrs.insert((spec.name.clone(), c.name.clone()), ctr);
            self.start(&spec.name, &c.name);
        }
        self.refresh(status);
    }

    /// What a container's start does beyond running: the `[probe]` pod that says which instance it is
    /// writes that to its log; the `[container]` pod's ping leaves its outcome.
    fn start(&mut self, pod: &str, name: &str) {
        let Some(ctr) = self.ctrs.get_mut(&(pod.to_string(), name.to_string())) else { return };
        if ctr.spec.command.last().is_some_and(|c| c.contains(super::conformance::INSTANCE_MARKER)) {
            ctr.log += &format!("{} {}\n", super::conformance::INSTANCE_MARKER, ctr.pid);
        }
        if ctr.spec.command.last().map(String::as_str) != Some(super::conformance::PING_SCRIPT) {
            return;
        }
        let dropped = ctr.spec.security_context.as_ref().and_then(|s| s.capabilities.as_ref());
        let raw = self.faults.caps_kept || !dropped.is_some_and(|c| c.drop.iter().any(|d| d == "NET_RAW"));
        let text = if raw {
            "PING 127.0.0.1 (127.0.0.1): 56 data bytes\n1 packets transmitted, 1 packets received\nexit=0"
        } else {
            "PING 127.0.0.1 (127.0.0.1): 56 data bytes\nping: permission denied (are you root?)\nexit=1"
        };
        let _ = self.write(pod, name, "/shared/ping", text);
    }

    /// A container's log as the agent answers it: the running instance's, or the one before its last
    /// restart; None for a container this fake does not run, Err(message) as the agent's 400.
    pub fn log(&self, pod: &str, name: &str, previous: bool) -> Option<Result<(String, u32), String>> {
        let ctr = self.ctrs.get(&(pod.to_string(), name.to_string()))?;
        Some(match (previous, &ctr.previous_log) {
            (false, _) => Ok((ctr.log.clone(), ctr.restarts)),
            (true, Some(log)) => Ok((log.clone(), ctr.restarts - 1)),
            (true, None) => Err(format!("previous terminated container \"{name}\" in pod \"{pod}\" not found")),
        })
    }

    pub fn deleted(&mut self, pod: &str) {
        self.pods.remove(pod);
        self.ctrs.retain(|(p, _), _| p != pod);
        if !self.faults.upper_kept {
            self.uppers.retain(|(p, _), _| p != pod);
        }
        self.volumes.retain(|k, _| !k.starts_with(&format!("{pod}/")));
    }

    fn upper_key(&self, pod: &str, name: &str) -> (String, String) {
        (pod.to_string(), if self.faults.shared_root { String::new() } else { name.to_string() })
    }

    /// The emptyDir mounted at the start of `path` in the container, and the path inside it.
    fn volume_of(&self, pod: &str, name: &str, path: &str) -> Option<(String, String)> {
        let (spec, _) = self.pods.get(pod)?;
        let c = spec.containers.iter().find(|c| c.name == name)?;
        c.volume_mounts.iter().find_map(|m| {
            let rest = path.strip_prefix(&m.mount_path)?.strip_prefix('/')?;
            let key = if self.faults.volume_per_container {
                format!("{pod}/{}/{name}", m.name)
            } else {
                format!("{pod}/{}", m.name)
            };
            Some((key, rest.to_string()))
        })
    }

    /// `/proc/<pid>/status` of the container's process; `inside`: as an exec into it reads it.
    fn proc_status(&self, ctr: &Ctr, inside: bool) -> String {
        let sc = ctr.spec.security_context.clone().unwrap_or_default();
        let as_asked = inside || !self.faults.user_only_in_exec;
        let uid = if as_asked { sc.run_as_user.unwrap_or(0) } else { 0 };
        let gid = if as_asked { sc.run_as_group.unwrap_or(0) } else { 0 };
        let dropped = sc.capabilities.is_some_and(|c| c.drop.iter().any(|d| d == "NET_RAW"));
        let caps = if dropped && !self.faults.caps_kept { DEFAULT_CAPS & !CAP_NET_RAW } else { DEFAULT_CAPS };
        format!(
            "Name:\tsleep\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{gid}\t{gid}\t{gid}\t{gid}\nCapBnd:\t{caps:016x}\n\
             CapEff:\t{caps:016x}"
        )
    }

    /// `/proc/self/status` of an exec into the container: the container's process's ids and sets (none
    /// effective for a user other than root, as the kernel leaves them after exec).
    fn exec_status(&self, ctr: &Ctr) -> String {
        if self.faults.exec_as_root {
            let all: u64 = (1 << 41) - 1;
            return format!("Name:\tcat\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapBnd:\t{all:016x}\nCapEff:\t{all:016x}");
        }
        let status = self.proc_status(ctr, true);
        let root = ctr.spec.security_context.as_ref().and_then(|s| s.run_as_user).unwrap_or(0) == 0;
        status
            .lines()
            .map(|l| {
                if l.starts_with("CapEff:") && !root {
                    "CapEff:\t0000000000000000".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn read(&self, pod: &str, name: &str, path: &str) -> Option<String> {
        let key = (pod.to_string(), name.to_string());
        let ctr = self.ctrs.get(&key)?;
        if let Some((vol, rest)) = self.volume_of(pod, name, path) {
            return self.volumes.get(&vol)?.get(&rest).cloned();
        }
        if self.faults.node_root {
            return self.node_read(&ctr.node, path);
        }
        if path == "/proc/1/status" {
            return Some(self.proc_status(ctr, true));
        }
        if path == "/proc/self/status" {
            return Some(self.exec_status(ctr));
        }
        let (spec, ip) = self.pods.get(pod)?;
        match path {
            "/etc/hostname" | "/etc/hosts" | "/etc/resolv.conf" if self.faults.node_etc => {
                return self.node_read(&ctr.node, path)
            }
            "/etc/hostname" => return Some(spec.name.clone()),
            "/etc/hosts" => {
                return Some(format!(
                    "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost \
                     ip6-loopback\n{ip}\t{}",
                    spec.name
                ))
            }
            "/etc/resolv.conf" => return self.node_read(&ctr.node, path),
            _ => {}
        }
        let upper = self.uppers.get(&self.upper_key(pod, name));
        upper.and_then(|u| u.get(path).cloned()).or_else(|| image_file(path))
    }

    fn write(&mut self, pod: &str, name: &str, path: &str, text: &str) -> Found {
        let Some(ctr) = self.ctrs.get(&(pod.to_string(), name.to_string())) else { return Found::Refused };
        let read_only = ctr.spec.security_context.as_ref().and_then(|s| s.read_only_root_filesystem) == Some(true);
        let read_only = read_only && !self.faults.root_writable;
        if let Some((vol, rest)) = self.volume_of(pod, name, path) {
            if read_only && self.faults.volumes_follow_root {
                return Found::Refused;
            }
            self.volumes.entry(vol).or_default().insert(rest, text.to_string());
            return Found::Wrote;
        }
        if read_only {
            return Found::Refused;
        }
        if self.faults.node_root {
            let node = ctr.node.clone();
            self.node_files.insert((node, path.to_string()), text.to_string());
            return Found::Wrote;
        }
        let key = self.upper_key(pod, name);
        self.uppers.entry(key).or_default().insert(path.to_string(), text.to_string());
        Found::Wrote
    }

    fn remove(&mut self, pod: &str, name: &str, path: &str) {
        if let Some((vol, rest)) = self.volume_of(pod, name, path) {
            self.volumes.entry(vol).or_default().remove(&rest);
        } else {
            let key = self.upper_key(pod, name);
            self.uppers.entry(key).or_default().remove(path);
        }
    }

    fn node_read(&self, node: &str, path: &str) -> Option<String> {
        self.node_files.get(&(node.to_string(), path.to_string())).cloned().or_else(|| node_default(node, path))
    }

    /// The container a node path reaches: `/proc/<pid>/root<rest>` or `/proc/<pid>/status`.
    fn via_proc(&self, path: &str) -> Option<((String, String), String)> {
        let rest = path.strip_prefix("/proc/")?;
        let (pid, rest) = rest.split_once('/')?;
        let who = self.pids.get(&pid.parse().ok()?)?.clone();
        Some((who, format!("/{rest}")))
    }

    /// Answers a `fsops` script run in `container` of `pod`.
    pub fn exec(&mut self, pod: &str, container: Option<&str>, script: &str) -> Option<ExecResponse> {
        let name = container?;
        if !self.ctrs.contains_key(&(pod.to_string(), name.to_string())) {
            return None;
        }
        let ops = fsops::parse_script(script)?;
        let answers: Vec<(&Op, Found)> = ops.iter().map(|op| (op, self.apply(pod, name, op))).collect();
        Some(ok(fsops::render_output(&answers)))
    }

    fn apply(&mut self, pod: &str, name: &str, op: &Op) -> Found {
        match op {
            Op::Write { path, text } => self.write(pod, name, path, text),
            Op::Remove { path } => {
                self.remove(pod, name, path);
                Found::Removed
            }
            Op::Read { path } => self.read(pod, name, path).map_or(Found::Absent, Found::Present),
        }
    }

    /// Answers a `fsops` script run on `node`.
    pub fn node_exec(&mut self, node: &str, script: &str) -> Option<ExecResponse> {
        let ops = fsops::parse_script(script)?;
        let mut answers = Vec::new();
        for op in &ops {
            let path = match op {
                Op::Write { path, .. } | Op::Remove { path } | Op::Read { path } => path,
            };
            let found = match self.via_proc(path) {
                Some(((pod, name), rest)) if rest == "/status" => {
                    let ctr = self.ctrs.get(&(pod, name));
                    ctr.map_or(Found::Absent, |c| Found::Present(self.proc_status(c, false)))
                }
                Some(((pod, name), rest)) => match rest.strip_prefix("/root") {
                    Some(inner) => self.apply(&pod, &name, &retarget(op, inner)),
                    None => Found::Absent,
                },
                None => match op {
                    Op::Write { path, text } => {
                        self.node_files.insert((node.into(), path.clone()), text.clone());
                        Found::Wrote
                    }
                    Op::Remove { path } => {
                        self.node_files.remove(&(node.into(), path.clone()));
                        Found::Removed
                    }
                    Op::Read { path } => self.node_read(node, path).map_or(Found::Absent, Found::Present),
                },
            };
            answers.push((op, found));
        }
        Some(ok(fsops::render_output(&answers)))
    }
}

/// `op` on another path.
fn retarget(op: &Op, path: &str) -> Op {
    match op {
        Op::Write { text, .. } => Op::write(path, text),
        Op::Remove { .. } => Op::remove(path),
        Op::Read { .. } => Op::read(path),
    }
}

/// `test -e P` / `test ! -e P` of an exec probe; None for any other handler.
fn probe_file(p: &Probe) -> Option<(bool, &str)> {
    match p.exec.as_ref()?.command.as_slice() {
        [t, e, path] if t == "test" && e == "-e" => Some((true, path)),
        [t, n, e, path] if t == "test" && n == "!" && e == "-e" => Some((false, path)),
        _ => None,
    }
}

impl Containers {
    /// An exec probe tests its file; the network handlers ask the `[probe]` group's server, which serves
    /// DOC_ROOT until PORT_CLOSED exists.
    fn passes(&self, pod: &str, name: &str, probe: &Probe) -> bool {
        let exists = |path: &str| self.read(pod, name, path).is_some();
        if let Some((want, path)) = probe_file(probe) {
            return exists(path) == want;
        }
        let serving = !exists(PORT_CLOSED);
        if probe.tcp_socket.is_some() {
            return serving || self.faults.tcp_refusal_ignored;
        }
        probe.http_get.as_ref().is_some_and(|get| {
            let found = exists(&format!("{DOC_ROOT}{}", get.path.as_deref().unwrap_or("/")));
            serving && (found || self.faults.http_status_ignored)
        })
    }

    /// One round of every container's probes (each status read is a probe period), then the status.
    pub fn refresh(&mut self, status: &mut PodStatus) {
        let pod = status.name.clone();
        if !self.pods.contains_key(&pod) {
            return;
        }
        for st in &mut status.containers {
            let key = (pod.clone(), st.name.clone());
            let Some(ctr) = self.ctrs.get(&key) else { continue };
            if ctr.waiting_until.is_some_and(|t| Instant::now() >= t) {
                self.restart(&key);
            }
            let ctr = &self.ctrs[&key];
            let probes = ctr.spec.probes.clone();
            let running = ctr.waiting_until.is_none();
            if running && !ctr.started {
                let passed = probes.startup_probe.as_ref().is_some_and(|p| self.passes(&pod, &st.name, p));
                self.ctrs.get_mut(&key).into_iter().for_each(|c| c.started = passed);
            }
            let gated = !self.ctrs[&key].started && !self.faults.startup_ignored;
            if running && !gated && !self.faults.liveness_ignored {
                if let Some(live) = &probes.liveness_probe {
                    if !self.passes(&pod, &st.name, live) {
                        self.kill(&key);
                    }
                }
            }
            let ctr = &self.ctrs[&key];
            let ready_now = ctr.waiting_until.is_none()
                && ctr.started
                && probes.readiness_probe.as_ref().is_none_or(|p| self.passes(&pod, &st.name, p));
            let ctr = self.ctrs.get_mut(&key).expect("present");
            if !(self.faults.readiness_stuck && ctr.ready_decided) {
                ctr.ready = ready_now;
                ctr.ready_decided = true;
            }
            st.restart_count = ctr.restarts;
            st.last_state = ctr.last_state.clone();
            st.started = ctr.started && ctr.waiting_until.is_none();
            st.ready = ctr.ready;
            st.state = match ctr.waiting_until {
                Some(_) => ContainerState::Waiting { reason: "CrashLoopBackOff".into() },
                None => ContainerState::Running { pid: ctr.pid },
            };
        }
    }

    /// A liveness failure: killed; restarted at once the first time, after the back-off every later time.
    fn kill(&mut self, key: &(String, String)) {
        let no_back_off = self.faults.no_back_off;
        let Some(ctr) = self.ctrs.get_mut(key) else { return };
        ctr.last_state = Some(ContainerState::Terminated { exit_code: 137, reason: "Error".into() });
        if ctr.restarts == 0 || no_back_off {
            self.restart(key);
        } else {
            ctr.waiting_until = Some(Instant::now() + BACK_OFF);
        }
    }

    /// A new process from the image: a fresh upper layer.
    fn restart(&mut self, key: &(String, String)) {
        self.next_pid += 1;
        let pid = 50_000 + self.next_pid;
        let upper = self.upper_key(&key.0, &key.1);
        self.uppers.remove(&upper);
        let Some(ctr) = self.ctrs.get_mut(key) else { return };
        ctr.restarts += 1;
        ctr.previous_log = match self.faults.log_appended {
            true => None,
            false => Some(std::mem::take(&mut ctr.log)),
        };
        ctr.waiting_until = None;
        ctr.pid = pid;
        ctr.started = ctr.spec.probes.startup_probe.is_none();
        self.pids.insert(pid, key.clone());
        let (pod, name) = key.clone();
        self.start(&pod, &name);
    }
}
