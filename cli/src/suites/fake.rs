//! A scripted in-memory cluster for unit tests only: it answers the suite's commands the way a healthy lab
//! would (or with one injected fault), so the runner, statuses, exit codes and reports are tested without VMs.
//! Real behaviour is tested by `tests/conformance_e2e.rs` against real QEMU VMs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use testbed_api::{
    ApplyResponse, Backend, ContainerState, ContainerStatus, ExecRequest, ExecResponse, LogChunk, LogQuery,
    NetworkPolicyStatus, NodeSpec, NodeStatus, ObservedNetwork, PodPhase, PodSpec, PodStatus, QosClass,
};

use super::cluster::{Cluster, ClusterError, LabFacts, NodeExec};
use super::hostload::{self, HostCounters};
use super::overlay;
use super::probe;
use crate::plan::{ClusterPlan, ContainerImage, ImageRef, Impairment, NetworkPlan, NicPlan, NodePlan, Plan, PodPlan};

#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Pod->pod traffic is masqueraded behind the node's cni0 address.
    pub snat: bool,
    /// Every agent and SSH call fails.
    pub agent_down: bool,
    /// node1's agent reports no route to node2's pods.
    pub missing_route: bool,
    /// `ping` is not installed anywhere: the shell answers 127.
    pub ping_missing: bool,
    /// Every node keeps a flannel.1 whatever its backend (a stale device after a switch).
    pub stale_vxlan_link: bool,
    /// Re-applying an unchanged spec makes the agent change something anyway.
    pub reapply_not_idempotent: bool,
    /// The agent's overhead formula is 10 bytes short: pods and the overlay get an MTU 10 bytes too big (the
    /// underlay still fragments the encapsulated packets, so traffic flows).
    pub mtu_too_big: bool,
    /// Pings lose one echo in four.
    pub ping_loss: bool,
    /// Something else keeps the host busy (0.9 of its 2 CPUs) during every sample.
    pub busy_host: bool,
    /// iperf3 throughput swings between 0.5x and 1.5x of the usual from one run to the next.
    pub noisy_throughput: bool,
    /// The pods' eth0 has this MTU whatever the backend's pod MTU is.
    pub pod_mtu: Option<u32>,
    /// Every pod's `side` container has left the pod's network and UTS namespaces (hostname `rogue`).
    pub rogue_sidecar: bool,
    /// The agent before issue 12: an exec naming a container runs in the infra's net/UTS/IPC namespaces
    /// (and the container's PID and mount ones), whatever the container's own are.
    pub exec_joins_infra: bool,
    /// The agent before issue 12: a DELETE answers success but leaves the pod's veth on the node.
    pub leaky_teardown: bool,
    /// What the agents' following of the API leaves out.
    pub kubelet: super::fake_api::KubeletFaults,
    /// What the containers with an image get wrong.
    pub pods: super::fake_pods::PodFaults,
}

#[derive(Default)]
struct State {
    specs: BTreeMap<String, NodeSpec>,
    /// pod name -> (node, spec, status)
    pods: BTreeMap<String, (String, PodSpec, PodStatus)>,
    next_host: BTreeMap<String, u32>,
    tcp_message: Option<String>,
    /// The source address the last iperf3 client's packets carry, as its server will report it.
    iperf_peer: Option<Ipv4Addr>,
    /// Every pod ever created (to check the suite removes what it makes).
    created: Vec<String>,
    /// Reads of the host's and of the guests' CPU counters so far (each read advances the clock).
    host_reads: u64,
    guest_reads: u64,
    iperf_runs: u64,
    /// The bound of every `node_exec_bounded` call.
    node_exec_bounds: Vec<u64>,
    last_pid: u32,
    /// Which pod's infra (container None) or container each PID is.
    pids: BTreeMap<u32, (String, Option<String>)>,
    /// Veths of deleted pods still on their node (`leaky_teardown`): pod -> (node, veth).
    leftover_veths: BTreeMap<String, (String, String)>,
}

pub struct FakeCluster {
    plan: Plan,
    pub faults: Faults,
    state: RefCell<State>,
    /// The control plane, started on the first `api()`.
    api: tokio::sync::OnceCell<kube::Client>,
    /// Pods the fake kubelet runs for the API.
    api_pods: super::fake_api::ApiPods,
    /// The containers with an image: their roots, processes and probes.
    containers: RefCell<super::fake_pods::Containers>,
}

