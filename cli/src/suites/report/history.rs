//! `testbed report --history DIR...`: one self-contained HTML page with a trend chart per perf figure over many
//! runs (the nightly dashboard): the median as a line, the 95 % interval as whiskers, and a dashed line where
//! the runs stop being comparable (a new kernel, accelerator, topology or testbed version).

use serde::Serialize;
use testbed_api::results::{RunOutcome, SuiteResults};

use super::chart::{self, num, Scale};
use super::compare::mismatches;
use super::{render_view, ReportError};

const HTML_TEMPLATE: &str = include_str!("../../../../templates/report/history.html.tera");

/// Plot area of one chart, in pixels: left margin for the value labels, bottom for the dates.
const LEFT: f64 = 70.0;
const PLOT_W: f64 = 620.0;
const TOP: f64 = 10.0;
const PLOT_H: f64 = 140.0;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("no run has perf figures (measurements) in {dirs}: --history charts the perf suite's figures")]
    NoFigures { dirs: String },
    #[error(transparent)]
    Report(#[from] ReportError),
}

#[derive(Serialize)]
struct Point {
    x: f64,
    y: f64,
    /// Interval ends (pixels, y grows downwards); None below 2 samples.
    lo: Option<f64>,
    hi: Option<f64>,
    title: String,
}

#[derive(Serialize)]
struct Trend {
    name: String,
    unit: String,
    points: Vec<Point>,
    /// `x,y x,y ...` of the medians, in run order.
    line: String,
    top_label: String,
    bottom_label: String,
}

#[derive(Serialize)]
struct RunRow {
    index: usize,
    dir: String,
    started: String,
    outcome: &'static str,
    testbed_version: String,
    kernel: String,
    accelerator: String,
    topology: String,
    figures: usize,
}

#[derive(Serialize)]
struct Break {
    x: f64,
    why: String,
}

