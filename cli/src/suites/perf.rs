//! The perf suite: iperf3 TCP (1 and N streams), UDP and ping latency for the underlay (node->node, the
//! baseline), pod->pod on one node and pod->pod across nodes, per backend. Warm-up runs are discarded; the
//! measured repeats give median/min/max and a 95 % interval; ratios are to the baseline of the same run.

use std::cell::RefCell;
use std::net::Ipv4Addr;

use testbed_api::results::{CheckStatus, Measurement, Stats};
use testbed_api::{Backend, ExecResponse};

use super::cluster::{nodes_of, Cluster, ClusterError, NodeInfo};
use super::harness::{
    cleanup, create_tracked, evidence, nexec, pexec, remove_leftover, sleeper_pod, switch_backend, wait_running,
    TestPod,
};
use super::probe;
use super::runner::{CheckError, CheckOutcome, Level, Runner};

pub const PERF_PORT: u16 = 5210;
pub const BASELINE_PATH: &str = "underlay node->node";

#[derive(Debug, Clone, Copy)]
pub struct PerfOptions {
    pub repeats: u32,
    pub warmup: u32,
    pub duration_s: u32,
    pub streams: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp1,
    TcpN(u32),
    Udp,
    Latency,
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::Tcp1 => "tcp-1".into(),
            Kind::TcpN(n) => format!("tcp-{n}"),
            Kind::Udp => "udp".into(),
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

/// Where a command runs: in a pod (its network namespace) or on a node.
#[derive(Clone, Copy)]
enum End<'a> {
    /// A pod and the MTU of its eth0.
    Pod(&'a TestPod, u32),
    Node(&'a NodeInfo),
}

impl End<'_> {
    fn mtu(&self) -> u32 {
        match self {
            End::Pod(_, mtu) => *mtu,
            End::Node(n) => n.underlay_mtu,
        }
    }

    fn ip(&self) -> Ipv4Addr {
        match self {
            End::Pod(p, _) => p.ip,
            End::Node(n) => n.underlay_ip,
        }
    }
    async fn run<C: Cluster>(&self, c: &C, script: &str, timeout: u64) -> Result<ExecResponse, ClusterError> {
        match self {
            End::Pod(p, _) => pexec(c, p, None, script, timeout).await,
            End::Node(n) => nexec(c, &n.name, script).await,
        }
    }
}

struct Sample {
    value: f64,
    cpu: (Option<f64>, Option<f64>),
    note: String,
}

async fn one_run<C: Cluster>(
    c: &C,
    kind: Kind,
    from: End<'_>,
    to: End<'_>,
    o: &PerfOptions,
) -> Result<Sample, CheckError> {
    let d = o.duration_s;
    if kind == Kind::Latency {
        let count = (d * 5).max(5);
        let cmd = format!("ping -n -q -c {count} -i 0.2 -W 2 {}", to.ip());
        let r = from.run(c, &cmd, u64::from(d) + 30).await?;
        let avg = probe::parse_ping_avg(&r.stdout)
            .ok_or_else(|| CheckError::Fail(format!("no RTT summary\n{}", evidence(&cmd, &r))))?;
        return Ok(Sample { value: avg, cpu: (None, None), note: String::new() });
    }
    let args = match kind {
        Kind::Tcp1 => format!("-t {d} -P 1"),
        Kind::TcpN(n) => format!("-t {d} -P {n}"),
        // A fixed offered load: under TCG an unlimited UDP sender only measures its own drops.
        _ => format!("-t {d} -u -b 300M -l 1200"),
    };
    let server = format!("timeout {} iperf3 -s -1 -p {PERF_PORT} -J", d + 60);
    let client = probe::iperf_client(to.ip(), PERF_PORT, &args);
    let limit = u64::from(d) + 70;
    let (s, cl) = futures::join!(to.run(c, &server, limit), from.run(c, &client, limit));
    let (_s, cl) = (s?, cl?);
    let run = probe::parse_iperf_client(&cl.stdout, kind == Kind::Udp)
        .map_err(|e| CheckError::Fail(format!("{e}\n{}", evidence(&client, &cl))))?;
    let note = match (run.retransmits, run.lost_percent) {
        (Some(r), _) => format!("{r} retransmits"),
        (_, Some(l)) => format!("{l:.2}% lost"),
        _ => String::new(),
    };
    Ok(Sample { value: run.mbps, cpu: (run.cpu_sender, run.cpu_receiver), note })
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// One figure to measure: what, over which path, between which ends.
struct Figure<'a> {
    kind: Kind,
    path: &'a str,
    backend: Option<Backend>,
    from: End<'a>,
    to: End<'a>,
}

async fn measure<C: Cluster>(c: &C, f: Figure<'_>, o: &PerfOptions, out: &RefCell<Vec<Measurement>>) -> CheckOutcome {
    let Figure { kind, path, backend, from, to } = f;
    let mut samples = Vec::new();
    for i in 0..o.warmup + o.repeats {
        let s = one_run(c, kind, from, to, o).await?;
        if i >= o.warmup {
            samples.push(s);
        }
    }
    let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
    let stats = Stats::of(&values);
    let cpu_s: Vec<f64> = samples.iter().filter_map(|s| s.cpu.0).collect();
    let cpu_r: Vec<f64> = samples.iter().filter_map(|s| s.cpu.1).collect();
    let notes: Vec<&str> = samples.iter().map(|s| s.note.as_str()).filter(|n| !n.is_empty()).collect();
    let m = Measurement {
        kind: kind.name(),
        path: path.into(),
        backend,
        unit: kind.unit().into(),
        samples: values,
        stats,
        ratio_to_baseline: None,
        cpu_sender_percent: mean(&cpu_s),
        cpu_receiver_percent: mean(&cpu_r),
        mtu: Some(from.mtu()),
        details: (!notes.is_empty()).then(|| notes.join(", ")),
    };
    let summary = format!(
        "median {:.2} {} (min {:.2}, max {:.2}, n {}) {} -> {}",
        m.stats.median,
        m.unit,
        m.stats.min,
        m.stats.max,
        m.stats.n,
        from.ip(),
        to.ip()
    );
    out.borrow_mut().push(m);
    Ok(summary)
}

/// Ratio of each measurement's median to the baseline's median of the same kind.
pub fn add_ratios(ms: &mut [Measurement]) {
    let base: Vec<(String, f64)> =
        ms.iter().filter(|m| m.path == BASELINE_PATH).map(|m| (m.kind.clone(), m.stats.median)).collect();
    for m in ms.iter_mut().filter(|m| m.path != BASELINE_PATH) {
        m.ratio_to_baseline = base.iter().find(|(k, v)| *k == m.kind && *v > 0.0).map(|(_, v)| m.stats.median / v);
    }
}

pub const PERF_PODS: [&str; 3] = ["tb-p-a1", "tb-p-a2", "tb-p-b1"];

/// `iperf3 --version`'s first line on the first node, for results.json.
pub async fn iperf3_version<C: Cluster>(c: &C) -> Option<String> {
    let node = c.plan().nodes.first()?;
    let out = c.node_exec(&node.name, "iperf3 --version").await.ok()?;
    out.stdout.lines().next().map(|l| l.trim().to_string()).filter(|l| !l.is_empty())
}

/// Every kind of figure over `path`: measured between `ends`, or each one recorded as skipped with the reason.
async fn run_path<C: Cluster>(
    c: &C,
    r: &mut Runner,
    o: &PerfOptions,
    out: &RefCell<Vec<Measurement>>,
    path: &str,
    backend: Option<Backend>,
    ends: Result<(End<'_>, End<'_>), &str>,
) {
    for kind in [Kind::Tcp1, Kind::TcpN(o.streams), Kind::Udp, Kind::Latency] {
        let name = format!("{path}: {}", kind.name());
        match ends {
            Ok((from, to)) => {
                let figure = Figure { kind, path, backend, from, to };
                r.run("perf", backend, &name, Level::Error, measure(c, figure, o, out)).await
            }
            Err(why) => r.run("perf", backend, &name, Level::Error, async { Err(CheckError::Skip(why.into())) }).await,
        };
    }
}

/// One backend: switch, pods, measurements, cleanup. `first` adds the underlay baseline.
pub async fn run_backend<C: Cluster>(
    c: &C,
    r: &mut Runner,
    backend: Backend,
    first: bool,
    o: &PerfOptions,
    out: &RefCell<Vec<Measurement>>,
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
    let created = RefCell::new(Vec::new());
    let mut pods: Vec<TestPod> = Vec::new();
    r.run_setup("setup", b, "perf pods running", async {
        let mut wanted = vec![(na.name.clone(), PERF_PODS[0]), (na.name.clone(), PERF_PODS[1])];
        if let Some(nb) = nb {
            wanted.push((nb.name.clone(), PERF_PODS[2]));
        }
        for (node, name) in &wanted {
            remove_leftover(c, node, name).await;
            create_tracked(c, node, &sleeper_pod(name), &created).await?;
        }
        for (node, name) in &wanted {
            pods.push(wait_running(c, node, name).await?);
        }
        Ok(pods.iter().map(|p| format!("{}@{} {}", p.name, p.node, p.ip)).collect::<Vec<_>>().join(", "))
    })
    .await;
    let pod_mtu = backend.pod_mtu(na.underlay_mtu);
    if pods.len() >= 2 {
        if first {
            let ends = nb.map(|nb| (End::Node(na), End::Node(nb))).ok_or("the lab has a single node");
            run_path(c, r, o, out, BASELINE_PATH, None, ends).await;
        }
        let same = (End::Pod(&pods[0], pod_mtu), End::Pod(&pods[1], pod_mtu));
        run_path(c, r, o, out, "pod->pod same-node", b, Ok(same)).await;
        let cross = match pods.get(2) {
            Some(p) if backend != Backend::None => Ok((End::Pod(&pods[0], pod_mtu), End::Pod(p, pod_mtu))),
            Some(_) => Err("backend none routes no pod traffic between nodes"),
            None => Err("the lab has a single node"),
        };
        run_path(c, r, o, out, "pod->pod cross-node", b, cross).await;
    }
    r.run_setup("setup", b, "perf pods removed", cleanup(c, &created)).await;
}
