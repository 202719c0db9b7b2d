//! Renders a `Comparison` into compare.md, compare.html (a chart per kind: both intervals on an axis in percent
//! of OLD's median, with the tolerance band) and compare.json.

use serde::Serialize;

use super::chart::{num, Scale};
use super::compare::{Comparison, Figure, Outcome, Side, Verdict};
use super::{render_view, ReportError};

const MD_TEMPLATE: &str = include_str!("../../../../templates/report/compare.md.tera");
const HTML_TEMPLATE: &str = include_str!("../../../../templates/report/compare.html.tera");

/// Plot width of a compare chart, in pixels; labels are left of it, the change right of it.
const PLOT: f64 = 440.0;
const ROW: usize = 30;
/// Tick labels closer than this (pixels) to another would overlap; the 100 % tick then goes.
const TICK_GAP: f64 = 48.0;

#[derive(Serialize)]
struct Row {
    name: String,
    kind: String,
    unit: String,
    better: &'static str,
    old: String,
    new: String,
    change: String,
    /// The verdict, and for an unstable figure why and what the rule alone indicated.
    verdict: String,
    regressed: bool,
}

#[derive(Serialize)]
struct Mark {
    /// Median, pixels of the plot.
    median: f64,
    /// Interval ends, pixels; equal to the median without an interval.
    lo: f64,
    hi: f64,
}

#[derive(Serialize)]
struct ChartRow {
    label: String,
    y: usize,
    old: Option<Mark>,
    new: Option<Mark>,
    text: String,
    verdict: &'static str,
}

#[derive(Serialize)]
struct Tick {
    x: f64,
    label: String,
    anchor: &'static str,
}

#[derive(Serialize)]
struct KindChart {
    kind: String,
    height: usize,
    rows: Vec<ChartRow>,
}

#[derive(Serialize)]
struct View<'a> {
    c: &'a Comparison,
    banner: &'static str,
    banner_class: &'static str,
    rows: Vec<Row>,
    regressions: Vec<Row>,
    charts: Vec<KindChart>,
    ticks: Vec<Tick>,
    band_lo: f64,
    band_hi: f64,
    hundred: f64,
    plot: f64,
}

pub fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Better => "better",
        Verdict::Worse => "worse",
        Verdict::WithinNoise => "within noise",
        Verdict::TooFewSamples => "too few samples",
        Verdict::Unstable => "unstable",
        Verdict::Missing => "missing",
        Verdict::New => "new",
    }
}

fn side_text(s: &Option<Side>) -> String {
    match s {
        None => "-".into(),
        Some(s) => match s.ci95_low.zip(s.ci95_high) {
            Some((lo, hi)) => format!("{} [{} .. {}] n={}", num(s.median), num(lo), num(hi), s.n),
            None => format!("{} n={}", num(s.median), s.n),
        },
    }
}

fn change_text(f: &Figure) -> String {
    f.change_percent.map_or_else(|| "-".into(), |c| format!("{c:+.1} %"))
}

/// `worse`; `unstable: disturbed_host in NEW (the rule says worse)`.
pub fn verdict_text(f: &Figure) -> String {
    match f.indication {
        Some(i) if f.verdict == Verdict::Unstable => {
            format!("unstable: {} (the rule says {})", f.unstable.join(", "), verdict_name(i))
        }
        _ => verdict_name(f.verdict).to_string(),
    }
}

fn row(f: &Figure) -> Row {
    Row {
        name: f.name(),
        kind: f.kind.clone(),
        unit: f.unit.clone(),
        better: match f.better {
            super::compare::Better::Higher => "higher",
            super::compare::Better::Lower => "lower",
        },
        old: side_text(&f.old),
        new: side_text(&f.new),
        change: change_text(f),
        verdict: verdict_text(f),
        regressed: f.verdict.regressed(),
    }
}

/// A side's marks in pixels of `scale`, relative to `base` (OLD's median).
fn mark(s: &Side, base: f64, scale: &Scale) -> Mark {
    let px = |v: f64| scale.at(v / base * 100.0);
    let (lo, hi) = s.ci95_low.zip(s.ci95_high).unwrap_or((s.median, s.median));
    Mark { median: px(s.median), lo: px(lo), hi: px(hi) }
}