fn nic(node: usize) -> NicPlan {
    NicPlan {
        network: "underlay".into(),
        guest_interface: "eth1".into(),
        tap: format!("tbt-n{node}"),
        mac: format!("52:54:00:00:00:0{node}"),
        ip: Ipv4Addr::new(192, 168, 50, 10 + node as u8),
        prefix_len: 24,
        mtu: 1500,
    }
}

pub fn plan(nodes: usize, backend: Backend) -> Plan {
    Plan {
        version: 1,
        lab: "fake".into(),
        topology_hash: "0".repeat(64),
        netns: "tb-fake".into(),
        networks: vec![NetworkPlan {
            name: "underlay".into(),
            bridge: "tbb-fake".into(),
            cidr: "192.168.50.0/24".parse().expect("cidr"),
            mtu: 1500,
            impair: Impairment::default(),
        }],
        nodes: (1..=nodes)
            .map(|i| NodePlan {
                name: format!("node{i}"),
                index: i - 1,
                cpus: 1,
                memory_mib: 1024,
                image: ImageRef::Named("debian-12".into()),
                kernel_args: vec![],
                ssh_port: 2200 + i as u16,
                nics: vec![nic(i)],
                pod_subnet: format!("10.244.{}.0/24", i - 1).parse().expect("subnet"),
                vtep_mac: format!("0e:00:00:00:00:0{i}"),
            })
            .collect(),
        cluster: ClusterPlan {
            pod_cidr: "10.244.0.0/16".parse().expect("cidr"),
            node_subnet_prefix: 24,
            backend,
            control_plane: vec!["node1".into()],
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            node_lifecycle: Default::default(),
        },
        pods: vec![PodPlan {
            node: "node1".into(),
            spec: super::conformance::web_pod("web", false),
            images: Default::default(),
        }],
        tests: Vec::new(),
        namespaces: Vec::new(),
        deployments: Vec::new(),
        services: Vec::new(),
        network_policies: Vec::new(),
    }
}

fn ok(stdout: impl Into<String>) -> ExecResponse {
    ExecResponse { exit_code: 0, stdout: stdout.into(), stderr: String::new(), timed_out: false }
}

fn fail(stderr: &str) -> ExecResponse {
    ExecResponse { exit_code: 1, stdout: String::new(), stderr: stderr.into(), timed_out: false }
}

/// The first IPv4 address in `s` after `after`.
fn ip_after(s: &str, after: &str) -> Option<Ipv4Addr> {
    let rest = &s[s.find(after)? + after.len()..];
    rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).find_map(|t| t.parse().ok())
}

/// The destination of the suite's `ip -o route get DST && ip -o link show`.
fn route_get(script: &str) -> Option<Ipv4Addr> {
    script.contains("ip -o route get").then(|| ip_after(script, "route get ")).flatten()
}

