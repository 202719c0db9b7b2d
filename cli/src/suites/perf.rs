//! The perf suite: iperf3 TCP (1 and N streams), UDP and ping latency, per backend, over four paths: the
//! cross-node baseline (node->node on the underlay), the same-node baseline (a node to its own underlay
//! address, over its loopback), pod->pod on one node and pod->pod across nodes. Each pod path's ratio divides
//! by the baseline of its own kind of path, measured with the same backend in the same rounds.
//!
//! Samples are taken in rounds: each round measures every figure of the backend once. A disturbance of the
//! host (someone's compile) then lands on one sample of many figures, which the median shrugs off, instead
//! of on every sample of one figure. Around every sample the host's and the guests' counters are read
//! (`hostload`), and a figure is flagged when a sample ran disturbed, when its interval is too wide to
//! compare, or when it lost packets.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use testbed_api::results::{CheckStatus, Measurement, PerfFlag, PerfSettings, SampleConditions, Stats};
use testbed_api::{Backend, ExecResponse};

use super::cluster::{nodes_of, Cluster, ClusterError, NodeInfo};
use super::harness::{
    cleanup, create_tracked, evidence, nexec, pexec, remove_leftover, sleeper_pod, switch_backend, wait_running,
    TestPod,
};
use super::hostload::{self, Checkpoint, CpuTimes};
use super::probe;
use super::runner::{CheckError, CheckOutcome, Level, Runner};

pub const PERF_PORT: u16 = 5210;
pub const BASELINE_CROSS: &str = "underlay node->node";
pub const BASELINE_SELF: &str = "underlay node->self";
const SAME_NODE: &str = "pod->pod same-node";
const CROSS_NODE: &str = "pod->pod cross-node";
/// Seconds each iperf3 run sends before it measures: TCP slow start and neighbour resolution stay out of
/// every sample, which a discarded warm-up run per figure would otherwise have to pay for.
pub const OMIT_S: u32 = 1;
/// Under TCG an unlimited UDP sender only measures its own drops, so UDP offers a fixed rate: 300 Mbit/s is
/// below what the baselines carry and above what the slower backends do; the loss next to it tells which.
pub const UDP_OFFERED_MBPS: f64 = 300.0;
pub const UDP_LOSS_BOUND_PERCENT: f64 = 1.0;
/// Two runs are meant to agree within +-10 %; a figure whose own interval reaches further cannot show that.
pub const WIDE_INTERVAL_PERCENT: f64 = 10.0;

#[derive(Debug, Clone, Copy)]
pub struct PerfOptions {
    pub repeats: u32,
    pub warmup: u32,
    pub duration_s: u32,
    pub streams: u32,
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
            udp_loss_bound_percent: UDP_LOSS_BOUND_PERCENT,
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
    Pod(&'a TestPod),
    Node(&'a NodeInfo),
}

impl End<'_> {
    fn ip(&self) -> Ipv4Addr {
        match self {
            End::Pod(p) => p.ip,
            End::Node(n) => n.underlay_ip,
        }
    }
    fn node(&self) -> &str {
        match self {
            End::Pod(p) => &p.node,
            End::Node(n) => &n.name,
        }
    }
    async fn run<C: Cluster>(&self, c: &C, script: &str, timeout: u64) -> Result<ExecResponse, ClusterError> {
        match self {
            End::Pod(p) => pexec(c, p, None, script, timeout).await,
            End::Node(n) => nexec(c, &n.name, script).await,
        }
    }
}

/// A path between two ends and the baseline its ratios divide by (None: it is a baseline).
struct PathSpec<'a> {
    name: &'static str,
    ends: Result<(End<'a>, End<'a>), &'static str>,
    baseline: Option<&'static str>,
}

struct Sample {
    value: f64,
    cpu: (Option<f64>, Option<f64>),
    note: String,
    loss: Option<f64>,
}