fn view(c: &Comparison) -> View<'_> {
    let scale = relative_scale(c, PLOT);
    let mut kinds: Vec<&str> = Vec::new();
    for f in &c.figures {
        if !kinds.contains(&f.kind.as_str()) {
            kinds.push(&f.kind);
        }
    }
    let charts = kinds
        .into_iter()
        .map(|kind| {
            let rows: Vec<ChartRow> = c
                .figures
                .iter()
                .filter(|f| f.kind == kind)
                .enumerate()
                .map(|(i, f)| {
                    let base = f.old.map(|o| o.median).filter(|m| *m != 0.0);
                    ChartRow {
                        label: match f.backend {
                            Some(b) => format!("{} ({b})", f.path),
                            None => f.path.clone(),
                        },
                        y: i * ROW,
                        old: base.and_then(|b| f.old.map(|o| mark(&o, b, &scale))),
                        new: base.and_then(|b| f.new.map(|n| mark(&n, b, &scale))),
                        text: format!("{} {}", change_text(f), verdict_name(f.verdict)),
                        verdict: match f.verdict {
                            Verdict::Better => "better",
                            Verdict::Worse | Verdict::Missing => "worse",
                            Verdict::Unstable => "unstable",
                            _ => "noise",
                        },
                    }
                })
                .collect();
            KindChart { kind: kind.to_string(), height: rows.len() * ROW + 4, rows }
        })
        .collect();
    let tol = c.tolerance_percent;
    let (lo_px, hi_px) = (0.0, PLOT);
    let hundred = scale.at(100.0);
    // The axis: its two ends, and 100 % (OLD's median) where there is room for its label.
    let lo_val = scale_value(&scale, lo_px);
    let hi_val = scale_value(&scale, hi_px);
    let mut ticks = vec![
        Tick { x: lo_px, label: format!("{lo_val:.0} %"), anchor: "start" },
        Tick { x: hi_px, label: format!("{hi_val:.0} %"), anchor: "end" },
    ];
    if hundred - lo_px > TICK_GAP && hi_px - hundred > TICK_GAP {
        ticks.push(Tick { x: hundred, label: "100 %".into(), anchor: "middle" });
    }
    let (banner, banner_class) = match c.outcome {
        Outcome::Ok => ("NO REGRESSION", "ok"),
        Outcome::Regressed => ("REGRESSED", "worse"),
        Outcome::Inconclusive => ("INCONCLUSIVE", "incomparable"),
        Outcome::NotComparable => ("NOT COMPARABLE", "incomparable"),
    };
    View {
        c,
        banner,
        banner_class,
        rows: c.figures.iter().map(row).collect(),
        regressions: c.figures.iter().filter(|f| f.verdict.regressed()).map(row).collect(),
        charts,
        ticks,
        band_lo: scale.at(100.0 - tol),
        band_hi: scale.at(100.0 + tol),
        hundred,
        plot: PLOT,
    }
}

/// The compare chart's x axis: percent of OLD's median, wide enough for every interval, median and the
/// tolerance band.
pub fn relative_scale(c: &Comparison, px: f64) -> Scale {
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
    Scale::new(lo - pad, hi + pad, px)
}

/// The value at pixel `px` of `scale` (the inverse of `Scale::at`), for the axis labels.
fn scale_value(scale: &Scale, px: f64) -> f64 {
    let (a, b) = (scale.at(0.0), scale.at(1.0));
    (px - a) / (b - a)
}

pub fn markdown(c: &Comparison) -> Result<String, ReportError> {
    render_view("compare.md", MD_TEMPLATE, &view(c))
}

pub fn html(c: &Comparison) -> Result<String, ReportError> {
    html_with(HTML_TEMPLATE, c)
}

/// `html` with another template: the browser test renders deliberately broken ones.
pub fn html_with(template: &str, c: &Comparison) -> Result<String, ReportError> {
    render_view("compare.html", template, &view(c))
}

pub fn json(c: &Comparison) -> Result<String, ReportError> {
    serde_json::to_string_pretty(c)
        .map(|s| s + "\n")
        .map_err(|e| ReportError::Render { template: "compare.json", message: e.to_string() })
}
