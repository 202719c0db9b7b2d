//! The perf suite: iperf3 TCP (1 and N streams), UDP at a fixed offer, the highest UDP rate under a loss bound
//! (`udp_search`) and ping latency, per backend, over these paths: the
//! cross-node baseline (node->node on the underlay), the same-node baseline (a node to its own underlay
//! address, over its loopback), pod->pod on one node, pod->pod across nodes, and that cross-node pod path
//! through a Service (`service`; on labs whose agents follow the API): a pod to its ClusterIP, and a node to
//! its node port on the other node. Each path's ratio divides by the baseline of its own kind of path,
//! measured with the same backend in the same rounds: the ClusterIP path's by the direct cross-node pod path
//! to the same server, the node port's by node->node on the underlay (both cross the underlay bare).
//!
//! Samples are taken in rounds: each round measures every figure of the backend once. A disturbance of the
//! host (someone's compile) then lands on one sample of many figures, which the median shrugs off, instead
//! of on every sample of one figure. Around every sample the host's and the guests' counters are read
//! (`hostload`), and a figure is flagged when a sample ran disturbed, when its interval is too wide to
//! compare, or when it lost packets.

mod figure;
mod run;
mod service;
mod udp_search;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use testbed_api::results::{CheckStatus, Measurement, PerfSettings};
use testbed_api::{Backend, ExecResponse};

use super::cluster::{nodes_of, Cluster, ClusterError, NodeInfo};
use super::harness::{
    cleanup, create_tracked, pexec, remove_leftover, sleeper_pod, switch_backend, wait_running, TestPod,
};
use super::hostload;
use super::runner::{Level, Runner};
pub use figure::add_ratios;
use figure::{measurement, outcome_of, Figure};
use run::{checkpoint, one_run, path_mtu, SearchSeed};

pub const PERF_PORT: u16 = 5210;
pub const BASELINE_CROSS: &str = "underlay node->node";
pub const BASELINE_SELF: &str = "underlay node->self";
const SAME_NODE: &str = "pod->pod same-node";
const CROSS_NODE: &str = "pod->pod cross-node";
const VIA_CLUSTER_IP: &str = "pod->service ClusterIP cross-node";
const VIA_NODE_PORT: &str = "node->service NodePort cross-node";
/// Seconds each iperf3 run sends before it measures: TCP slow start and neighbour resolution stay out of
/// every sample, which a discarded warm-up run per figure would otherwise have to pay for.
pub const OMIT_S: u32 = 1;
/// Under TCG an unlimited UDP sender only measures its own drops, so UDP offers a fixed rate: 300 Mbit/s is
/// below what the baselines carry and above what the slower backends do; the loss next to it tells which.
pub const UDP_OFFERED_MBPS: f64 = 300.0;
/// `--udp-loss-bound` when not given: the loss above which a UDP figure measures drops, and the bound of the
/// UDP rate search. 1 % is what TCP over the path would still mostly ride out.
pub const UDP_LOSS_BOUND_PERCENT: f64 = 1.0;
/// `--udp-probes` when not given: probes per UDP rate search. A seeded search resolves in 3-4 (measured on
/// the default lab, docs/benchmarks.md); 6 leave room for a round that starts off.
pub const UDP_PROBES: u32 = 6;
/// Two runs are meant to agree within +-10 %; a figure whose own interval reaches further cannot show that.
pub const WIDE_INTERVAL_PERCENT: f64 = 10.0;

#[derive(Debug, Clone, Copy)]
pub struct PerfOptions {
    pub repeats: u32,
    pub warmup: u32,
    pub duration_s: u32,
    pub streams: u32,
    /// The loss bound of the UDP figures and the rate search, percent.
    pub udp_loss_bound: f64,
    /// Probes per UDP rate search; 0 leaves the `udp-max` figures out.
    pub udp_probes: u32,
}

impl PerfOptions {
    /// The options with the UDP defaults.
    pub fn new(repeats: u32, warmup: u32, duration_s: u32, streams: u32) -> PerfOptions {
        PerfOptions {
            repeats,
            warmup,
            duration_s,
            streams,
            udp_loss_bound: UDP_LOSS_BOUND_PERCENT,
            udp_probes: UDP_PROBES,
        }
    }
}