/// One figure while its rounds run.
struct Figure<'a> {
    kind: Kind,
    path: &'a PathSpec<'a>,
    from: End<'a>,
    to: End<'a>,
    mtu: Option<u32>,
    samples: Vec<(Sample, SampleConditions)>,
    error: Option<CheckError>,
    took: Duration,
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
        // One more echo than measured: the first answer is left out (neighbour resolution).
        let count = (d * 5).max(5) + 1;
        let cmd = format!("ping -n -c {count} -i 0.2 -W 2 {}", to.ip());
        let r = from.run(c, &cmd, u64::from(d) + 30).await?;
        let run = probe::parse_ping(&r.stdout).filter(|_| r.exit_code == 0 && !r.timed_out);
        let Some((run, avg)) = run.and_then(|p| p.mean_after_first_ms().map(|a| (p, a))) else {
            return Err(CheckError::Fail(format!("ping failed (exit {})\n{}", r.exit_code, evidence(&cmd, &r))));
        };
        let loss = run.loss_percent();
        let note = if loss > 0.0 { format!("{loss:.1}% lost") } else { String::new() };
        return Ok(Sample { value: avg, cpu: (None, None), note, loss: Some(loss) });
    }
    let args = match kind {
        Kind::Tcp1 => format!("-t {d} -O {OMIT_S} -P 1"),
        Kind::TcpN(n) => format!("-t {d} -O {OMIT_S} -P {n}"),
        _ => format!("-t {d} -O {OMIT_S} -u -b {UDP_OFFERED_MBPS}M -l 1200"),
    };
    let server = format!("timeout {} iperf3 -s -1 -p {PERF_PORT} -J", d + OMIT_S + 60);
    let client = probe::iperf_client(to.ip(), PERF_PORT, &args);
    let limit = u64::from(d + OMIT_S) + 70;
    let (s, cl) = futures::join!(to.run(c, &server, limit), from.run(c, &client, limit));
    let (_s, cl) = (s?, cl?);
    let run = probe::parse_iperf_client(&cl.stdout, kind == Kind::Udp)
        .map_err(|e| CheckError::Fail(format!("{e}\n{}", evidence(&client, &cl))))?;
    let note = match (run.retransmits, run.lost_percent) {
        (Some(r), _) => format!("{r} retransmits"),
        (_, Some(l)) => format!("{l:.2}% lost"),
        _ => String::new(),
    };
    Ok(Sample { value: run.mbps, cpu: (run.cpu_sender, run.cpu_receiver), note, loss: run.lost_percent })
}

/// The host's counters and each of `nodes`' /proc/stat, read together between two samples.
async fn checkpoint<C: Cluster>(c: &C, nodes: &[String]) -> Checkpoint {
    let reads = nodes.iter().map(|n| async move {
        let out = c.node_exec(n, "head -1 /proc/stat").await.ok()?;
        CpuTimes::parse(&out.stdout).map(|t| (n.clone(), t))
    });
    let guests = futures::future::join_all(reads).await.into_iter().flatten().collect();
    Checkpoint { host: c.host_counters(), guests }
}

