//! Suite results: the versioned `results.json` document every report (junit.xml, report.md, report.html) is
//! rendered from. Types only, no I/O, so `testbed report` and external tools read exactly what `run` wrote.

use serde::{Deserialize, Serialize};

use crate::Backend;

/// Bumped when a field changes meaning or is removed; adding optional fields keeps the version.
pub const RESULTS_SCHEMA_VERSION: u32 = 1;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// The check ran and the system behaved as expected.
    Pass,
    /// The check ran and the system under test misbehaved.
    Fail,
    /// Not applicable here (e.g. cross-node checks on a single node or with backend `none`).
    Skip,
    /// A warning-level check failed; it does not fail the run.
    Warn,
    /// The check could not run because the infrastructure failed (SSH, agent, pods never Running).
    Error,
}

impl CheckStatus {
    /// The lowercase name used in results.json and the reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Fail => "fail",
            CheckStatus::Skip => "skip",
            CheckStatus::Warn => "warn",
            CheckStatus::Error => "error",
        }
    }
}

impl std::fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One named check; one JUnit testcase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Full name, unique in a run: `[pod-network] vxlan pod->pod cross-node: tcp`.
    pub name: String,
    /// Group (JUnit classname suffix): `pod-network`, `mtu`, `overlay`, `sandbox`, `cgroups`, `declared`, `setup`.
    pub group: String,
    /// The backend active while the check ran; None for checks that do not depend on it (cgroups, namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// Outcome; decides the run's exit code with the others (`RunOutcome`).
    pub status: CheckStatus,
    /// Wall time the check took, in milliseconds.
    pub duration_ms: u64,
    /// Why it failed, was skipped or warned; one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Evidence: commands' output, measured values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

/// Where and with what the suite ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunMetadata {
    /// Name of the lab the suite ran against.
    pub lab: String,
    /// sha256 of the topology file (from the plan).
    pub topology_hash: String,
    /// Guest kernel release as the agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The first node's kernel command line as its agent reports it (`up` adds arguments under TCG).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_cmdline: Option<String>,
    /// Version of the host's QEMU that ran the guests (it affects every figure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_version: Option<String>,
    /// `kvm` or `tcg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// What made the machines, `qemu` or `vagrant` (their NICs differ: taps on a bridge, or UDP sockets on
    /// loopback). Absent from results written before there was a choice, which are all `qemu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Backends the run covered, in order.
    pub backends: Vec<Backend>,
    /// Version of the `testbed` binary that ran the suite.
    pub testbed_version: String,
    /// Host name of the machine that ran the suite.
    pub host: String,
    /// The host's CPU model (/proc/cpuinfo), which bounds every figure under TCG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cpu: Option<String>,
    /// vCPUs and memory of each node, e.g. `node-a 1 vCPU 512 MiB`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// `iperf3 --version` in the guests (perf suite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iperf3_version: Option<String>,
    /// Logical CPUs of the host (what the QEMU threads of every node share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cpus: Option<u32>,
    /// How the perf suite measured (perf suite only): two runs compare only under the same settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perf_settings: Option<PerfSettings>,
}

/// The perf suite's measuring settings, as the run used them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerfSettings {
    /// Measured rounds; every figure gets one sample per round.
    pub repeats: u32,
    /// Discarded rounds before the measured ones.
    pub warmup_rounds: u32,
    /// Seconds each iperf3 run measures (ping runs last as long).
    pub duration_s: u32,
    /// Seconds iperf3 runs before it starts measuring (`--omit`: TCP slow start, neighbour resolution).
    pub omit_s: u32,
    /// Parallel streams of the `tcp-N` figure.
    pub streams: u32,
    /// The rate every UDP run offers; a UDP figure is the rate received at this offer.
    pub udp_offered_mbps: f64,
    /// Loss above which a UDP figure is flagged `loss` (percent): it then measures drops, not the path. Also
    /// the bound of the `udp-max` figures: the highest rate whose loss stayed at most this.
    pub udp_loss_bound_percent: f64,
    /// Probes per `udp-max` search (0: no `udp-max` figures; older runs: absent, 0).
    #[serde(default)]
    pub udp_search_probes: u32,
    /// Seconds each probe of a `udp-max` search measures.
    #[serde(default)]
    pub udp_probe_s: u32,
    /// A figure whose 95 % interval is wider than this share of its median on either side is flagged
    /// `wide_interval` (percent).
    pub wide_interval_percent: f64,
    /// A sample is `disturbed` when the host spent more than this many CPUs on work other than the lab's QEMU
    /// processes and testbed itself.
    pub disturbed_other_cpus: f64,
    /// A sample is `disturbed` when the host's or a guest's steal, or the host's iowait, exceeded this
    /// share of its CPU time (percent).
    pub disturbed_steal_iowait_percent: f64,
}