#[derive(Serialize)]
struct View {
    runs: Vec<RunRow>,
    trends: Vec<Trend>,
    breaks: Vec<Break>,
    first: String,
    last: String,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

fn key(m: &testbed_api::results::Measurement) -> (String, String, Option<testbed_api::Backend>) {
    (m.kind.clone(), m.path.clone(), m.backend)
}

fn label(k: &(String, String, Option<testbed_api::Backend>)) -> String {
    match k.2 {
        Some(b) => format!("{b} {} {}", k.1, k.0),
        None => format!("{} {}", k.1, k.0),
    }
}

/// The day of an RFC 3339 time, for the axis.
fn day(t: &str) -> String {
    t.get(..10).unwrap_or(t).to_string()
}

fn view(runs: &[(String, SuiteResults)]) -> Result<View, HistoryError> {
    let mut charted: Vec<&(String, SuiteResults)> = runs.iter().filter(|(_, r)| !r.measurements.is_empty()).collect();
    if charted.is_empty() {
        let dirs = runs.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>().join(", ");
        return Err(HistoryError::NoFigures { dirs });
    }
    // Oldest first, whatever order the shell's glob gave.
    charted.sort_by(|a, b| a.1.started.cmp(&b.1.started));
    let n = charted.len();
    let x_of = |i: usize| if n == 1 { LEFT + PLOT_W / 2.0 } else { LEFT + PLOT_W * i as f64 / (n - 1) as f64 };
    let mut keys = Vec::new();
    for (_, r) in &charted {
        for m in &r.measurements {
            if !keys.contains(&key(m)) {
                keys.push(key(m));
            }
        }
    }
    let trends = keys
        .iter()
        .map(|k| {
            let series: Vec<(usize, &str, &testbed_api::results::Measurement)> = charted
                .iter()
                .enumerate()
                .filter_map(|(i, (dir, r))| r.measurements.iter().find(|m| key(m) == *k).map(|m| (i, dir.as_str(), m)))
                .collect();
            let values: Vec<f64> = series.iter().flat_map(|(_, _, m)| chart::extent(&m.stats)).collect();
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            // Some room above and below, so that the extreme whisker caps do not sit on the chart's frame.
            let pad = if hi > lo { (hi - lo) * 0.08 } else { 0.0 };
            let (lo, hi) = ((lo - pad).max(0.0), hi + pad);
            let scale = Scale::new(lo, hi, PLOT_H);
            let y = |v: f64| TOP + PLOT_H - scale.at(v);
            let points: Vec<Point> = series
                .iter()
                .map(|(i, dir, m)| {
                    let ci = chart::interval(&m.stats);
                    Point {
                        x: x_of(*i),
                        y: y(m.stats.median),
                        lo: ci.map(|(l, _)| y(l)),
                        hi: ci.map(|(_, h)| y(h)),
                        title: format!(
                            "{} {dir}: median {} {}{}",
                            charted[*i].1.started,
                            num(m.stats.median),
                            m.unit,
                            ci.map_or_else(String::new, |(l, h)| format!(", 95% CI {} .. {}", num(l), num(h)))
                        ),
                    }
                })
                .collect();
            let line = points.iter().map(|p| format!("{:.1},{:.1}", p.x, p.y)).collect::<Vec<_>>().join(" ");
            let unit = series.first().map(|(_, _, m)| m.unit.clone()).unwrap_or_default();
            Trend {
                name: label(k),
                top_label: num(if hi > lo { hi } else { lo + 1.0 }),
                bottom_label: num(lo),
                unit,
                points,
                line,
            }
        })
        .collect();
    let breaks = charted
        .windows(2)
        .enumerate()
        .filter_map(|(i, w)| {
            let why: Vec<String> = mismatches(&w[0].1, &w[1].1)
                .into_iter()
                .filter(|m| m.blocking)
                .map(|m| format!("{}: {} -> {}", m.field, m.old, m.new))
                .collect();
            (!why.is_empty()).then(|| Break { x: (x_of(i) + x_of(i + 1)) / 2.0, why: why.join("; ") })
        })
        .collect();
    let mut all: Vec<&(String, SuiteResults)> = runs.iter().collect();
    all.sort_by(|a, b| a.1.started.cmp(&b.1.started));
    let rows = all
        .iter()
        .enumerate()
        .map(|(i, (dir, r))| RunRow {
            index: i + 1,
            dir: dir.clone(),
            started: r.started.clone(),
            outcome: match r.outcome() {
                RunOutcome::Passed => "passed",
                RunOutcome::Failed => "failed",
                RunOutcome::InfraError => "infrastructure error",
            },
            testbed_version: r.metadata.testbed_version.clone(),
            kernel: r.metadata.kernel.clone().unwrap_or_else(|| "?".into()),
            accelerator: r.metadata.accelerator.clone().unwrap_or_else(|| "?".into()),
            topology: r.metadata.topology_hash.chars().take(12).collect(),
            figures: r.measurements.len(),
        })
        .collect();
    Ok(View {
        runs: rows,
        trends,
        breaks,
        first: day(&charted[0].1.started),
        last: day(&charted[n - 1].1.started),
        left: LEFT,
        right: LEFT + PLOT_W,
        top: TOP,
        bottom: TOP + PLOT_H,
    })
}

/// history.html of `runs` (directory as given, its results), in any order.
pub fn html(runs: &[(String, SuiteResults)]) -> Result<String, HistoryError> {
    html_with(HTML_TEMPLATE, runs)
}

/// `html` with another template: the browser test renders deliberately broken ones.
pub fn html_with(template: &str, runs: &[(String, SuiteResults)]) -> Result<String, HistoryError> {
    Ok(render_view("history.html", template, &view(runs)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suites::report::compare_tests::{run, Fig};
    use testbed_api::Backend;

    fn nightly(day: u32, tcp: &[f64]) -> (String, SuiteResults) {
        let mut r = run(vec![
            Fig::new("tcp-1", tcp).backend(Backend::Vxlan).build(),
            Fig::new("latency", &[1.0, 1.1, 0.9]).backend(Backend::Vxlan).build(),
        ]);
        r.started = format!("2026-01-{day:02}T02:00:00Z");
        (format!("runs/{day}"), r)
    }

    #[test]
    fn one_trend_per_figure_oldest_first_with_whiskers_inside_the_plot() {
        // Given newest first, as `ls -r` would.
        let runs = vec![nightly(3, &[90.0, 95.0, 85.0]), nightly(1, &[100.0, 104.0, 96.0]), nightly(2, &[50.0])];
        let v = view(&runs).expect("view");
        assert_eq!(v.trends.len(), 2);
        let tcp = &v.trends[0];
        assert_eq!(tcp.name, "vxlan pod->pod cross-node tcp-1");
        assert_eq!(tcp.points.iter().map(|p| p.x).collect::<Vec<_>>(), [LEFT, LEFT + PLOT_W / 2.0, LEFT + PLOT_W]);
        assert!(tcp.points[0].title.starts_with("2026-01-01T02:00:00Z runs/1"), "{}", tcp.points[0].title);
        // The single-sample run has no whisker; every whisker end is inside the plot.
        assert!(tcp.points[1].lo.is_none());
        for p in &tcp.points {
            for y in [Some(p.y), p.lo, p.hi].into_iter().flatten() {
                assert!((TOP - 1e-9..=TOP + PLOT_H + 1e-9).contains(&y), "{y}");
            }
        }
        assert_eq!((v.first.as_str(), v.last.as_str()), ("2026-01-01", "2026-01-03"));
        assert!(v.breaks.is_empty());
        let page = html(&runs).expect("html");
        assert!(page.contains("<polyline"), "{page}");
        assert!(!page.contains("src=") && !page.contains("href="), "history.html must be self-contained");
    }

    #[test]
    fn a_kernel_change_draws_a_break_and_runs_without_figures_are_listed_only() {
        let mut runs = vec![nightly(1, &[100.0, 101.0]), nightly(2, &[100.0, 101.0])];
        runs[1].1.metadata.kernel = Some("6.12.0-1-amd64".into());
        let mut conformance = nightly(3, &[1.0]);
        conformance.1.measurements.clear();
        runs.push(conformance);
        let v = view(&runs).expect("view");
        assert_eq!(v.breaks.len(), 1);
        assert!(v.breaks[0].why.contains("metadata.kernel: 6.1.0-28-amd64 -> 6.12.0-1-amd64"), "{}", v.breaks[0].why);
        assert_eq!((v.runs.len(), v.trends[0].points.len()), (3, 2));
        let only = vec![runs.pop().expect("conformance")];
        let e = view(&only).err().expect("no figures").to_string();
        assert!(e.contains("no run has perf figures (measurements) in runs/3"), "{e}");
    }
}
