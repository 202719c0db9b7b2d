//! One sample of one figure: an iperf3 run (TCP, UDP at the fixed offer), a UDP rate search, or a ping run;
//! and the readings around the samples (host and guest counters, the path's MTU).

use testbed_api::ExecResponse;

use super::super::cluster::{Cluster, ClusterError};
use super::super::harness::evidence;
use super::super::hostload::{Checkpoint, CpuTimes};
use super::super::probe::{self, IperfRun};
use super::super::runner::CheckError;
use super::udp_search::{Probe, Search};
use super::{End, Kind, PerfOptions, OMIT_S, PERF_PORT, UDP_OFFERED_MBPS};

/// Seconds each probe of a UDP rate search measures (after the omitted first second): UDP has no slow start
/// to wait out, and a probe at 40 Mbit/s still sends 8000 datagrams, enough to resolve 1 % loss.
pub const UDP_PROBE_S: u32 = 2;
/// Datagram size of every UDP run: below every pod MTU, so no run measures fragmentation.
const UDP_LEN: u32 = 1200;

pub struct Sample {
    pub value: f64,
    pub cpu: (Option<f64>, Option<f64>),
    pub note: String,
    pub loss: Option<f64>,
    /// A UDP run at the fixed offer, as a probe: where the round's rate search starts.
    pub probe: Option<Probe>,
}

/// Where a UDP rate search of one round starts (`Search::seeded`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SearchSeed {
    /// The previous round's result for the same figure.
    pub prev_best: Option<f64>,
    /// This round's fixed-offer run on the same path.
    pub fixed: Option<Probe>,
}

pub async fn one_run<C: Cluster>(
    c: &C,
    kind: Kind,
    from: End<'_>,
    to: End<'_>,
    o: &PerfOptions,
    seed: SearchSeed,
) -> Result<Sample, CheckError> {
    let d = o.duration_s;
    let args = match kind {
        Kind::Latency => return ping(c, from, to, d).await,
        Kind::UdpMax => return udp_max(c, from, to, o, seed).await,
        Kind::Tcp1 => format!("-t {d} -O {OMIT_S} -P 1"),
        Kind::TcpN(n) => format!("-t {d} -O {OMIT_S} -P {n}"),
        Kind::Udp => format!("-t {d} -O {OMIT_S} -u -b {UDP_OFFERED_MBPS}M -l {UDP_LEN}"),
    };
    let run = iperf(c, from, to, &args, d, kind == Kind::Udp).await?;
    let note = match (run.retransmits, run.lost_percent) {
        (Some(r), _) => format!("{r} retransmits"),
        (_, Some(l)) => format!("{l:.2}% lost"),
        _ => String::new(),
    };
    let probe = (kind == Kind::Udp).then(|| probe_of(UDP_OFFERED_MBPS, &run));
    Ok(Sample { value: run.mbps, cpu: (run.cpu_sender, run.cpu_receiver), note, loss: run.lost_percent, probe })
}

async fn ping<C: Cluster>(c: &C, from: End<'_>, to: End<'_>, d: u32) -> Result<Sample, CheckError> {
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
    Ok(Sample { value: avg, cpu: (None, None), note, loss: Some(loss), probe: None })
}

/// One iperf3 server and client pair, `d` seconds after the omitted one.
async fn iperf<C: Cluster>(
    c: &C,
    from: End<'_>,
    to: End<'_>,
    args: &str,
    d: u32,
    udp: bool,
) -> Result<IperfRun, CheckError> {
    let server = format!("timeout {} iperf3 -s -1 -p {PERF_PORT} -J", d + OMIT_S + 60);
    let client = probe::iperf_client(to.ip(), to.port(), args);
    let limit = u64::from(d + OMIT_S) + 70;
    let (s, cl): (Result<ExecResponse, ClusterError>, _) =
        futures::join!(to.run(c, &server, limit), from.run(c, &client, limit));
    let (_s, cl) = (s?, cl?);
    if cl.timed_out {
        let (ip, port) = (to.ip(), to.port());
        let why = format!("no iperf3 run to {ip}:{port} finished within {limit} s");
        return Err(CheckError::Fail(format!("{why}\n{}", evidence(&client, &cl))));
    }
    probe::parse_iperf_client(&cl.stdout, udp).map_err(|e| CheckError::Fail(format!("{e}\n{}", evidence(&client, &cl))))
}

/// A UDP run as a search probe: `IperfRun::mbps` is what arrived, so what was sent is that before the loss.
fn probe_of(offered: f64, run: &IperfRun) -> Probe {
    let lost_percent = run.lost_percent.unwrap_or(0.0);
    let sent = if lost_percent < 100.0 { run.mbps / (1.0 - lost_percent / 100.0) } else { offered };
    Probe { offered, sent, lost_percent }
}

/// The highest rate `from` -> `to` carries with loss at most `o.udp_loss_bound`: probes of `UDP_PROBE_S`
/// seconds until `Search` stops. The sample is what arrived at the best passing probe (0 when none passed:
/// the figure is then flagged `loss`), and its note lists every probe.
async fn udp_max<C: Cluster>(
    c: &C,
    from: End<'_>,
    to: End<'_>,
    o: &PerfOptions,
    seed: SearchSeed,
) -> Result<Sample, CheckError> {
    let mut s = Search::seeded(seed.prev_best, seed.fixed, UDP_OFFERED_MBPS, o.udp_loss_bound, o.udp_probes);
    let stop = loop {
        match s.next() {
            Ok(offer) => {
                // iperf3 reads `K` as 1000 bit/s for rates: whole kbit/s keep fractional Mbit/s exact enough.
                let args = format!("-t {UDP_PROBE_S} -O {OMIT_S} -u -b {:.0}K -l {UDP_LEN}", offer * 1000.0);
                let run = iperf(c, from, to, &args, UDP_PROBE_S, true).await?;
                s.record(probe_of(offer, &run));
            }
            Err(stop) => break stop,
        }
    };
    let value = s.best().map_or(0.0, |b| b.received());
    Ok(Sample {
        value,
        cpu: (None, None),
        note: s.describe(stop),
        loss: s.telling().map(|p| p.lost_percent),
        probe: None,
    })
}

/// The host's counters and each of `nodes`' /proc/stat, read together between two samples.
pub async fn checkpoint<C: Cluster>(c: &C, nodes: &[String]) -> Checkpoint {
    let reads = nodes.iter().map(|n| async move {
        let out = c.node_exec(n, "head -1 /proc/stat").await.ok()?;
        CpuTimes::parse(&out.stdout).map(|t| (n.clone(), t))
    });
    let guests = futures::future::join_all(reads).await.into_iter().flatten().collect();
    Checkpoint { host: c.host_counters(), guests }
}

/// The MTU of the interface `from` sends to `to` through, read on `from`.
pub async fn path_mtu<C: Cluster>(c: &C, from: End<'_>, to: End<'_>) -> Result<u32, CheckError> {
    let cmd = probe::route_mtu_script(to.ip());
    let r = from.run(c, &cmd, 30).await?;
    probe::route_mtu(&r.stdout)
        .map(|(_, mtu)| mtu)
        .ok_or_else(|| CheckError::Fail(format!("no route MTU towards {}\n{}", to.ip(), evidence(&cmd, &r))))
}