fn inode(s: &str) -> u64 {
    s.bytes().fold(4026531840u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
}

impl FakeCluster {
    pub fn new(plan: Plan, faults: Faults) -> Self {
        let c = FakeCluster {
            plan,
            faults,
            state: RefCell::new(State::default()),
            api: tokio::sync::OnceCell::new(),
            api_pods: Default::default(),
            containers: RefCell::new(super::fake_pods::Containers::new(faults.pods)),
        };
        // The topology's own pods, as `up` would have created them.
        for p in c.plan.pods.clone() {
            c.insert_pod(&p.node, &p.spec);
        }
        c.state.borrow_mut().created.clear();
        c
    }

    /// Pods the suite created and did not remove.
    pub fn leftover_test_pods(&self) -> Vec<String> {
        self.state.borrow().pods.keys().filter(|p| p.starts_with("tb-")).cloned().collect()
    }

    /// The bound of every command run bounded on a node, in order.
    pub fn node_exec_bounds(&self) -> Vec<u64> {
        self.state.borrow().node_exec_bounds.clone()
    }

    pub fn created(&self) -> Vec<String> {
        self.state.borrow().created.clone()
    }

    pub fn backend_of(&self, node: &str) -> Option<Backend> {
        self.state.borrow().specs.get(node).map(|s| s.backend)
    }

    fn down(&self, node: &str, step: &str) -> Result<(), ClusterError> {
        if self.faults.agent_down {
            Err(ClusterError::new(node, step, "connection refused"))
        } else {
            Ok(())
        }
    }

    fn insert_pod(&self, node: &str, spec: &PodSpec) -> PodStatus {
        let mut st = self.state.borrow_mut();
        let subnet = self.plan.node(node).map(|n| n.pod_subnet).expect("node in plan");
        let host = st.next_host.entry(node.into()).or_insert(2);
        let ip = Ipv4Addr::from(u32::from(subnet.network()) + *host);
        *host += 1;
        let oom = spec.name == super::conformance::POD_MEM;
        let mut new_pid = |container: Option<&str>| {
            st.last_pid += 1;
            let pid = 1000 + st.last_pid;
            st.pids.insert(pid, (spec.name.clone(), container.map(str::to_string)));
            pid
        };
        let infra_pid = new_pid(None);
        let container_pids: Vec<u32> = spec.containers.iter().map(|c| new_pid(Some(&c.name))).collect();
        let status = PodStatus {
            name: spec.name.clone(),
            phase: if oom { PodPhase::Failed } else { PodPhase::Running },
            qos_class: QosClass::BestEffort,
            ip: Some(ip),
            infra_pid: Some(infra_pid),
            host_veth: Some(format!("veth{:08x}", inode(&spec.name) as u32)),
            cgroup: format!("/sys/fs/cgroup/testbed/pod-{}", spec.name),
            containers: spec
                .containers
                .iter()
                .zip(container_pids)
                .map(|(c, pid)| ContainerStatus {
                    name: c.name.clone(),
                    state: if oom {
                        ContainerState::Terminated { exit_code: 137, reason: "OOMKilled".into() }
                    } else {
                        ContainerState::Running { pid }
                    },
                    restart_count: 0,
                    ready: !oom,
                    started: !oom,
                    last_state: None,
                    cgroup: format!("/sys/fs/cgroup/testbed/pod-{}/{}", spec.name, c.name),
                })
                .collect(),
        };
        st.pods.insert(spec.name.clone(), (node.into(), spec.clone(), status.clone()));
        st.created.push(spec.name.clone());
        status
    }

    /// `readlink` of the net, pid, uts, ipc and mnt namespaces of a pod's infra (`container` None) or
    /// container process, and its hostname: net/uts/ipc are the pod's, pid/mnt the container's, except for a
    /// `rogue_sidecar`.
    fn ns_of(&self, pod: &str, container: Option<&str>) -> (Vec<String>, String) {
        let (p, pc) = (inode(pod), inode(&format!("{pod}/{}", container.unwrap_or("infra"))));
        let rogue = self.faults.rogue_sidecar && container == Some("side");
        let (net, uts, hostname) = if rogue { (pc + 7, pc + 8, "rogue") } else { (p, p + 1, pod) };
        let ids = vec![
            format!("net:[{net}]"),
            format!("pid:[{pc}]"),
            format!("uts:[{uts}]"),
            format!("ipc:[{}]", p + 2),
            format!("mnt:[{}]", pc + 1),
        ];
        (ids, hostname.to_string())
    }

    /// `readlink /proc/<pid>/ns/<kind> ...` on a node: one line per link of a known PID, in order.
    fn proc_ns(&self, command: &str) -> ExecResponse {
        let mut lines = Vec::new();
        let mut missing = false;
        for link in command.split_whitespace().filter_map(|w| w.strip_prefix("/proc/")) {
            let Some((pid, kind)) = link.split_once("/ns/") else { continue };
            let who = pid.parse().ok().and_then(|pid: u32| self.state.borrow().pids.get(&pid).cloned());
            let Some((pod, container)) = who else {
                missing = true;
                continue;
            };
            let (ids, _) = self.ns_of(&pod, container.as_deref());
            lines.extend(ids.into_iter().filter(|id| id.starts_with(&format!("{kind}:["))));
        }
        let r = ok(lines.iter().map(|l| format!("{l}\n")).collect::<String>());
        if missing {
            ExecResponse { exit_code: 1, stderr: "readlink: No such file or directory\n".into(), ..r }
        } else {
            r
        }
    }

    fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<(String, String)> {
        self.state
            .borrow()
            .pods
            .values()
            .find(|(_, _, s)| s.ip == Some(ip))
            .map(|(n, _, s)| (n.clone(), s.name.clone()))
    }

    fn node_of_ip(&self, ip: Ipv4Addr) -> Option<String> {
        self.plan.nodes.iter().find(|n| n.pod_subnet.contains(&ip) || n.nics[0].ip == ip).map(|n| n.name.clone())
    }

    fn backend(&self) -> Backend {
        self.state.borrow().specs.values().next().map_or(self.plan.cluster.backend, |s| s.backend)
    }

    /// Whether traffic from `src_node` reaches `ip`.
    fn reachable(&self, src_node: &str, ip: Ipv4Addr) -> bool {
        match self.node_of_ip(ip) {
            Some(n) if n == src_node => true,
            Some(n) if self.plan.node(&n).is_some_and(|p| p.nics[0].ip == ip) => {
                // A node's underlay address answers from anywhere on the segment... but the reply to a pod
                // address on another node needs the overlay.
                self.backend() != Backend::None
            }
            Some(_) => self.backend() != Backend::None,
            None => false,
        }
    }

    fn ping(&self, src_node: &str, script: &str) -> ExecResponse {
        if self.faults.ping_missing {
            let stderr = "sh: 1: ping: not found\n".into();
            return ExecResponse { exit_code: 127, stdout: String::new(), stderr, timed_out: false };
        }
        let Some(ip) = ip_after(script, "-W 2 ") else { return fail("ping: usage") };
        let mtu = self.pod_mtu();
        if let Some(size) =
            script.split("-s ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|s| s.parse::<u32>().ok())
        {
            if size + 28 > mtu {
                return fail(&format!("ping: local error: message too long, mtu={mtu}"));
            }
        }
        if !self.reachable(src_node, ip) {
            return fail("2 packets transmitted, 0 received");
        }
        let count: u32 =
            script.split("-c ").nth(1).and_then(|r| r.split_whitespace().next()?.parse().ok()).unwrap_or(1);
        // The first echo pays for neighbour resolution.
        let mut out = format!("PING {ip}\n64 bytes from {ip}: icmp_seq=1 ttl=63 time=3.0 ms\n");
        let mut received = 1;
        for seq in 2..=count {
            if !(self.faults.ping_loss && seq % 4 == 0) {
                out.push_str(&format!("64 bytes from {ip}: icmp_seq={seq} ttl=63 time=0.5 ms\n"));
                received += 1;
            }
        }
        out.push_str(&format!(
            "{count} packets transmitted, {received} received\nrtt min/avg/max/mdev = 0.4/0.5/0.6/0.1 ms\n"
        ));
        ok(out)
    }

    fn http(&self, src_node: &str, src_ip: Option<Ipv4Addr>, script: &str, self_pod: Option<&str>) -> ExecResponse {
        let Some(ip) = ip_after(script, "http://") else { return fail("wget: bad url") };
        if ip == Ipv4Addr::LOCALHOST {
            return ok(format!("{}\n", self_pod.unwrap_or("")));
        }
        if !self.reachable(src_node, ip) {
            return fail("wget: download timed out");
        }
        let Some((node, pod)) = self.pod_by_ip(ip) else { return fail("wget: can't connect") };
        if script.contains("/cgi-bin/peer") {
            let seen = self.seen_source(src_ip, &node);
            return ok(format!("[::ffff:{}]\n", seen.map(|i| i.to_string()).unwrap_or_default()));
        }
        if script.contains("/big") {
            return ok(format!("{}  -\n", probe::seq_sha256(probe::BIG_LINES)));
        }
        ok(format!("{pod}\n"))
    }

    /// The pod and overlay MTU the fake agent configures (on a 1500-byte underlay).
    fn pod_mtu(&self) -> u32 {
        let planned = self.backend().pod_mtu(1500) + if self.faults.mtu_too_big { 10 } else { 0 };
        self.faults.pod_mtu.unwrap_or(planned)
    }

    /// The source address a server on `dst_node` sees for a pod client at `src_ip`: with the SNAT fault, the
    /// destination node's cni0 address.
    fn seen_source(&self, src_ip: Option<Ipv4Addr>, dst_node: &str) -> Option<Ipv4Addr> {
        match src_ip {
            Some(_) if self.faults.snat => {
                self.plan.node(dst_node).map(|n| Ipv4Addr::from(u32::from(n.pod_subnet.network()) + 1))
            }
            other => other,
        }
    }

    /// iperf3 client JSON: underlay 800, same-node 600, cross-node 300 Mbit/s.
    fn iperf_client(&self, src_node: &str, script: &str) -> ExecResponse {
        let Some(ip) = ip_after(script, "-c ") else { return fail("iperf3: usage") };
        if !self.reachable(src_node, ip) {
            return ok(r#"{"error":"unable to connect to server: No route to host"}"#);
        }
        let underlay = self.plan.nodes.iter().any(|n| n.nics[0].ip == ip);
        let mbps = if underlay {
            800.0
        } else if self.node_of_ip(ip).as_deref() == Some(src_node) {
            600.0
        } else {
            300.0
        };
        let swing = if self.faults.noisy_throughput {
            let mut st = self.state.borrow_mut();
            st.iperf_runs += 1;
            // A cycle of 5 (prime to the 12 iperf3 figures of a round): every figure swings between rounds.
            [0.5, 1.5, 1.0, 0.7, 1.3][(st.iperf_runs % 5) as usize]
        } else {
            1.0
        };
        let bps = mbps * swing * 1e6;
        ok(format!(
            r#"{{"end":{{"sum":{{"bits_per_second":{bps},"lost_percent":0.0}},"sum_sent":{{"retransmits":0}},
            "sum_received":{{"bits_per_second":{bps}}},"cpu_utilization_percent":{{"host_total":50.0,"remote_total":25.0}}}}}}"#
        ))
    }

    fn network_of(&self, spec: &NodeSpec) -> ObservedNetwork {
        let mut routes = vec![format!("{} dev cni0 proto kernel scope link", spec.pod_subnet)];
        if !(self.faults.missing_route && spec.node_name == "node1") {
            routes.extend(overlay::expected_routes(spec).iter().map(|r| format!("{} {}", r.dest, r.tokens.join(" "))));
        }
        let vx = spec.backend == Backend::Vxlan;
        let mtu = spec.backend.pod_mtu(spec.underlay.mtu);
        let mut links = vec![format!("cni0 UP mtu {mtu} bridge")];
        if vx || self.faults.stale_vxlan_link {
            links.push(format!(
                "flannel.1 UP mtu {} vxlan id 1 dstport 8472 local {} dev {} nolearning",
                Backend::Vxlan.pod_mtu(spec.underlay.mtu),
                spec.underlay.address,
                spec.underlay.interface
            ));
        }
        if spec.backend == Backend::Udp {
            links.push(format!("flannel0 UP mtu {mtu} tun"));
        }
        ObservedNetwork {
            links,
            routes,
            neighbours: if vx {
                spec.peers
                    .iter()
                    .map(|p| format!("{} lladdr {} PERMANENT", p.pod_subnet.network(), p.vtep_mac))
                    .collect()
            } else {
                vec![]
            },
            fdb: if vx {
                spec.peers.iter().map(|p| format!("{} dst {} self permanent", p.vtep_mac, p.underlay_ip)).collect()
            } else {
                vec![]
            },
        }
    }
}