/// How many checks ended in each status; `total` is the sum of the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of checks in the run.
    pub total: usize,
    /// Checks with status `pass`.
    pub passed: usize,
    /// Checks with status `fail`.
    pub failed: usize,
    /// Checks with status `skip`.
    pub skipped: usize,
    /// Checks with status `warn`.
    pub warned: usize,
    /// Checks with status `error` (infrastructure failures).
    pub errors: usize,
}

impl Summary {
    /// Counts the statuses of `checks`.
    pub fn of(checks: &[CheckResult]) -> Summary {
        let count = |s: CheckStatus| checks.iter().filter(|c| c.status == s).count();
        Summary {
            total: checks.len(),
            passed: count(CheckStatus::Pass),
            failed: count(CheckStatus::Fail),
            skipped: count(CheckStatus::Skip),
            warned: count(CheckStatus::Warn),
            errors: count(CheckStatus::Error),
        }
    }
}

/// What a finished run means for its caller (the CLI maps it to exit codes 0, 1, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every check passed, was skipped or only warned.
    Passed,
    /// At least one check failed and none hit an infrastructure error.
    Failed,
    /// At least one check could not run because the infrastructure failed.
    InfraError,
}

/// One performance figure (perf suite): the samples of repeated runs and their statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// `tcp-1`, `tcp-4`, `udp`, `latency`.
    pub kind: String,
    /// `underlay node->node` (the cross-node baseline), `underlay node->self` (the same-node baseline: a node
    /// to its own underlay address, over its loopback), `pod->pod same-node`, `pod->pod cross-node`.
    pub path: String,
    /// The backend active while the figure was measured. The baselines do not depend on it but are measured
    /// with every backend, in the same rounds as the figures they divide (older runs: None, measured once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// `Mbit/s` or `ms`.
    pub unit: String,
    /// One value per measured run (warm-up runs excluded).
    pub samples: Vec<f64>,
    /// Statistics of `samples`.
    pub stats: Stats,
    /// Median divided by the median of `baseline` (same kind, same backend, same rounds). For latency a
    /// ratio above 1 is slower than the baseline; for throughput below 1 is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_to_baseline: Option<f64>,
    /// The path `ratio_to_baseline` divides by: `underlay node->self` for same-node paths, `underlay
    /// node->node` for cross-node ones (older runs: absent, always the cross-node baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Mean CPU use reported by iperf3 on the sending and receiving hosts, percent of one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_sender_percent: Option<f64>,
    /// Same as `cpu_sender_percent`, on the receiving host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_receiver_percent: Option<f64>,
    /// MTU of the sender's interface on this path, read from the interface the sender's route to the
    /// receiver uses (`ip route get`, `ip link`) before the rounds: the underlay NIC's for the cross-node
    /// baseline, `lo`'s for the same-node one, the pod's eth0 for pod paths. Throughput scales with it.
    /// (Runs before the `conditions` field existed computed it from the plan.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Extra facts (UDP loss, TCP retransmits, ping loss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// UDP only: the rate each run offered (`iperf3 -b`); the figure is what arrived at that offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_offered_mbps: Option<f64>,
    /// One entry per sample, in `samples` order: what the host and the guests did while it ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<SampleConditions>,
    /// Why the figure should not be compared as it is; empty for a clean figure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<PerfFlag>,
}