impl PerfOptions {
    pub fn settings(&self) -> PerfSettings {
        PerfSettings {
            repeats: self.repeats,
            warmup_rounds: self.warmup,
            duration_s: self.duration_s,
            omit_s: OMIT_S,
            streams: self.streams,
            udp_offered_mbps: UDP_OFFERED_MBPS,
            udp_loss_bound_percent: self.udp_loss_bound,
            udp_search_probes: self.udp_probes,
            udp_probe_s: run::UDP_PROBE_S,
            wide_interval_percent: WIDE_INTERVAL_PERCENT,
            disturbed_other_cpus: hostload::DISTURBED_OTHER_CPUS,
            disturbed_steal_iowait_percent: hostload::DISTURBED_STEAL_IOWAIT_PERCENT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp1,
    TcpN(u32),
    Udp,
    /// The highest UDP rate with loss under the bound (`udp_search`).
    UdpMax,
    Latency,
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::Tcp1 => "tcp-1".into(),
            Kind::TcpN(n) => format!("tcp-{n}"),
            Kind::Udp => "udp".into(),
            Kind::UdpMax => "udp-max".into(),
            Kind::Latency => "latency".into(),
        }
    }
    fn unit(self) -> &'static str {
        if self == Kind::Latency {
            "ms"
        } else {
            "Mbit/s"
        }
    }
}

/// Where a command runs: in a pod (its network namespace) or on a node; as a destination, the address a
/// client sends to is the end's own, except through a Service.
#[derive(Clone, Copy)]
pub enum End<'a> {
    Pod(&'a TestPod),
    Node(&'a NodeInfo),
    /// The server pod, reached at `ip`:`port` (a Service's address) rather than at its own.
    Via {
        server: &'a TestPod,
        ip: Ipv4Addr,
        port: u16,
    },
}

impl End<'_> {
    /// The address a client sends to.
    fn ip(&self) -> Ipv4Addr {
        match self {
            End::Pod(p) => p.ip,
            End::Node(n) => n.underlay_ip,
            End::Via { ip, .. } => *ip,
        }
    }
    /// The port a client sends to; the server always listens on PERF_PORT.
    fn port(&self) -> u16 {
        match self {
            End::Via { port, .. } => *port,
            _ => PERF_PORT,
        }
    }
    fn node(&self) -> &str {
        match self {
            End::Pod(p) | End::Via { server: p, .. } => &p.node,
            End::Node(n) => &n.name,
        }
    }
    async fn run<C: Cluster>(&self, c: &C, script: &str, timeout: u64) -> Result<ExecResponse, ClusterError> {
        match self {
            End::Pod(p) | End::Via { server: p, .. } => pexec(c, p, None, script, timeout).await,
            // Bounded on the node, as an exec in a pod is by the agent: a run that never ends (a path that
            // drops everything) is that path's failure, not the SSH session's.
            End::Node(n) => c.node_exec_bounded(&n.name, script, timeout).await,
        }
    }
    /// Why `kind` cannot be measured to this end, if it cannot.
    fn cannot_measure(&self, kind: Kind) -> Option<&'static str> {
        match (self, kind) {
            (End::Via { .. }, Kind::Latency) => Some("a Service forwards TCP and UDP only: ping is not answered"),
            _ => None,
        }
    }
}

/// A path between two ends and the baseline its ratios divide by (None: it is a baseline).
pub struct PathSpec<'a> {
    name: &'static str,
    ends: Result<(End<'a>, End<'a>), &'static str>,
    baseline: Option<&'static str>,
}

pub const PERF_PODS: [&str; 3] = ["tb-p-a1", "tb-p-a2", "tb-p-b1"];

/// `iperf3 --version`'s first line on the first node, for results.json.
pub async fn iperf3_version<C: Cluster>(c: &C) -> Option<String> {
    let node = c.plan().nodes.first()?;
    let out = c.node_exec(&node.name, "iperf3 --version").await.ok()?;
    out.stdout.lines().next().map(|l| l.trim().to_string()).filter(|l| !l.is_empty())
}

/// The kinds each path measures, in round order: the fixed-offer UDP run before the search it seeds.
fn kinds(o: &PerfOptions) -> Vec<Kind> {
    let mut k = vec![Kind::Tcp1, Kind::TcpN(o.streams), Kind::Udp];
    if o.udp_probes > 0 {
        k.push(Kind::UdpMax);
    }
    k.push(Kind::Latency);
    k
}