impl Cluster for FakeCluster {
    fn follows_api_networking(&self) -> bool {
        false
    }

    fn plan(&self) -> &Plan {
        &self.plan
    }

    fn facts(&self) -> LabFacts {
        LabFacts { qemu_version: Some("7.2.0".into()), accelerator: Some("tcg".into()), provider: Some("qemu".into()) }
    }

    fn serial_log(&self, _node: &str) -> Option<PathBuf> {
        None
    }

    /// 2 CPUs, 100 ticks each between reads; the lab uses 100 of the 200, other work 0 (or 180 when busy).
    fn host_counters(&self) -> Option<HostCounters> {
        let n = {
            let mut st = self.state.borrow_mut();
            st.host_reads += 1;
            st.host_reads
        };
        let other = if self.faults.busy_host { 90 } else { 0 };
        let (busy, lab) = (n * (100 + other), n * 100);
        let stat = format!("cpu  {busy} 0 0 {} 0 0 0 0 0 0\ncpu0 0\ncpu1 0\n", n * 200 - busy);
        hostload::host_counters(&stat, "0.50 0.40 0.30 1/100 1\n", &[]).map(|h| HostCounters { lab_ticks: lab, ..h })
    }

    async fn ensure_image(&self, node: &str, _image: &ContainerImage) -> Result<String, ClusterError> {
        self.down(node, "ssh")?;
        Ok(self.containers.borrow_mut().add_image(node))
    }

