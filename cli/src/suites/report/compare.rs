//! `testbed report --compare OLD NEW`: every perf figure of two runs side by side with a verdict, the document a
//! nightly CI job gates on. Pure: loading and writing are the caller's (`command.rs`).
//!
//! The rule (also in every output, `RULE`): a figure got worse (or better) only when the two 95 % confidence
//! intervals of the mean do not overlap AND the median moved beyond the tolerance, both in the same direction.
//! Non-overlapping intervals is a deliberately strict test (stricter than a two-sample t-test at 5 %): a gate that
//! cries wolf on noise gets switched off. The tolerance keeps real but small changes (a 2 % shift measured very
//! precisely) from failing the nightly.
//!
//! A figure the perf suite flagged `wide_interval` or `disturbed_host` in either run is `unstable`: its interval
//! or its samples say nothing trustworthy about the path, so it is neither worse nor better, whatever the
//! numbers. The rule alone would have said something (`indication`), which the reports show for a human to
//! look at. A comparison where too few figures are trustworthy is `inconclusive` and fails the gate: a night
//! whose every figure ran on a disturbed host must neither pass as "no regression" nor become the next baseline.

use serde::Serialize;
use testbed_api::results::{Measurement, PerfFlag, Stats, SuiteResults};
use testbed_api::Backend;

/// The statistical rule, word for word as the reports state it.
pub const RULE: &str = "A figure is worse (or better) when the 95 % confidence intervals of the mean of OLD and NEW \
do not overlap AND the median changed by more than the tolerance, both in the worse (better) direction; otherwise \
it is within noise. Throughput (Mbit/s) is better higher; latency (ms) and loss (%) are better lower. A figure with \
fewer than 2 samples on either side has no interval and is too-few-samples. A figure flagged wide_interval or \
disturbed_host in either run is unstable: neither worse nor better, whatever the numbers (the rule's indication is \
shown). Too-few-samples and unstable figures are unverified; when every figure present in both runs is unverified, \
or more than the max-unstable share of them, the comparison is inconclusive and fails the gate. A figure of OLD \
that NEW lacks is missing and fails the gate like a regression.";

/// The perf flags that make a figure unfit to compare: its interval is too wide to tell a change from noise,
/// or a sample ran while other work competed for the CPUs. `loss` changes what a figure means but is the
/// same in both runs of a steady path, and `baseline_flagged` is about the ratio, which is not compared.
pub const UNSTABLE_FLAGS: [PerfFlag; 2] = [PerfFlag::WideInterval, PerfFlag::DisturbedHost];

/// Which way a figure improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// Which way `m` improves, from its unit (and a `loss` kind, whatever its unit); None for a unit this code does
/// not know, which the caller reports as an error rather than guess.
pub fn better_of(m: &Measurement) -> Option<Better> {
    if m.kind.contains("loss") {
        return Some(Better::Lower);
    }
    match m.unit.as_str() {
        "bit/s" | "kbit/s" | "Mbit/s" | "Gbit/s" | "pps" | "ops/s" => Some(Better::Higher),
        "s" | "ms" | "us" | "µs" | "%" | "KiB" | "MiB" | "MB" => Some(Better::Lower),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Better,
    Worse,
    WithinNoise,
    TooFewSamples,
    /// Flagged (`UNSTABLE_FLAGS`) in either run: not compared (`Figure::unstable` says why).
    Unstable,
    /// In OLD, not in NEW: the figure could not be measured any more.
    Missing,
    /// In NEW only (a new backend or kind): nothing to compare with.
    New,
}

impl Verdict {
    /// True for the verdicts that fail the gate (exit 1).
    pub fn regressed(self) -> bool {
        matches!(self, Verdict::Worse | Verdict::Missing)
    }

    /// True for the verdicts of a figure present in both runs that the rule could not decide on.
    pub fn unverified(self) -> bool {
        matches!(self, Verdict::TooFewSamples | Verdict::Unstable)
    }
}

/// One side of a figure: its median and interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Side {
    pub median: f64,
    pub ci95_low: Option<f64>,
    pub ci95_high: Option<f64>,
    pub n: usize,
}