/// Why a perf figure is not fit to compare (the thresholds are in `PerfSettings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PerfFlag {
    /// The 95 % interval of the mean reaches further from the median than `wide_interval_percent` (or there
    /// is a single sample): another run's figure can differ by that much with nothing changed.
    WideInterval,
    /// At least one sample ran while the host or a guest was disturbed (`SampleConditions::disturbed`).
    DisturbedHost,
    /// Packets were lost: a ping lost echoes (its RTT average covers only the survivors), or a UDP run lost
    /// more than `udp_loss_bound_percent` (it measured drops at the offered rate).
    Loss,
    /// The baseline this figure's ratio divides by is flagged itself, so the ratio is as doubtful.
    BaselineFlagged,
}

impl PerfFlag {
    /// The snake_case name used in results.json and the reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PerfFlag::WideInterval => "wide_interval",
            PerfFlag::DisturbedHost => "disturbed_host",
            PerfFlag::Loss => "loss",
            PerfFlag::BaselineFlagged => "baseline_flagged",
        }
    }
}

/// What the host and the guests did while one perf sample ran, from counters read before and after it.
/// A field is None when its counter could not be read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleConditions {
    /// The host's 1-minute load average at the end of the sample (/proc/loadavg). For reading only: it
    /// lags by a minute and counts the lab's own QEMU threads, so no flag depends on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_load1: Option<f64>,
    /// CPUs the host spent on anything but the lab's QEMU processes and testbed itself (/proc/stat minus
    /// their /proc/PID/stat), averaged over the sample: other people's work competing with the guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_other_cpus: Option<f64>,
    /// Share of the host's CPU time stolen by the hypervisor under it (/proc/stat `steal`), percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_steal_percent: Option<f64>,
    /// Share of the host's CPU time idle waiting for I/O (/proc/stat `iowait`), percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_iowait_percent: Option<f64>,
    /// Highest steal share among the guests the figure runs on (the guest's /proc/stat), percent. TCG has
    /// no steal clock, so it is 0 there; it counts under KVM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_steal_percent: Option<f64>,
    /// Ping echoes or UDP datagrams lost in the sample, percent (None for TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_percent: Option<f64>,
    /// A threshold of `PerfSettings` was crossed: the sample ran on a disturbed host.
    pub disturbed: bool,
}

/// Median, extremes, mean and a 95 % confidence interval of the mean (Student's t; None below 2 samples).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Number of samples.
    pub n: usize,
    /// Middle sample (the mean of the two middle ones for an even count): one slow run does not move it,
    /// so `ratio_to_baseline` compares medians.
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean of the samples.
    pub mean: f64,
    /// Lower end of the interval, clamped to 0 (no figure here is negative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci95_low: Option<f64>,
    /// Upper end of the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci95_high: Option<f64>,
}

/// Two-sided 95 % Student's t quantiles for 1..=30 degrees of freedom; 1.96 beyond.
const T95: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120,
    2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

impl Stats {
    /// Statistics of `samples` in any order; all zero for none.
    pub fn of(samples: &[f64]) -> Stats {
        let n = samples.len();
        if n == 0 {
            return Stats::default();
        }
        let mut v = samples.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        let mean = v.iter().sum::<f64>() / n as f64;
        let (ci95_low, ci95_high) = if n >= 2 {
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let t = T95.get(n - 2).copied().unwrap_or(1.96);
            let half = t * (var / n as f64).sqrt();
            // Every figure (throughput, latency) is non-negative: with few, spread samples Student's interval
            // reaches below 0, which says "anything down to nothing" and is shown as 0.
            (Some((mean - half).max(0.0)), Some(mean + half))
        } else {
            (None, None)
        };
        Stats { n, median, min: v[0], max: v[n - 1], mean, ci95_low, ci95_high }
    }

    /// How far the 95 % interval reaches from the median, as a share of the median (the larger side); None
    /// without an interval (fewer than 2 samples) or with a zero median.
    pub fn interval_reach(&self) -> Option<f64> {
        let (low, high) = (self.ci95_low?, self.ci95_high?);
        (self.median > 0.0).then(|| (self.median - low).max(high - self.median) / self.median)
    }
}