    async fn node_exec_bounded(
        &self,
        node: &str,
        command: &str,
        timeout_secs: u64,
    ) -> Result<ExecResponse, ClusterError> {
        // The fake's commands all end: the bound never fires.
        self.state.borrow_mut().node_exec_bounds.push(timeout_secs);
        let o = self.node_exec(node, command).await?;
        Ok(ExecResponse { exit_code: o.exit_code, stdout: o.stdout, stderr: o.stderr, timed_out: false })
    }

    async fn node_exec(&self, node: &str, command: &str) -> Result<NodeExec, ClusterError> {
        self.down(node, "ssh")?;
        let on_containers = self.containers.borrow_mut().node_exec(node, command);
        let r = if let Some(r) = on_containers {
            r
        } else if command == "head -1 /proc/stat" {
            let n = {
                let mut st = self.state.borrow_mut();
                st.guest_reads += 1;
                st.guest_reads
            };
            ok(format!("cpu  {} 0 0 {} 0 0 0 0 0 0\n", n * 50, n * 50))
        } else if let Some(dst) = route_get(command) {
            let dev = if self.plan.nodes.iter().any(|n| n.name == node && n.nics[0].ip == dst) { "lo" } else { "eth1" };
            ok(format!(
                "{dst} dev {dev} src 192.168.50.11 uid 0\n1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue\n\
                 2: eth1: <BROADCAST,UP> mtu 1500 qdisc fq_codel\n"
            ))
        } else if command.contains("readlink /proc/") && !command.contains("/proc/self/") {
            self.proc_ns(command)
        } else if command.contains("/run/testbed-agent/leases") {
            let left = self.state.borrow().leftover_veths.clone();
            let veths = left.values().filter(|(n, v)| n == node && command.contains(v.as_str()));
            ok(veths.map(|(_, v)| format!("veth {v}\n")).collect::<String>())
        } else if command.contains("readlink") {
            ok(format!("net:[1]\npid:[2]\nuts:[3]\nipc:[4]\nmnt:[5]\n{node}\n"))
        } else if command.contains("hairpin_mode") {
            ok("1\n")
        } else if command.contains("cpu.max") {
            ok("20000 100000\n67108864\n64\n")
        } else if command.contains("/proc/uptime") {
            // 3 s of /proc/uptime, 0.6 s of CPU: exactly the 200m quota.
            ok("T0 1000.00\nusage_usec 100\nnr_throttled 1\nT1 1003.00\nusage_usec 600100\nnr_throttled 30\n")
        } else if command.contains("memory.events") {
            ok("low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n")
        } else if command.contains("iperf3 -c") {
            self.iperf_client(node, command)
        } else if command.contains("iperf3 -s") {
            ok("{}")
        } else if command == "iperf3 --version" {
            ok("iperf 3.12 (cJSON 1.7.15)\nLinux node 6.1.0 #1 SMP x86_64\n")
        } else if command.starts_with("ip route del") {
            ok("")
        } else if let Some(dest) = command.strip_prefix("ip route show ") {
            ok(format!("{dest} via 10.244.1.0 dev flannel.1 onlink\n"))
        } else if command.contains("ping ") {
            let p = self.ping(node, command);
            if p.exit_code != 0 || !command.contains("wget") {
                p
            } else {
                let h = self.http(node, None, command, None);
                ExecResponse { stdout: format!("{}{}", p.stdout, h.stdout), ..h }
            }
        } else {
            ok(format!("fake output of `{command}`\n"))
        };
        Ok(NodeExec { exit_code: r.exit_code, stdout: r.stdout, stderr: r.stderr })
    }