impl From<&Stats> for Side {
    fn from(s: &Stats) -> Side {
        Side { median: s.median, ci95_low: s.ci95_low, ci95_high: s.ci95_high, n: s.n }
    }
}

impl Side {
    fn interval(&self) -> Option<(f64, f64)> {
        self.ci95_low.zip(self.ci95_high)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// `tcp-1`, `latency`, ...
    pub kind: String,
    pub path: String,
    pub backend: Option<Backend>,
    pub unit: String,
    pub better: Better,
    pub old: Option<Side>,
    pub new: Option<Side>,
    /// (NEW median - OLD median) / OLD median, percent; None when a side is absent or OLD's median is 0.
    pub change_percent: Option<f64>,
    pub verdict: Verdict,
    /// Why an `unstable` figure is not compared: `disturbed_host in NEW`, `wide_interval in OLD`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unstable: Vec<String>,
    /// An `unstable` figure's verdict by the rule alone, were it trusted (better, worse, within-noise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indication: Option<Verdict>,
}

impl Figure {
    /// The figure of `m` with no verdict yet (`New`), OLD and NEW to be filled in.
    fn of(m: &Measurement, better: Better) -> Figure {
        Figure {
            kind: m.kind.clone(),
            path: m.path.clone(),
            backend: m.backend,
            unit: m.unit.clone(),
            better,
            old: None,
            new: None,
            change_percent: None,
            verdict: Verdict::New,
            unstable: Vec::new(),
            indication: None,
        }
    }

    /// `vxlan pod->pod cross-node tcp-1`, `underlay node->node latency`.
    pub fn name(&self) -> String {
        name(&self.kind, &self.path, self.backend)
    }
}

fn name(kind: &str, path: &str, backend: Option<Backend>) -> String {
    match backend {
        Some(b) => format!("{b} {path} {kind}"),
        None => format!("{path} {kind}"),
    }
}

/// A run's identity as the comparison shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRef {
    /// The directory the results.json came from, as given.
    pub dir: String,
    pub suite: String,
    pub started: String,
    pub lab: String,
}

/// A metadata field whose values differ between the runs.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// The results.json field, `metadata.kernel`.
    pub field: &'static str,
    pub old: String,
    pub new: String,
    /// True when the difference makes the runs not comparable (exit 2 unless compared anyway); false for facts
    /// that are shown but do not block (host, QEMU version).
    pub blocking: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub better: usize,
    pub worse: usize,
    pub within_noise: usize,
    pub too_few_samples: usize,
    pub unstable: usize,
    pub missing: usize,
    pub new: usize,
}

/// What the comparison means for the gate (exit codes 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Nothing got worse beyond noise and tolerance, nothing went missing.
    Ok,
    /// At least one figure is worse or missing. Exit 1.
    Regressed,
    /// Nothing regressed, but too few figures were verified (`RULE`) for that to mean anything. Exit 1: a
    /// nightly must not pass (nor become the next baseline) on figures it could not trust.
    Inconclusive,
    /// A blocking field differs and the caller did not ask to compare anyway. Exit 2.
    NotComparable,
}

/// compare.json.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub old: RunRef,
    pub new: RunRef,
    pub tolerance_percent: f64,
    /// The share of compared figures (present in both runs) that may be unverified before the comparison is
    /// inconclusive, percent.
    pub max_unstable_percent: f64,
    pub rule: &'static str,
    pub mismatches: Vec<Mismatch>,
    /// True when blocking mismatches were overridden (`--allow-mismatch`).
    pub compared_anyway: bool,
    pub figures: Vec<Figure>,
    pub counts: Counts,
    pub outcome: Outcome,
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(
        "{file}: measurements[{index}].unit `{unit}` ({figure}): no known direction (expected Mbit/s, ms, %, ...)"
    )]
    UnknownUnit { file: String, index: usize, figure: String, unit: String },
    #[error("{file}: measurements[{index}] ({figure}) appears twice")]
    Duplicate { file: String, index: usize, figure: String },
    #[error("{file}: no measurements (suite `{suite}`): --compare compares the figures of perf runs")]
    NoFigures { file: String, suite: String },
}