/// `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteResults {
    /// `RESULTS_SCHEMA_VERSION` of the program that wrote the document: which meaning its fields have.
    pub schema_version: u32,
    /// `conformance` or `perf`.
    pub suite: String,
    /// RFC 3339, UTC.
    pub started: String,
    /// RFC 3339, UTC.
    pub finished: String,
    /// Wall time from `started` to `finished`.
    pub duration_ms: u64,
    /// Where and with what the suite ran.
    pub metadata: RunMetadata,
    /// Counts of `checks` by status.
    pub summary: Summary,
    /// Every check, in the order it ran.
    pub checks: Vec<CheckResult>,
    /// Perf suite only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<Measurement>,
}

impl SuiteResults {
    /// Infrastructure errors win over failures: a run that could not check everything proves nothing.
    pub fn outcome(&self) -> RunOutcome {
        if self.checks.iter().any(|c| c.status == CheckStatus::Error) {
            RunOutcome::InfraError
        } else if self.checks.iter().any(|c| c.status == CheckStatus::Fail) {
            RunOutcome::Failed
        } else {
            RunOutcome::Passed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, status: CheckStatus) -> CheckResult {
        CheckResult {
            name: name.into(),
            group: "g".into(),
            backend: Some(Backend::Vxlan),
            status,
            duration_ms: 1,
            message: None,
            details: None,
        }
    }

    fn results(checks: Vec<CheckResult>) -> SuiteResults {
        SuiteResults {
            schema_version: RESULTS_SCHEMA_VERSION,
            suite: "conformance".into(),
            started: "2026-01-01T00:00:00Z".into(),
            finished: "2026-01-01T00:00:01Z".into(),
            duration_ms: 1000,
            metadata: RunMetadata::default(),
            summary: Summary::of(&checks),
            checks,
            measurements: vec![],
        }
    }

    #[test]
    fn outcome_prefers_infra_errors_then_failures() {
        use CheckStatus::*;
        assert_eq!(results(vec![check("a", Pass), check("b", Warn), check("c", Skip)]).outcome(), RunOutcome::Passed);
        assert_eq!(results(vec![check("a", Pass), check("b", Fail)]).outcome(), RunOutcome::Failed);
        assert_eq!(results(vec![check("a", Error), check("b", Fail)]).outcome(), RunOutcome::InfraError);
        assert_eq!(results(vec![]).outcome(), RunOutcome::Passed);
    }

    #[test]
    fn stats_median_extremes_and_interval() {
        let s = Stats::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.n, s.median, s.min, s.max, s.mean), (3, 2.0, 1.0, 3.0, 2.0));
        // sd 1, t(2) 4.303: half width 4.303 / sqrt(3)
        let half = 4.303 / 3f64.sqrt();
        assert!((s.ci95_high.expect("ci") - (2.0 + half)).abs() < 1e-9);
        // 2 - 2.48 would be below 0, which no throughput or latency can be.
        assert_eq!(s.ci95_low, Some(0.0));
        let s = Stats::of(&[10.0, 12.0, 11.0]);
        assert!((s.ci95_low.expect("ci") - (11.0 - half)).abs() < 1e-9);
        assert_eq!(Stats::of(&[1.0, 2.0, 3.0, 10.0]).median, 2.5);
        // The interval of [10, 11, 12] reaches 2.48 / 11 from the median on both sides.
        let reach = Stats::of(&[10.0, 12.0, 11.0]).interval_reach().expect("reach");
        assert!((reach - half / 11.0).abs() < 1e-9, "{reach}");
        assert_eq!(Stats::of(&[5.0]).interval_reach(), None);
        let one = Stats::of(&[5.0]);
        assert_eq!((one.median, one.ci95_low), (5.0, None));
        assert_eq!(Stats::of(&[]).n, 0);
    }

    #[test]
    fn summary_counts_each_status() {
        use CheckStatus::*;
        let s =
            Summary::of(&[check("a", Pass), check("b", Pass), check("c", Fail), check("d", Warn), check("e", Error)]);
        assert_eq!((s.total, s.passed, s.failed, s.skipped, s.warned, s.errors), (5, 2, 1, 0, 1, 1));
    }

    #[test]
    fn status_serializes_lowercase_and_round_trips() {
        let r = results(vec![check("a", CheckStatus::Warn)]);
        let text = serde_json::to_string(&r).expect("serialize");
        assert!(text.contains(r#""status":"warn""#), "{text}");
        assert!(text.contains(r#""backend":"vxlan""#), "{text}");
        let back: SuiteResults = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, r);
    }
}