    async fn apply(&self, node: &str, spec: &NodeSpec) -> Result<ApplyResponse, ClusterError> {
        self.down(node, "PUT /v1/node")?;
        let old = self.state.borrow_mut().specs.insert(node.into(), spec.clone());
        let changed = old.as_ref() != Some(spec) || self.faults.reapply_not_idempotent;
        Ok(ApplyResponse { changes: if changed { vec![format!("backend {}", spec.backend)] } else { vec![] } })
    }

    async fn node_status(&self, node: &str) -> Result<NodeStatus, ClusterError> {
        self.down(node, "GET /v1/node")?;
        let spec = self.state.borrow().specs.get(node).cloned();
        let network = spec.as_ref().map(|s| self.network_of(s)).unwrap_or(ObservedNetwork {
            links: vec![],
            routes: vec![],
            neighbours: vec![],
            fdb: vec![],
        });
        Ok(NodeStatus {
            node_name: node.into(),
            agent_version: "0.1.0".into(),
            kernel: "6.1.0-fake".into(),
            kernel_cmdline: "console=ttyS0 root=/dev/vda rw quiet".into(),
            cgroup_version: "v2".into(),
            converged: true,
            last_error: None,
            drift_repairs: 0,
            node_puts: 0,
            network,
            pods: vec![],
            spec,
        })
    }

