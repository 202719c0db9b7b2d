//! `testbed report --compare OLD NEW`: every perf figure of two runs side by side with a verdict, the document a
//! nightly CI job gates on. Pure: loading and writing are the caller's (`command.rs`).
//!
//! The rule (also in every output, `RULE`): a figure got worse (or better) only when the two 95 % confidence
//! intervals of the mean do not overlap AND the median moved beyond the tolerance, both in the same direction.
//! Non-overlapping intervals is a deliberately strict test (stricter than a two-sample t-test at 5 %): a gate that
//! cries wolf on noise gets switched off. The tolerance keeps real but small changes (a 2 % shift measured very
//! precisely) from failing the nightly.

use serde::Serialize;
use testbed_api::results::{Measurement, Stats, SuiteResults};
use testbed_api::Backend;

use super::chart;

/// The statistical rule, word for word as the reports state it.
pub const RULE: &str = "A figure is worse (or better) when the 95 % confidence intervals of the mean of OLD and NEW \
do not overlap AND the median changed by more than the tolerance, both in the worse (better) direction; otherwise \
it is within noise. Throughput (Mbit/s) is better higher; latency (ms) and loss (%) are better lower. A figure with \
fewer than 2 samples on either side has no interval and is too-few-samples (reported, not gated). A figure of OLD \
that NEW lacks is missing and fails the gate like a regression.";

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
}

impl Figure {
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
    /// A blocking field differs and the caller did not ask to compare anyway. Exit 2.
    NotComparable,
}

