//! A figure while its rounds run, and what it becomes: its Measurement (statistics, flags), its ratio to its
//! baseline and its check.

use std::time::Duration;

use testbed_api::results::{Measurement, PerfFlag, SampleConditions, Stats};
use testbed_api::Backend;

use super::super::runner::{CheckError, CheckOutcome, Level};
use super::run::Sample;
use super::{End, Kind, PathSpec, UDP_OFFERED_MBPS, WIDE_INTERVAL_PERCENT};

/// One figure while its rounds run.
pub struct Figure<'a> {
    pub kind: Kind,
    pub path: &'a PathSpec<'a>,
    pub from: End<'a>,
    pub to: End<'a>,
    pub mtu: Option<u32>,
    pub samples: Vec<(Sample, SampleConditions)>,
    /// The value of the latest sample, warm-up rounds included: where the next UDP rate search starts.
    pub last: Option<f64>,
    pub error: Option<CheckError>,
    pub took: Duration,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// A figure's own flags (`BaselineFlagged` is added with the ratios).
fn flags_of(kind: Kind, stats: &Stats, conditions: &[SampleConditions], loss_bound: f64) -> Vec<PerfFlag> {
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
        _ => Stats::of(&losses).median > loss_bound,
    };
    if lossy {
        flags.push(PerfFlag::Loss);
    }
    flags
}

/// The measured figure; `loss_bound` is the UDP loss (percent) above which a UDP figure measures drops.
pub fn measurement(f: &Figure<'_>, backend: Backend, loss_bound: f64) -> Measurement {
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
        // `;` between samples: a UDP search's note is a list of probes itself.
        details: (!notes.is_empty()).then(|| notes.join("; ")),
        udp_offered_mbps: (f.kind == Kind::Udp).then_some(UDP_OFFERED_MBPS),
        flags: flags_of(f.kind, &stats, &conditions, loss_bound),
        stats,
        conditions,
    }
}

/// Each figure's ratio to its baseline (same kind, same backend); a flagged baseline flags the ratio. A
/// baseline may itself have one (the Service paths divide by the direct pod path).
pub fn add_ratios(ms: &mut [Measurement]) {
    let base: Vec<(String, String, Option<Backend>, f64, bool)> =
        ms.iter().map(|m| (m.path.clone(), m.kind.clone(), m.backend, m.stats.median, !m.flags.is_empty())).collect();
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
pub fn outcome_of(m: &Measurement) -> (Level, CheckOutcome) {
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