    /// No NetworkPolicy data plane here (`follows_api_networking`): an empty table built from nothing.
    async fn network_policy_status(&self, node: &str) -> Result<NetworkPolicyStatus, ClusterError> {
        self.down(node, "GET /v1/network-policies")?;
        Ok(NetworkPolicyStatus::default())
    }

    async fn create_pod(&self, node: &str, spec: &PodSpec) -> Result<PodStatus, ClusterError> {
        self.down(node, "POST /v1/pods")?;
        if let Some((_, existing, st)) = self.state.borrow().pods.get(&spec.name) {
            return if existing == spec {
                Ok(st.clone())
            } else {
                Err(ClusterError::new(node, "POST /v1/pods", "409 conflict"))
            };
        }
        let mut status = self.insert_pod(node, spec);
        let missing = self.containers.borrow().missing_images(node, spec);
        if !missing.is_empty() {
            status.phase = PodPhase::Pending;
            for i in missing {
                status.containers[i].state = ContainerState::Waiting { reason: "ErrImageNeverPull".into() };
            }
            if let Some(stored) = self.state.borrow_mut().pods.get_mut(&spec.name) {
                stored.2 = status.clone();
            }
        }
        self.containers.borrow_mut().created(node, spec, &mut status);
        Ok(status)
    }

    async fn get_pod(&self, node: &str, pod: &str) -> Result<PodStatus, ClusterError> {
        self.down(node, "GET /v1/pods")?;
        let st = self.state.borrow();
        let from_api = self.api_pods.lock().ok().and_then(|p| p.get(pod).cloned());
        match (st.pods.get(pod), from_api) {
            (Some((n, _, s)), _) if n == node => {
                let mut s = s.clone();
                self.containers.borrow_mut().refresh(&mut s);
                Ok(s)
            }
            (_, Some((n, ip))) if n == node => {
                Ok(PodStatus { name: pod.to_string(), ip: Some(ip), ..api_pod_status() })
            }
            _ => Err(ClusterError::new(node, &format!("GET /v1/pods/{pod}"), "404 not found")),
        }
    }

    async fn api(&self) -> Result<kube::Client, ClusterError> {
        let start =
            super::fake_api::start(super::cluster::nodes_of(&self.plan), self.faults.kubelet, self.api_pods.clone());
        let client = self.api.get_or_try_init(|| start).await;
        client.cloned().map_err(|e| ClusterError::new("control-plane", "start the fake API server", e))
    }

    async fn delete_pod(&self, node: &str, pod: &str, _grace: Option<Duration>) -> Result<(), ClusterError> {
        self.down(node, "DELETE /v1/pods")?;
        let mut st = self.state.borrow_mut();
        match st.pods.remove(pod) {
            Some((_, _, status)) => {
                self.containers.borrow_mut().deleted(pod);
                if self.faults.leaky_teardown {
                    let veth = status.host_veth.unwrap_or_default();
                    st.leftover_veths.insert(pod.to_string(), (node.to_string(), veth));
                }
                Ok(())
            }
            None => Err(ClusterError::new(node, &format!("DELETE /v1/pods/{pod}"), "404 not found")),
        }
    }

    async fn container_log(&self, node: &str, pod: &str, query: &LogQuery) -> Result<LogChunk, ClusterError> {
        let step = format!("GET /v1/pods/{pod}/log");
        self.down(node, &step)?;
        let container = query.container.clone().unwrap_or_default();
        match self.containers.borrow().log(pod, &container, query.previous) {
            Some(Ok((text, restart_count))) => {
                let size = text.len() as u64;
                let from = query.offset.unwrap_or(0).min(size);
                let text = text[from as usize..].to_string();
                Ok(LogChunk { container, restart_count, offset: from, next_offset: size, size, text })
            }
            Some(Err(message)) => Err(ClusterError::new(node, &step, format!("400 {message}"))),
            None => Err(ClusterError::new(node, &step, "404 not found")),
        }
    }