/// compare.json.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub old: RunRef,
    pub new: RunRef,
    pub tolerance_percent: f64,
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
    let fields: [(&'static str, String, String, bool); 9] = [
        ("suite", old.suite.clone(), new.suite.clone(), true),
        ("metadata.topology_hash", o.topology_hash.clone(), n.topology_hash.clone(), true),
        ("metadata.accelerator", opt(&o.accelerator), opt(&n.accelerator), true),
        ("metadata.kernel", opt(&o.kernel), opt(&n.kernel), true),
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

/// Compares `new` against `old`. `allow_mismatch` compares runs whose blocking metadata differ anyway.
pub fn compare(
    old: &Run<'_>,
    new: &Run<'_>,
    tolerance_percent: f64,
    allow_mismatch: bool,
) -> Result<Comparison, CompareError> {
    let (of, nf) = (old.figures()?, new.figures()?);
    let mut figures = Vec::new();
    for (key, m, better) in &of {
        let other = nf.iter().find(|(k, _, _)| k == key).map(|(_, n, _)| *n);
        let (o, n) = (Side::from(&m.stats), other.map(|n| Side::from(&n.stats)));
        let verdict = n.map_or(Verdict::Missing, |n| verdict(&o, &n, *better, tolerance_percent));
        figures.push(Figure {
            kind: m.kind.clone(),
            path: m.path.clone(),
            backend: m.backend,
            unit: m.unit.clone(),
            better: *better,
            old: Some(o),
            new: n,
            change_percent: n.filter(|_| o.median != 0.0).map(|n| (n.median - o.median) / o.median * 100.0),
            verdict,
        });
    }
    for (key, m, better) in &nf {
        if !of.iter().any(|(k, _, _)| k == key) {
            figures.push(Figure {
                kind: m.kind.clone(),
                path: m.path.clone(),
                backend: m.backend,
                unit: m.unit.clone(),
                better: *better,
                old: None,
                new: Some(Side::from(&m.stats)),
                change_percent: None,
                verdict: Verdict::New,
            });
        }
    }
    let mut counts = Counts::default();
    for f in &figures {
        *match f.verdict {
            Verdict::Better => &mut counts.better,
            Verdict::Worse => &mut counts.worse,
            Verdict::WithinNoise => &mut counts.within_noise,
            Verdict::TooFewSamples => &mut counts.too_few_samples,
            Verdict::Missing => &mut counts.missing,
            Verdict::New => &mut counts.new,
        } += 1;
    }
    let mismatches = mismatches(old.results, new.results);
    let blocked = mismatches.iter().any(|m| m.blocking);
    let outcome = if blocked && !allow_mismatch {
        Outcome::NotComparable
    } else if figures.iter().any(|f| f.verdict.regressed()) {
        Outcome::Regressed
    } else {
        Outcome::Ok
    };
    Ok(Comparison {
        old: old.reference(),
        new: new.reference(),
        tolerance_percent,
        rule: RULE,
        mismatches,
        compared_anyway: blocked && allow_mismatch,
        figures,
        counts,
        outcome,
    })
}

/// The compare chart's x axis: percent of OLD's median, wide enough for every interval, median and the
/// tolerance band.
pub fn relative_scale(c: &Comparison, px: f64) -> chart::Scale {
    let mut lo = 100.0 - c.tolerance_percent;
    let mut hi = 100.0 + c.tolerance_percent;
    for f in &c.figures {
        let Some(base) = f.old.map(|o| o.median).filter(|m| *m != 0.0) else { continue };
        for s in [f.old, f.new].into_iter().flatten() {
            for v in [Some(s.median), s.ci95_low, s.ci95_high].into_iter().flatten() {
                let pct = v / base * 100.0;
                lo = lo.min(pct);
                hi = hi.max(pct);
            }
        }
    }
    // A little room on both sides so that end caps are not drawn on the chart's edge.
    let pad = (hi - lo) * 0.04;
    chart::Scale::new(lo - pad, hi + pad, px)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use testbed_api::results::{RunMetadata, Summary, RESULTS_SCHEMA_VERSION};

    pub(crate) fn measurement(kind: &str, path: &str, backend: Option<Backend>, samples: &[f64]) -> Measurement {
        Measurement {
            kind: kind.into(),
            path: path.into(),
            backend,
            unit: if kind == "latency" { "ms" } else { "Mbit/s" }.into(),
            samples: samples.to_vec(),
            stats: Stats::of(samples),
            ratio_to_baseline: None,
            baseline: None,
            cpu_sender_percent: None,
            cpu_receiver_percent: None,
            mtu: None,
            details: None,
            udp_offered_mbps: None,
            conditions: Vec::new(),
            flags: Vec::new(),
        }
    }

    pub(crate) fn run(ms: Vec<Measurement>) -> SuiteResults {
        SuiteResults {
            schema_version: RESULTS_SCHEMA_VERSION,
            suite: "perf".into(),
            started: "2026-01-01T00:00:00Z".into(),
            finished: "2026-01-01T00:10:00Z".into(),
            duration_ms: 600_000,
            metadata: RunMetadata {
                lab: "default".into(),
                topology_hash: "abc".into(),
                kernel: Some("6.1.0-28-amd64".into()),
                accelerator: Some("tcg".into()),
                testbed_version: "0.1.0".into(),
                ..RunMetadata::default()
            },
            summary: Summary::default(),
            checks: vec![],
            measurements: ms,
        }
    }

    fn cmp(old: &SuiteResults, new: &SuiteResults, tol: f64, anyway: bool) -> Comparison {
        let o = Run { dir: "old".into(), results: old };
        let n = Run { dir: "new".into(), results: new };
        compare(&o, &n, tol, anyway).expect("compare")
    }

    const X: &str = "pod->pod cross-node";

    #[test]
    fn verdicts_follow_the_rule_in_both_directions() {
        let tcp = |s: &[f64]| measurement("tcp-1", X, Some(Backend::Vxlan), s);
        let lat = |s: &[f64]| measurement("latency", X, Some(Backend::Vxlan), s);
        let old = run(vec![tcp(&[100.0, 101.0, 99.0]), lat(&[1.0, 1.01, 0.99])]);
        // Throughput down 20 % and latency up 20 %, both far outside the intervals: both worse.
        let worse = run(vec![tcp(&[80.0, 81.0, 79.0]), lat(&[1.2, 1.21, 1.19])]);
        let c = cmp(&old, &worse, 5.0, false);
        assert_eq!(c.figures.iter().map(|f| f.verdict).collect::<Vec<_>>(), [Verdict::Worse, Verdict::Worse]);
        assert_eq!(c.outcome, Outcome::Regressed);
        assert!((c.figures[0].change_percent.expect("change") + 20.0).abs() < 1e-9);
        // The mirror image is better, and passes.
        let better = run(vec![tcp(&[120.0, 121.0, 119.0]), lat(&[0.8, 0.81, 0.79])]);
        let c = cmp(&old, &better, 5.0, false);
        assert_eq!(c.figures.iter().map(|f| f.verdict).collect::<Vec<_>>(), [Verdict::Better, Verdict::Better]);
        assert_eq!(c.outcome, Outcome::Ok);
    }

    #[test]
    fn overlap_or_tolerance_keeps_a_change_within_noise() {
        let tcp = |s: &[f64]| measurement("tcp-1", X, None, s);
        // -20 % median, but the spread is so wide that the intervals overlap.
        let c = cmp(&run(vec![tcp(&[100.0, 50.0, 150.0])]), &run(vec![tcp(&[80.0, 40.0, 120.0])]), 5.0, false);
        assert_eq!((c.figures[0].verdict, c.outcome), (Verdict::WithinNoise, Outcome::Ok));
        // -3 %, measured precisely (no overlap), but inside a 5 % tolerance; with 2 % it is worse.
        let (old, new) = (run(vec![tcp(&[100.0, 100.1, 99.9])]), run(vec![tcp(&[97.0, 97.1, 96.9])]));
        assert_eq!(cmp(&old, &new, 5.0, false).figures[0].verdict, Verdict::WithinNoise);
        assert_eq!(cmp(&old, &new, 2.0, false).figures[0].verdict, Verdict::Worse);
    }

    #[test]
    fn medians_against_the_intervals_claim_nothing() {
        // NEW's interval lies above OLD's but its median moved down (one huge sample): contradictory data.
        let old = Side { median: 100.0, ci95_low: Some(95.0), ci95_high: Some(105.0), n: 3 };
        let new = Side { median: 90.0, ci95_low: Some(106.0), ci95_high: Some(400.0), n: 3 };
        assert_eq!(verdict(&old, &new, Better::Higher, 5.0), Verdict::WithinNoise);
    }

    #[test]
    fn missing_figures_fail_new_ones_and_single_samples_do_not() {
        let old = run(vec![
            measurement("tcp-1", X, Some(Backend::Vxlan), &[100.0, 101.0]),
            measurement("udp", X, Some(Backend::Vxlan), &[50.0]),
        ]);
        let new = run(vec![
            measurement("udp", X, Some(Backend::Vxlan), &[10.0]),
            measurement("tcp-1", X, Some(Backend::HostGw), &[100.0, 101.0]),
        ]);
        let c = cmp(&old, &new, 5.0, false);
        let v: Vec<(String, Verdict)> = c.figures.iter().map(|f| (f.name(), f.verdict)).collect();
        assert_eq!(
            v,
            [
                ("vxlan pod->pod cross-node tcp-1".to_string(), Verdict::Missing),
                ("vxlan pod->pod cross-node udp".to_string(), Verdict::TooFewSamples),
                ("host-gw pod->pod cross-node tcp-1".to_string(), Verdict::New),
            ]
        );
        assert_eq!((c.counts.missing, c.counts.too_few_samples, c.counts.new), (1, 1, 1));
        assert_eq!(c.outcome, Outcome::Regressed);
    }

    #[test]
    fn a_different_kernel_is_not_comparable_unless_told() {
        let old = run(vec![measurement("tcp-1", X, None, &[100.0, 101.0, 99.0])]);
        let mut new = run(vec![measurement("tcp-1", X, None, &[50.0, 51.0, 49.0])]);
        new.metadata.kernel = Some("6.12.0-1-amd64".into());
        new.metadata.host = "elsewhere".into();
        let c = cmp(&old, &new, 5.0, false);
        assert_eq!(c.outcome, Outcome::NotComparable);
        let fields: Vec<(&str, bool)> = c.mismatches.iter().map(|m| (m.field, m.blocking)).collect();
        assert_eq!(fields, [("metadata.kernel", true), ("metadata.host", false)]);
        // Compared anyway, the halved throughput is a regression.
        let c = cmp(&old, &new, 5.0, true);
        assert_eq!((c.outcome, c.compared_anyway), (Outcome::Regressed, true));
        // A host alone does not block.
        new.metadata.kernel = old.metadata.kernel.clone();
        new.measurements = old.measurements.clone();
        assert_eq!(cmp(&old, &new, 5.0, false).outcome, Outcome::Ok);
        for field in ["topology_hash", "accelerator", "testbed_version"] {
            let mut other = old.clone();
            match field {
                "topology_hash" => other.metadata.topology_hash = "def".into(),
                "accelerator" => other.metadata.accelerator = Some("kvm".into()),
                _ => other.metadata.testbed_version = "0.2.0".into(),
            }
            assert_eq!(cmp(&old, &other, 5.0, false).outcome, Outcome::NotComparable, "{field}");
        }
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let mut m = measurement("tcp-1", X, None, &[1.0, 2.0]);
        m.unit = "furlongs".into();
        let bad = run(vec![measurement("latency", X, None, &[1.0, 2.0]), m]);
        let good = run(vec![measurement("tcp-1", X, None, &[1.0, 2.0])]);
        let o = Run { dir: "runs/old/".into(), results: &good };
        let n = Run { dir: "runs/new".into(), results: &bad };
        let e = compare(&o, &n, 5.0, false).expect_err("unknown unit").to_string();
        assert!(e.starts_with("runs/new/results.json: measurements[1].unit `furlongs`"), "{e}");
        let dup = run(vec![good.measurements[0].clone(), good.measurements[0].clone()]);
        let e = compare(&o, &Run { dir: "d".into(), results: &dup }, 5.0, false).expect_err("dup").to_string();
        assert!(e.contains("d/results.json: measurements[1] (pod->pod cross-node tcp-1) appears twice"), "{e}");
        let none = run(vec![]);
        let e = compare(&Run { dir: "c".into(), results: &none }, &n, 5.0, false).expect_err("none").to_string();
        assert!(e.contains("c/results.json: no measurements"), "{e}");
    }

    #[test]
    fn the_relative_axis_covers_every_interval_and_the_tolerance() {
        let old = run(vec![measurement("tcp-1", X, None, &[100.0, 110.0, 90.0])]);
        let new = run(vec![measurement("tcp-1", X, None, &[10.0, 300.0, 20.0])]);
        let c = cmp(&old, &new, 5.0, false);
        let s = relative_scale(&c, 400.0);
        let n = c.figures[0].new.expect("new");
        for v in [n.ci95_low.expect("lo"), n.ci95_high.expect("hi"), n.median] {
            let x = s.at(v);
            assert!((0.0..=400.0).contains(&x), "{v} -> {x}");
        }
    }
}