/// The MTU of the interface `from` sends to `to` through, read on `from`.
async fn path_mtu<C: Cluster>(c: &C, from: End<'_>, to: End<'_>) -> Result<u32, CheckError> {
    let cmd = probe::route_mtu_script(to.ip());
    let r = from.run(c, &cmd, 30).await?;
    probe::route_mtu(&r.stdout)
        .map(|(_, mtu)| mtu)
        .ok_or_else(|| CheckError::Fail(format!("no route MTU towards {}\n{}", to.ip(), evidence(&cmd, &r))))
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// A figure's own flags (`BaselineFlagged` is added with the ratios).
fn flags_of(kind: Kind, stats: &Stats, conditions: &[SampleConditions]) -> Vec<PerfFlag> {
    let mut flags = Vec::new();
    if stats.interval_reach().is_none_or(|r| r * 100.0 > WIDE_INTERVAL_PERCENT) {
        flags.push(PerfFlag::WideInterval);
    }
    if conditions.iter().any(|c| c.disturbed) {
        flags.push(PerfFlag::DisturbedHost);
    }
    let losses: Vec<f64> = conditions.iter().filter_map(|c| c.loss_percent).collect();
    let lossy = match kind {
        Kind::Latency => losses.iter().any(|l| *l > 0.0),
        _ => Stats::of(&losses).median > UDP_LOSS_BOUND_PERCENT,
    };
    if lossy {
        flags.push(PerfFlag::Loss);
    }
    flags
}

fn measurement(f: &Figure<'_>, backend: Backend) -> Measurement {
    let values: Vec<f64> = f.samples.iter().map(|(s, _)| s.value).collect();
    let stats = Stats::of(&values);
    let conditions: Vec<SampleConditions> = f.samples.iter().map(|(_, c)| c.clone()).collect();
    let cpu_s: Vec<f64> = f.samples.iter().filter_map(|(s, _)| s.cpu.0).collect();
    let cpu_r: Vec<f64> = f.samples.iter().filter_map(|(s, _)| s.cpu.1).collect();
    let notes: Vec<&str> = f.samples.iter().map(|(s, _)| s.note.as_str()).filter(|n| !n.is_empty()).collect();
    Measurement {
        kind: f.kind.name(),
        path: f.path.name.into(),
        backend: Some(backend),
        unit: f.kind.unit().into(),
        samples: values,
        ratio_to_baseline: None,
        baseline: f.path.baseline.map(str::to_string),
        cpu_sender_percent: mean(&cpu_s),
        cpu_receiver_percent: mean(&cpu_r),
        mtu: f.mtu,
        details: (!notes.is_empty()).then(|| notes.join(", ")),
        udp_offered_mbps: (f.kind == Kind::Udp).then_some(UDP_OFFERED_MBPS),
        flags: flags_of(f.kind, &stats, &conditions),
        stats,
        conditions,
    }
}

/// Each figure's ratio to its baseline (same kind, same backend); a flagged baseline flags the ratio.
pub fn add_ratios(ms: &mut [Measurement]) {
    let base: Vec<(String, String, Option<Backend>, f64, bool)> = ms
        .iter()
        .filter(|m| m.baseline.is_none())
        .map(|m| (m.path.clone(), m.kind.clone(), m.backend, m.stats.median, !m.flags.is_empty()))
        .collect();
    for m in ms.iter_mut() {
        let Some(want) = m.baseline.as_deref() else { continue };
        let Some((.., median, flagged)) =
            base.iter().find(|(p, k, b, ..)| p == want && *k == m.kind && *b == m.backend)
        else {
            continue;
        };
        m.ratio_to_baseline = (*median > 0.0).then(|| m.stats.median / median);
        if *flagged {
            m.flags.push(PerfFlag::BaselineFlagged);
        }
    }
}

/// The check of a measured figure: passes when clean, warns (the run still passes) when flagged.
fn outcome_of(m: &Measurement) -> (Level, CheckOutcome) {
    let disturbed = m.conditions.iter().filter(|c| c.disturbed).count();
    let summary = format!(
        "median {:.3} {} (min {:.3}, max {:.3}, n {}), ratio {} to {}, {disturbed} disturbed samples",
        m.stats.median,
        m.unit,
        m.stats.min,
        m.stats.max,
        m.stats.n,
        m.ratio_to_baseline.map_or_else(|| "-".into(), |r| format!("{r:.3}")),
        m.baseline.as_deref().unwrap_or("-"),
    );
    if m.flags.is_empty() {
        return (Level::Error, Ok(summary));
    }
    let reach = m.stats.interval_reach().map_or_else(|| "no interval".into(), |r| format!("+-{:.0}%", r * 100.0));
    let names: Vec<String> = m
        .flags
        .iter()
        .map(|f| match f {
            PerfFlag::WideInterval => format!("wide_interval ({reach})"),
            PerfFlag::DisturbedHost => format!("disturbed_host ({disturbed} of {} samples)", m.stats.n),
            other => other.as_str().to_string(),
        })
        .collect();
    (Level::Warning, Err(CheckError::Fail(format!("flagged: {}\n{summary}", names.join(", ")))))
}

pub const PERF_PODS: [&str; 3] = ["tb-p-a1", "tb-p-a2", "tb-p-b1"];

/// `iperf3 --version`'s first line on the first node, for results.json.
pub async fn iperf3_version<C: Cluster>(c: &C) -> Option<String> {
    let node = c.plan().nodes.first()?;
    let out = c.node_exec(&node.name, "iperf3 --version").await.ok()?;
    out.stdout.lines().next().map(|l| l.trim().to_string()).filter(|l| !l.is_empty())
}

const KINDS: usize = 4;

fn kinds(o: &PerfOptions) -> [Kind; KINDS] {
    [Kind::Tcp1, Kind::TcpN(o.streams), Kind::Udp, Kind::Latency]
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
            match path.ends {
                Err(why) => r.record("perf", b, &name, CheckStatus::Skip, why),
                Ok((from, to)) if r.selected(&Runner::full_name("perf", b, &name)) => figures.push(Figure {
                    kind,
                    path,
                    from,
                    to,
                    mtu: None,
                    samples: Vec::new(),
                    error: None,
                    took: Duration::ZERO,
                }),
                Ok(_) => {}
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
        for f in figures.iter_mut().filter(|f| f.error.is_none()) {
            r.stage(&format!(
                "[perf] {backend} {}: {} (round {} of {})",
                f.path.name,
                f.kind.name(),
                round + 1,
                o.warmup + o.repeats
            ));
            let started = Instant::now();
            let sample = one_run(c, f.kind, f.from, f.to, o).await;
            let after = checkpoint(c, &nodes).await;
            f.took += started.elapsed();
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
            None => done.push((measurement(f, backend), f.took)),
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
            create_tracked(c, node, &sleeper_pod(name), &created).await?;
        }
        for (node, name) in &wanted {
            pods.push(wait_running(c, node, name).await?);
        }
        Ok(pods.iter().map(|p| format!("{}@{} {}", p.name, p.node, p.ip)).collect::<Vec<_>>().join(", "))
    })
    .await;
    if pods.len() >= 2 {
        let none = backend == Backend::None;
        let paths = [
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
        out.extend(measure_paths(c, r, o, backend, &paths).await);
    }
    r.run_setup("setup", b, "perf pods removed", cleanup(c, &created)).await;
}