    async fn pod_exec(&self, node: &str, pod: &str, req: &ExecRequest) -> Result<ExecResponse, ClusterError> {
        self.down(node, "exec")?;
        let own_ip = self.state.borrow().pods.get(pod).and_then(|p| p.2.ip);
        let script = req.command.last().cloned().unwrap_or_default();
        if let Some(r) = self.containers.borrow_mut().exec(pod, req.container.as_deref(), &script) {
            return Ok(r);
        }
        if script.contains("readlink") {
            let container = req.container.as_deref();
            let (mut ids, mut hostname) = self.ns_of(pod, container);
            if self.faults.exec_joins_infra && container.is_some() {
                let (infra, infra_hostname) = self.ns_of(pod, None);
                for kind in [0, 2, 3] {
                    ids[kind] = infra[kind].clone();
                }
                hostname = infra_hostname;
            }
            return Ok(ok(format!("{}\n{hostname}\n", ids.join("\n"))));
        }
        if let Some(dst) = route_get(&script) {
            let mtu = self.pod_mtu();
            return Ok(ok(format!(
                "{dst} dev eth0 src 10.244.0.2 uid 0\n1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue\n\
                 3: eth0@if9: <BROADCAST,UP> mtu {mtu} qdisc noqueue\n"
            )));
        }
        if script.contains("ip -o link show eth0") {
            return Ok(ok(format!("2: eth0@if9: <BROADCAST,UP> mtu {} qdisc noqueue", self.pod_mtu())));
        }
        if script.contains("ip -4 -o addr show") {
            let ip = own_ip.map(|i| i.to_string()).unwrap_or_default();
            return Ok(ok(format!(
                "1: lo    inet 127.0.0.1/8 scope host lo\n3: eth0    inet {ip}/24 brd x scope global eth0\n"
            )));
        }
        if script.contains("busybox nc -l") {
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Ok(ok(self.state.borrow_mut().tcp_message.take().unwrap_or_default()));
        }
        if script.contains("| busybox nc") {
            let Some(ip) = ip_after(&script, "| busybox nc ") else { return Ok(fail("nc: usage")) };
            if !self.reachable(node, ip) {
                return Ok(fail("nc: can't connect"));
            }
            let msg = script.split("echo ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("");
            self.state.borrow_mut().tcp_message = Some(format!("{msg}\n"));
            return Ok(ok(""));
        }
        if script.contains("iperf3 -s") {
            // The client runs meanwhile and records the source address its packets carry.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let peer = self.state.borrow_mut().iperf_peer.take().map(|i| i.to_string()).unwrap_or_default();
            return Ok(ok(format!(
                r#"{{"start":{{"connected":[{{"remote_host":"{peer}"}}]}},"end":{{"sum":{{"packets":42,"lost_packets":0}}}}}}"#
            )));
        }
        if script.contains("iperf3 -c") {
            if let Some((dst_node, _)) = ip_after(&script, "-c ").and_then(|ip| self.pod_by_ip(ip)) {
                self.state.borrow_mut().iperf_peer = self.seen_source(own_ip, &dst_node);
            }
            return Ok(self.iperf_client(node, &script));
        }
        if script.contains("ping ") {
            return Ok(self.ping(node, &script));
        }
        if script.contains("timeout 5 bash -c") {
            let ip = ip_after(&script, "/dev/tcp/");
            return Ok(if ip.is_some_and(|ip| self.reachable(node, ip)) { ok("") } else { fail("connection refused") });
        }
        if script.contains("wget") {
            return Ok(self.http(node, own_ip, &script, Some(pod)));
        }
        Ok(fail(&format!("fake cluster does not know `{script}`")))
    }
}

/// What the agent reports for a pod the fake kubelet runs for the API (its name and IP are filled in).
fn api_pod_status() -> PodStatus {
    PodStatus {
        name: String::new(),
        phase: PodPhase::Running,
        qos_class: QosClass::BestEffort,
        ip: None,
        infra_pid: None,
        host_veth: None,
        cgroup: String::new(),
        containers: Vec::new(),
    }
}