/// One run with the file name errors should cite.
pub struct Run<'a> {
    /// The directory as given on the command line.
    pub dir: String,
    pub results: &'a SuiteResults,
}

impl Run<'_> {
    fn file(&self) -> String {
        format!("{}/results.json", self.dir.trim_end_matches('/'))
    }

    fn reference(&self) -> RunRef {
        RunRef {
            dir: self.dir.clone(),
            suite: self.results.suite.clone(),
            started: self.results.started.clone(),
            lab: self.results.metadata.lab.clone(),
        }
    }

    /// The figures keyed by name, each with its direction; errors name the file and the index.
    fn figures(&self) -> Result<Vec<(String, &Measurement, Better)>, CompareError> {
        let mut out: Vec<(String, &Measurement, Better)> = Vec::new();
        if self.results.measurements.is_empty() {
            return Err(CompareError::NoFigures { file: self.file(), suite: self.results.suite.clone() });
        }
        for (index, m) in self.results.measurements.iter().enumerate() {
            let figure = name(&m.kind, &m.path, m.backend);
            let Some(better) = better_of(m) else {
                return Err(CompareError::UnknownUnit { file: self.file(), index, figure, unit: m.unit.clone() });
            };
            if out.iter().any(|(n, _, _)| *n == figure) {
                return Err(CompareError::Duplicate { file: self.file(), index, figure });
            }
            out.push((figure, m, better));
        }
        Ok(out)
    }
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "(unknown)".into())
}

/// Every metadata difference; `blocking` marks those that change what a figure means.
pub fn mismatches(old: &SuiteResults, new: &SuiteResults) -> Vec<Mismatch> {
    let (o, n) = (&old.metadata, &new.metadata);
    // Results from before the provider was recorded are all QEMU's.
    let provider = |m: &Option<String>| m.clone().unwrap_or_else(|| "qemu".into());
    let fields: [(&'static str, String, String, bool); 11] = [
        ("suite", old.suite.clone(), new.suite.clone(), true),
        ("metadata.topology_hash", o.topology_hash.clone(), n.topology_hash.clone(), true),
        ("metadata.accelerator", opt(&o.accelerator), opt(&n.accelerator), true),
        ("metadata.provider", provider(&o.provider), provider(&n.provider), true),
        ("metadata.kernel", opt(&o.kernel), opt(&n.kernel), true),
        ("metadata.kernel_cmdline", opt(&o.kernel_cmdline), opt(&n.kernel_cmdline), true),
        ("metadata.testbed_version", o.testbed_version.clone(), n.testbed_version.clone(), true),
        ("metadata.qemu_version", opt(&o.qemu_version), opt(&n.qemu_version), false),
        ("metadata.host", o.host.clone(), n.host.clone(), false),
        ("metadata.host_cpu", opt(&o.host_cpu), opt(&n.host_cpu), false),
        ("metadata.nodes", o.nodes.join(", "), n.nodes.join(", "), false),
    ];
    fields
        .into_iter()
        .filter(|(_, a, b, _)| a != b)
        .map(|(field, old, new, blocking)| Mismatch { field, old, new, blocking })
        .collect()
}

/// The verdict of one figure present on both sides, by `RULE`.
pub fn verdict(old: &Side, new: &Side, better: Better, tolerance_percent: f64) -> Verdict {
    let (Some((olo, ohi)), Some((nlo, nhi))) = (old.interval(), new.interval()) else {
        return Verdict::TooFewSamples;
    };
    // Up means NEW's interval lies wholly above OLD's; down, wholly below; None, they overlap.
    let moved_up = if nlo > ohi {
        Some(true)
    } else if nhi < olo {
        Some(false)
    } else {
        None
    };
    let delta = new.median - old.median;
    let beyond_tolerance = delta.abs() > tolerance_percent / 100.0 * old.median.abs();
    match moved_up {
        // The medians must agree with the intervals: if they moved the other way, the data contradict each
        // other and nothing is claimed.
        Some(up) if beyond_tolerance && (delta > 0.0) == up => {
            if up == (better == Better::Higher) {
                Verdict::Better
            } else {
                Verdict::Worse
            }
        }
        _ => Verdict::WithinNoise,
    }
}

/// What the gate was asked: the tolerance, the share of unverified figures it accepts, and whether runs with
/// blocking metadata differences are compared anyway (`--allow-mismatch`).
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    pub tolerance_percent: f64,
    pub max_unstable_percent: f64,
    pub allow_mismatch: bool,
}