/// Measures every selected figure of `paths` in interleaved rounds and records one check per figure.
async fn measure_paths<C: Cluster>(
    c: &C,
    r: &mut Runner,
    o: &PerfOptions,
    backend: Backend,
    paths: &[PathSpec<'_>],
) -> Vec<Measurement> {
    let b = Some(backend);
    let mut figures: Vec<Figure<'_>> = Vec::new();
    for path in paths {
        for kind in kinds(o) {
            let name = format!("{}: {}", path.name, kind.name());
            let skip = match path.ends {
                Err(why) => Some(why),
                Ok((_, to)) => to.cannot_measure(kind),
            };
            match (skip, path.ends) {
                (Some(why), _) => r.record("perf", b, &name, CheckStatus::Skip, why),
                (None, Ok((from, to))) if r.selected(&Runner::full_name("perf", b, &name)) => figures.push(Figure {
                    kind,
                    path,
                    from,
                    to,
                    mtu: None,
                    samples: Vec::new(),
                    last: None,
                    error: None,
                    took: Duration::ZERO,
                }),
                _ => {}
            }
        }
    }
    // Read once per path, from the interface itself: what the plan says the MTU should be is not evidence.
    for path in paths {
        let Ok((from, to)) = path.ends else { continue };
        if !figures.iter().any(|f| std::ptr::eq(f.path, path)) {
            continue;
        }
        let mtu = path_mtu(c, from, to).await;
        for f in figures.iter_mut().filter(|f| std::ptr::eq(f.path, path)) {
            match &mtu {
                Ok(m) => f.mtu = Some(*m),
                Err(e) => f.error = Some(e.clone()),
            }
        }
    }
    let mut nodes: Vec<String> =
        figures.iter().flat_map(|f| [f.from.node().to_string(), f.to.node().to_string()]).collect();
    nodes.sort();
    nodes.dedup();
    let mut before = checkpoint(c, &nodes).await;
    for round in 0..o.warmup + o.repeats {
        // This round's fixed-offer UDP run per path, where the path's rate search starts.
        let mut fixed: HashMap<&str, udp_search::Probe> = HashMap::new();
        for f in figures.iter_mut().filter(|f| f.error.is_none()) {
            r.stage(&format!(
                "[perf] {backend} {}: {} (round {} of {})",
                f.path.name,
                f.kind.name(),
                round + 1,
                o.warmup + o.repeats
            ));
            let started = Instant::now();
            let seed = SearchSeed { prev_best: f.last, fixed: fixed.get(f.path.name).copied() };
            let sample = one_run(c, f.kind, f.from, f.to, o, seed).await;
            let after = checkpoint(c, &nodes).await;
            f.took += started.elapsed();
            if let Ok(s) = &sample {
                f.last = Some(s.value);
                fixed.extend(s.probe.map(|p| (f.path.name, p)));
            }
            match sample {
                Ok(s) if round >= o.warmup => {
                    let cond = hostload::conditions(&before, &after, &[f.from.node(), f.to.node()], s.loss);
                    f.samples.push((s, cond));
                }
                Ok(_) => {}
                Err(e) => f.error = Some(e),
            }
            before = after;
        }
    }
    let mut done: Vec<(Measurement, Duration)> = Vec::new();
    for f in figures.iter_mut() {
        let name = format!("{}: {}", f.path.name, f.kind.name());
        match f.error.take() {
            Some(e) => r.record_outcome("perf", b, &name, Level::Error, Err(e), f.took),
            None => done.push((measurement(f, backend, o.udp_loss_bound), f.took)),
        }
    }
    let mut ms: Vec<Measurement> = done.iter().map(|(m, _)| m.clone()).collect();
    add_ratios(&mut ms);
    for (m, (_, took)) in ms.iter().zip(&done) {
        let (level, outcome) = outcome_of(m);
        r.record_outcome("perf", b, &format!("{}: {}", m.path, m.kind), level, outcome, *took);
    }
    ms
}

/// One backend: switch, pods, measurements, cleanup.
pub async fn run_backend<C: Cluster>(
    c: &C,
    r: &mut Runner,
    backend: Backend,
    o: &PerfOptions,
    out: &mut Vec<Measurement>,
) {
    let b = Some(backend);
    if r.run_setup("setup", b, "apply NodeSpec to every node and converge", switch_backend(c, backend)).await
        != CheckStatus::Pass
    {
        return;
    }
    let nodes = nodes_of(c.plan());
    let (Some(na), nb) = (nodes.first(), nodes.get(1)) else {
        r.record("setup", b, "perf pods running", CheckStatus::Error, "the plan has no nodes");
        return;
    };
    let created = std::cell::RefCell::new(Vec::new());
    let mut pods: Vec<TestPod> = Vec::new();
    r.run_setup("setup", b, "perf pods running", async {
        let mut wanted = vec![(na.name.clone(), PERF_PODS[0]), (na.name.clone(), PERF_PODS[1])];
        if let Some(nb) = nb {
            wanted.push((nb.name.clone(), PERF_PODS[2]));
        }
        for (node, name) in &wanted {
            remove_leftover(c, node, name).await;
            let mut spec = sleeper_pod(name);
            // The cross-node server, which the Service paths reach too.
            if *name == PERF_PODS[2] {
                spec.labels.insert(service::SERVER_LABEL.0.into(), service::SERVER_LABEL.1.into());
            }
            create_tracked(c, node, &spec, &created).await?;
        }
        for (node, name) in &wanted {
            pods.push(wait_running(c, node, name).await?);
        }
        Ok(pods.iter().map(|p| format!("{}@{} {}", p.name, p.node, p.ip)).collect::<Vec<_>>().join(", "))
    })
    .await;
    let none = backend == Backend::None;
    // The Service paths need pod traffic between nodes and agents that follow the API's Services.
    let wants_service = [VIA_CLUSTER_IP, VIA_NODE_PORT].iter().any(|path| {
        kinds(o).iter().any(|k| r.selected(&Runner::full_name("perf", b, &format!("{path}: {}", k.name()))))
    });
    // The Service as the paths reach it, its server pod and that pod's node. A set-up that failed may have made
    // the Service already: it is deleted whenever one was asked for.
    let mut asked = false;
    let via = match (pods.get(2), nb) {
        _ if none => Err("backend none routes no pod traffic between nodes"),
        _ if !c.follows_api_networking() => Err("this cluster has no service proxy"),
        (Some(server), Some(server_node)) if wants_service => {
            asked = true;
            let mut made = None;
            r.run_setup("setup", b, "perf Service with its endpoint", async {
                let s = service::create(c, server.ip).await?;
                made = Some(s);
                Ok(format!("ClusterIP {}, node port {} (TCP and UDP)", s.cluster_ip, s.node_port))
            })
            .await;
            made.map(|s| (s, server, server_node)).ok_or("the perf Service's setup failed")
        }
        _ => Err("the lab has a single node"),
    };
    if pods.len() >= 2 {
        let mut paths = vec![
            PathSpec {
                name: BASELINE_CROSS,
                ends: match nb {
                    _ if none => Err("nothing to divide: backend none has no cross-node pod figures"),
                    Some(nb) => Ok((End::Node(na), End::Node(nb))),
                    None => Err("the lab has a single node"),
                },
                baseline: None,
            },
            PathSpec { name: BASELINE_SELF, ends: Ok((End::Node(na), End::Node(na))), baseline: None },
            PathSpec {
                name: SAME_NODE,
                ends: Ok((End::Pod(&pods[0]), End::Pod(&pods[1]))),
                baseline: Some(BASELINE_SELF),
            },
            PathSpec {
                name: CROSS_NODE,
                ends: match pods.get(2) {
                    _ if none => Err("backend none routes no pod traffic between nodes"),
                    Some(p) => Ok((End::Pod(&pods[0]), End::Pod(p))),
                    None => Err("the lab has a single node"),
                },
                baseline: Some(BASELINE_CROSS),
            },
        ];
        if wants_service {
            paths.push(PathSpec {
                name: VIA_CLUSTER_IP,
                ends: via.map(|(svc, server, _)| {
                    (End::Pod(&pods[0]), End::Via { server, ip: svc.cluster_ip, port: PERF_PORT })
                }),
                baseline: Some(CROSS_NODE),
            });
            // From a node, as a client outside the pod network reaches a NodePort: the data crosses the underlay
            // unencapsulated both ways, as node->node does (a pod's request to a node address also leaves
            // its node on the underlay, so pod->NodePort is no overlay path either: docs/benchmarks.md).
            paths.push(PathSpec {
                name: VIA_NODE_PORT,
                ends: via.map(|(svc, server, server_node)| {
                    (End::Node(na), End::Via { server, ip: server_node.underlay_ip, port: svc.node_port })
                }),
                baseline: Some(BASELINE_CROSS),
            });
        }
        out.extend(measure_paths(c, r, o, backend, &paths).await);
    }
    if asked {
        r.run_setup("setup", b, "perf Service removed", service::delete(c)).await;
    }
    r.run_setup("setup", b, "perf pods removed", cleanup(c, &created)).await;
}
