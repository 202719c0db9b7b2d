//! Unit tests of `compare`: the rule, the flags, the gate's outcomes and its errors. `Fig` builds the figures.

use super::compare::*;
use super::compare_view::relative_scale;
use testbed_api::results::{Measurement, PerfFlag, RunMetadata, Stats, SuiteResults, Summary, RESULTS_SCHEMA_VERSION};
use testbed_api::Backend;

/// A perf figure with only what the comparison reads: kind, path, backend, samples, flags (and the unit its
/// kind implies: ms for latency, Mbit/s otherwise).
pub(crate) struct Fig(Measurement);

impl Fig {
    pub(crate) fn new(kind: &str, samples: &[f64]) -> Fig {
        Fig(Measurement {
            kind: kind.into(),
            path: X.into(),
            backend: None,
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
        })
    }
    pub(crate) fn backend(mut self, b: Backend) -> Fig {
        self.0.backend = Some(b);
        self
    }
    fn flags(mut self, flags: &[PerfFlag]) -> Fig {
        self.0.flags = flags.to_vec();
        self
    }
    fn unit(mut self, unit: &str) -> Fig {
        self.0.unit = unit.into();
        self
    }
    pub(crate) fn build(self) -> Measurement {
        self.0
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

fn gate(tol: f64, anyway: bool) -> Gate {
    Gate { tolerance_percent: tol, max_unstable_percent: 50.0, allow_mismatch: anyway }
}

fn cmp_gate(old: &SuiteResults, new: &SuiteResults, g: Gate) -> Comparison {
    let o = Run { dir: "old".into(), results: old };
    let n = Run { dir: "new".into(), results: new };
    compare(&o, &n, g).expect("compare")
}

fn cmp(old: &SuiteResults, new: &SuiteResults, tol: f64, anyway: bool) -> Comparison {
    cmp_gate(old, new, gate(tol, anyway))
}

fn verdicts(c: &Comparison) -> Vec<Verdict> {
    c.figures.iter().map(|f| f.verdict).collect()
}

const X: &str = "pod->pod cross-node";
const STEADY: [f64; 3] = [100.0, 101.0, 99.0];
const HALVED: [f64; 3] = [50.0, 51.0, 49.0];

#[test]
fn verdicts_follow_the_rule_in_both_directions() {
    let tcp = |s: &[f64]| Fig::new("tcp-1", s).backend(Backend::Vxlan).build();
    let lat = |s: &[f64]| Fig::new("latency", s).backend(Backend::Vxlan).build();
    let old = run(vec![tcp(&STEADY), lat(&[1.0, 1.01, 0.99])]);
    // Throughput down 20 % and latency up 20 %, both far outside the intervals: both worse.
    let worse = run(vec![tcp(&[80.0, 81.0, 79.0]), lat(&[1.2, 1.21, 1.19])]);
    let c = cmp(&old, &worse, 5.0, false);
    assert_eq!(verdicts(&c), [Verdict::Worse, Verdict::Worse]);
    assert_eq!(c.outcome, Outcome::Regressed);
    assert!((c.figures[0].change_percent.expect("change") + 20.0).abs() < 1e-9);
    // The mirror image is better, and passes.
    let better = run(vec![tcp(&[120.0, 121.0, 119.0]), lat(&[0.8, 0.81, 0.79])]);
    let c = cmp(&old, &better, 5.0, false);
    assert_eq!(verdicts(&c), [Verdict::Better, Verdict::Better]);
    assert_eq!(c.outcome, Outcome::Ok);
}

#[test]
fn overlap_or_tolerance_keeps_a_change_within_noise() {
    let tcp = |s: &[f64]| Fig::new("tcp-1", s).build();
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
        Fig::new("tcp-1", &[100.0, 101.0]).backend(Backend::Vxlan).build(),
        Fig::new("udp", &[50.0]).backend(Backend::Vxlan).build(),
    ]);
    let new = run(vec![
        Fig::new("udp", &[10.0]).backend(Backend::Vxlan).build(),
        Fig::new("tcp-1", &[100.0, 101.0]).backend(Backend::HostGw).build(),
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
fn a_disturbed_figure_is_neither_worse_nor_better() {
    let old = run(vec![Fig::new("tcp-1", &STEADY).build(), Fig::new("tcp-4", &STEADY).build()]);
    // Both halved; tcp-1's samples in NEW ran on a disturbed host, tcp-4's are clean.
    let new = run(vec![
        Fig::new("tcp-1", &HALVED).flags(&[PerfFlag::DisturbedHost, PerfFlag::Loss]).build(),
        Fig::new("tcp-4", &HALVED).build(),
    ]);
    let c = cmp(&old, &new, 5.0, false);
    assert_eq!(verdicts(&c), [Verdict::Unstable, Verdict::Worse]);
    let f = &c.figures[0];
    // `loss` alone does not make a figure unstable; the rule's own word is kept for a human to read.
    assert_eq!(
        (f.unstable.as_slice(), f.indication),
        (&["disturbed_host in NEW".to_string()][..], Some(Verdict::Worse))
    );
    assert_eq!((c.counts.unstable, c.counts.worse, c.outcome), (1, 1, Outcome::Regressed));
    // A wide interval in OLD makes the improvement untrustworthy as well.
    let wide = run(vec![Fig::new("tcp-1", &HALVED).flags(&[PerfFlag::WideInterval]).build()]);
    let c = cmp(&wide, &run(vec![Fig::new("tcp-1", &STEADY).build()]), 5.0, false);
    assert_eq!((c.figures[0].verdict, c.figures[0].indication), (Verdict::Unstable, Some(Verdict::Better)));
    assert_eq!(c.figures[0].unstable, ["wide_interval in OLD"]);
    // Flags that are not about stability leave the verdict alone.
    let loss = run(vec![Fig::new("tcp-1", &HALVED).flags(&[PerfFlag::Loss, PerfFlag::BaselineFlagged]).build()]);
    let c = cmp(&run(vec![Fig::new("tcp-1", &STEADY).build()]), &loss, 5.0, false);
    assert_eq!((c.figures[0].verdict, c.outcome), (Verdict::Worse, Outcome::Regressed));
}

#[test]
fn too_few_trustworthy_figures_make_the_gate_inconclusive() {
    let kinds = ["tcp-1", "tcp-4", "udp", "latency"];
    let old = run(kinds.iter().map(|k| Fig::new(k, &STEADY).build()).collect());
    let flagged = |n: usize| {
        let fig = |(i, k): (usize, &&str)| {
            let f = Fig::new(k, &STEADY);
            if i < n { f.flags(&[PerfFlag::DisturbedHost]) } else { f }.build()
        };
        run(kinds.iter().enumerate().map(fig).collect())
    };
    // Every figure disturbed: nothing verified, whatever --max-unstable allows.
    let all = flagged(4);
    let c = cmp_gate(&old, &all, Gate { max_unstable_percent: 100.0, ..gate(5.0, false) });
    assert_eq!((c.counts.unstable, c.outcome), (4, Outcome::Inconclusive));
    // Half of them: at the default 50 % still conclusive, above a 40 % bound not.
    let half = flagged(2);
    assert_eq!(cmp(&old, &half, 5.0, false).outcome, Outcome::Ok);
    let strict = Gate { max_unstable_percent: 40.0, ..gate(5.0, false) };
    assert_eq!(cmp_gate(&old, &half, strict).outcome, Outcome::Inconclusive);
    // Single-sample figures are unverified too.
    let one = run(kinds.iter().map(|k| Fig::new(k, &[100.0]).build()).collect());
    assert_eq!(cmp(&one, &one, 5.0, false).outcome, Outcome::Inconclusive);
    // A trustworthy regression outranks an inconclusive rest.
    let mut regressed = flagged(3);
    regressed.measurements[3] = Fig::new("latency", &[200.0, 201.0, 199.0]).build();
    assert_eq!(cmp(&old, &regressed, 5.0, false).outcome, Outcome::Regressed);
}

#[test]
fn a_different_kernel_is_not_comparable_unless_told() {
    let old = run(vec![Fig::new("tcp-1", &STEADY).build()]);
    let mut new = run(vec![Fig::new("tcp-1", &HALVED).build()]);
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
    for field in ["topology_hash", "accelerator", "provider", "testbed_version", "kernel_cmdline"] {
        let mut other = old.clone();
        match field {
            "topology_hash" => other.metadata.topology_hash = "def".into(),
            "kernel_cmdline" => other.metadata.kernel_cmdline = Some("console=ttyS0 mitigations=off".into()),
            "accelerator" => other.metadata.accelerator = Some("kvm".into()),
            "provider" => other.metadata.provider = Some("vagrant".into()),
            _ => other.metadata.testbed_version = "0.2.0".into(),
        }
        assert_eq!(cmp(&old, &other, 5.0, false).outcome, Outcome::NotComparable, "{field}");
    }
    // Results that predate the provider field are QEMU's.
    let mut qemu = old.clone();
    qemu.metadata.provider = Some("qemu".into());
    assert_eq!(cmp(&old, &qemu, 5.0, false).outcome, Outcome::Ok);
}

#[test]
fn errors_name_the_file_and_the_field() {
    let bad =
        run(vec![Fig::new("latency", &[1.0, 2.0]).build(), Fig::new("tcp-1", &[1.0, 2.0]).unit("furlongs").build()]);
    let good = run(vec![Fig::new("tcp-1", &[1.0, 2.0]).build()]);
    let o = Run { dir: "runs/old/".into(), results: &good };
    let n = Run { dir: "runs/new".into(), results: &bad };
    let e = compare(&o, &n, gate(5.0, false)).expect_err("unknown unit").to_string();
    assert!(e.starts_with("runs/new/results.json: measurements[1].unit `furlongs`"), "{e}");
    let dup = run(vec![good.measurements[0].clone(), good.measurements[0].clone()]);
    let e = compare(&o, &Run { dir: "d".into(), results: &dup }, gate(5.0, false)).expect_err("dup").to_string();
    assert!(e.contains("d/results.json: measurements[1] (pod->pod cross-node tcp-1) appears twice"), "{e}");
    let none = run(vec![]);
    let e = compare(&Run { dir: "c".into(), results: &none }, &n, gate(5.0, false)).expect_err("none").to_string();
    assert!(e.contains("c/results.json: no measurements"), "{e}");
}

#[test]
fn the_relative_axis_covers_every_interval_and_the_tolerance() {
    let old = run(vec![Fig::new("tcp-1", &[100.0, 110.0, 90.0]).build()]);
    let new = run(vec![Fig::new("tcp-1", &[10.0, 300.0, 20.0]).build()]);
    let c = cmp(&old, &new, 5.0, false);
    let s = relative_scale(&c, 400.0);
    let n = c.figures[0].new.expect("new");
    for v in [n.ci95_low.expect("lo"), n.ci95_high.expect("hi"), n.median] {
        let x = s.at(v);
        assert!((0.0..=400.0).contains(&x), "{v} -> {x}");
    }
}