/// Why `m` is unfit to compare, one entry per unstable flag: `disturbed_host in NEW`.
fn unstable_reasons(side: &str, m: &Measurement) -> Vec<String> {
    UNSTABLE_FLAGS.iter().filter(|f| m.flags.contains(f)).map(|f| format!("{} in {side}", f.as_str())).collect()
}

/// The figure `key` of OLD (`m`) against NEW (`other`, None when NEW lacks it).
fn figure_of(m: &Measurement, better: Better, other: Option<&Measurement>, tolerance_percent: f64) -> Figure {
    let o = Side::from(&m.stats);
    let mut f = Figure { old: Some(o), verdict: Verdict::Missing, ..Figure::of(m, better) };
    let Some(other) = other else { return f };
    let n = Side::from(&other.stats);
    f.new = Some(n);
    f.change_percent = (o.median != 0.0).then(|| (n.median - o.median) / o.median * 100.0);
    let by_rule = verdict(&o, &n, better, tolerance_percent);
    f.unstable = [unstable_reasons("OLD", m), unstable_reasons("NEW", other)].concat();
    (f.verdict, f.indication) = match by_rule {
        Verdict::TooFewSamples => (by_rule, None),
        _ if !f.unstable.is_empty() => (Verdict::Unstable, Some(by_rule)),
        _ => (by_rule, None),
    };
    f
}

/// Compares `new` against `old` under `gate`.
pub fn compare(old: &Run<'_>, new: &Run<'_>, gate: Gate) -> Result<Comparison, CompareError> {
    let (of, nf) = (old.figures()?, new.figures()?);
    let mut figures = Vec::new();
    for (key, m, better) in &of {
        let other = nf.iter().find(|(k, _, _)| k == key).map(|(_, n, _)| *n);
        figures.push(figure_of(m, *better, other, gate.tolerance_percent));
    }
    for (key, m, better) in &nf {
        if !of.iter().any(|(k, _, _)| k == key) {
            figures.push(Figure { new: Some(Side::from(&m.stats)), ..Figure::of(m, *better) });
        }
    }
    let mut counts = Counts::default();
    for f in &figures {
        *match f.verdict {
            Verdict::Better => &mut counts.better,
            Verdict::Worse => &mut counts.worse,
            Verdict::WithinNoise => &mut counts.within_noise,
            Verdict::TooFewSamples => &mut counts.too_few_samples,
            Verdict::Unstable => &mut counts.unstable,
            Verdict::Missing => &mut counts.missing,
            Verdict::New => &mut counts.new,
        } += 1;
    }
    let mismatches = mismatches(old.results, new.results);
    let blocked = mismatches.iter().any(|m| m.blocking);
    let outcome = if blocked && !gate.allow_mismatch {
        Outcome::NotComparable
    } else if figures.iter().any(|f| f.verdict.regressed()) {
        Outcome::Regressed
    } else if inconclusive(&figures, gate.max_unstable_percent) {
        Outcome::Inconclusive
    } else {
        Outcome::Ok
    };
    Ok(Comparison {
        old: old.reference(),
        new: new.reference(),
        tolerance_percent: gate.tolerance_percent,
        max_unstable_percent: gate.max_unstable_percent,
        rule: RULE,
        mismatches,
        compared_anyway: blocked && gate.allow_mismatch,
        figures,
        counts,
        outcome,
    })
}

/// True when none of the figures present in both runs was verified, or more than `max_percent` of them were
/// not (`RULE`). Without any figure in both runs nothing was verified either.
fn inconclusive(figures: &[Figure], max_percent: f64) -> bool {
    let compared = figures.iter().filter(|f| f.old.is_some() && f.new.is_some()).count();
    let unverified = figures.iter().filter(|f| f.verdict.unverified()).count();
    compared == unverified || unverified as f64 * 100.0 > max_percent * compared as f64
}
