//! Renders results.json into junit.xml, report.md and report.html, and loads it back for `testbed report`.
//! results.json is the source of truth; every other file is derived and can be re-rendered from it.

use std::path::{Path, PathBuf};

use chart::num;
use serde::Serialize;
use testbed_api::results::{CheckResult, CheckStatus, Measurement, RunOutcome, SuiteResults, RESULTS_SCHEMA_VERSION};

#[cfg(test)]
mod browser_tests;
mod chart;
#[cfg(test)]
mod ci_tests;
#[cfg(test)]
mod cli_tests;
mod command;
pub mod compare;
#[cfg(test)]
mod compare_tests;
pub mod compare_view;
#[cfg(test)]
mod fixtures;
pub mod history;

pub use command::{cmd_compare, cmd_history};

const MD_TEMPLATE: &str = include_str!("../../../../templates/report/report.md.tera");
const HTML_TEMPLATE: &str = include_str!("../../../../templates/report/report.html.tera");

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a results.json document", path.display())]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{}: schema_version {found} is newer than this testbed understands ({RESULTS_SCHEMA_VERSION})", path.display())]
    Schema { path: PathBuf, found: u64 },
    #[error("rendering {template}: {message}")]
    Render { template: &'static str, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io { path: path.to_path_buf(), source }
}

pub fn load(dir: &Path) -> Result<SuiteResults, ReportError> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ReportError::Parse { path: path.clone(), source })?;
    let found = raw.get("schema_version").and_then(|v| v.as_u64()).unwrap_or(0);
    if found > u64::from(RESULTS_SCHEMA_VERSION) {
        return Err(ReportError::Schema { path, found });
    }
    serde_json::from_value(raw).map_err(|source| ReportError::Parse { path, source })
}

/// Writes results.json, junit.xml, report.md and report.html into `dir` (created if missing).
pub fn write_all(dir: &Path, results: &SuiteResults) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let json = serde_json::to_string_pretty(results)
        .map_err(|e| ReportError::Render { template: "results.json", message: e.to_string() })?;
    write(dir, "results.json", &(json + "\n"))?;
    write_renders(dir, results)
}

/// The derived files only (what `testbed report` regenerates).
pub fn write_renders(dir: &Path, results: &SuiteResults) -> Result<(), ReportError> {
    write(dir, "junit.xml", &junit(results))?;
    write(dir, "report.md", &markdown(results)?)?;
    write(dir, "report.html", &html(results)?)
}

pub(super) fn write(dir: &Path, name: &str, text: &str) -> Result<(), ReportError> {
    let path = dir.join(name);
    // Write then rename: a reader never sees half a report.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// XML 1.0 text/attribute escaping; characters XML cannot carry at all (most C0 controls) become U+FFFD.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn secs(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// One `<testsuite>` per backend (plus one for backend-independent checks), in first-seen order.
fn suites_of(results: &SuiteResults) -> Vec<(String, Vec<&CheckResult>)> {
    let mut out: Vec<(String, Vec<&CheckResult>)> = Vec::new();
    for c in &results.checks {
        let name = match c.backend {
            Some(b) => format!("{}.{b}", results.suite),
            None => format!("{}.common", results.suite),
        };
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(c),
            None => out.push((name, vec![c])),
        }
    }
    out
}

pub fn junit(results: &SuiteResults) -> String {
    let s = &results.summary;
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<testsuites name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\" timestamp=\"{}\">\n",
        xml_escape(&results.suite),
        s.total,
        s.failed,
        s.errors,
        s.skipped,
        secs(results.duration_ms),
        xml_escape(&results.started)
    ));
    for (name, checks) in suites_of(results) {
        let count = |st: CheckStatus| checks.iter().filter(|c| c.status == st).count();
        let time: u64 = checks.iter().map(|c| c.duration_ms).sum();
        x.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\">\n",
            xml_escape(&name),
            checks.len(),
            count(CheckStatus::Fail),
            count(CheckStatus::Error),
            count(CheckStatus::Skip),
            secs(time)
        ));
        for c in checks {
            x.push_str(&format!(
                "    <testcase name=\"{}\" classname=\"{}.{}\" time=\"{}\"",
                xml_escape(&c.name),
                xml_escape(&results.suite),
                xml_escape(&c.group),
                secs(c.duration_ms)
            ));
            let msg = xml_escape(c.message.as_deref().unwrap_or(""));
            let details = xml_escape(c.details.as_deref().unwrap_or(""));
            match c.status {
                CheckStatus::Pass if details.is_empty() => x.push_str("/>\n"),
                CheckStatus::Pass => x.push_str(&format!(">\n      <system-out>{details}</system-out>\n    </testcase>\n")),
                CheckStatus::Fail => x.push_str(&format!(
                    ">\n      <failure message=\"{msg}\" type=\"fail\">{msg}\n{details}</failure>\n    </testcase>\n"
                )),
                CheckStatus::Error => x.push_str(&format!(
                    ">\n      <error message=\"{msg}\" type=\"infrastructure\">{msg}\n{details}</error>\n    </testcase>\n"
                )),
                CheckStatus::Skip => x.push_str(&format!(">\n      <skipped message=\"{msg}\"/>\n    </testcase>\n")),
                // JUnit has no warning: a passed testcase whose output carries the warning.
                CheckStatus::Warn => x.push_str(&format!(
                    ">\n      <system-out>WARNING: {msg}\n{details}</system-out>\n    </testcase>\n"
                )),
            }
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

#[derive(Serialize)]
struct Row<'a> {
    name: &'a str,
    group: &'a str,
    backend: String,
    status: &'static str,
    duration_ms: u64,
    message: &'a str,
    /// The message made safe for one markdown table cell.
    message_md: String,
    details: &'a str,
}

#[derive(Serialize)]
struct Segment {
    status: &'static str,
    count: usize,
    x: f64,
    width: f64,
}

#[derive(Serialize)]
struct BackendView<'a> {
    name: String,
    total: usize,
    passed: usize,
    failed: usize,
    /// Stacked bar segments (SVG units, 0..BAR_WIDTH).
    segments: Vec<Segment>,
    y: usize,
    rows: Vec<Row<'a>>,
}

#[derive(Serialize)]
struct PerfRow {
    path: String,
    backend: String,
    kind: String,
    unit: String,
    median: String,
    min: String,
    max: String,
    ci95: String,
    n: usize,
    ratio: String,
    cpu: String,
    mtu: String,
    details: String,
    /// `PerfFlag` names, or empty for a clean figure.
    flags: String,
}

#[derive(Serialize)]
struct Bar {
    label: String,
    value: String,
    y: usize,
    /// The median's bar, in pixels.
    width: f64,
    /// The 95 % interval of the mean, in pixels; None below 2 samples.
    whisker: Option<chart::Whisker>,
    /// Where the value's text starts: right of the bar and of the whisker.
    text_x: f64,
}

#[derive(Serialize)]
struct Chart {
    kind: String,
    unit: String,
    height: usize,
    bars: Vec<Bar>,
}

#[derive(Serialize)]
struct View<'a> {
    perf: Vec<PerfRow>,
    charts: Vec<Chart>,
    r: &'a SuiteResults,
    verdict: &'static str,
    duration_s: String,
    backends_list: String,
    problems: Vec<Row<'a>>,
    groups: Vec<BackendView<'a>>,
    chart_height: usize,
    bar_width: f64,
}

const BAR_WIDTH: f64 = 480.0;
const BAR_PITCH: usize = 28;

fn row(c: &CheckResult) -> Row<'_> {
    let message = c.message.as_deref().unwrap_or("");
    Row {
        name: &c.name,
        group: &c.group,
        backend: c.backend.map_or_else(|| "-".to_string(), |b| b.to_string()),
        status: c.status.as_str(),
        duration_ms: c.duration_ms,
        message,
        message_md: message.replace('|', "\\|").replace(['\n', '\r'], " "),
        details: c.details.as_deref().unwrap_or(""),
    }
}

fn verdict(results: &SuiteResults) -> &'static str {
    match results.outcome() {
        RunOutcome::Passed => "PASSED",
        RunOutcome::Failed => "FAILED",
        RunOutcome::InfraError => "INFRASTRUCTURE ERROR",
    }
}

fn perf_view(results: &SuiteResults) -> (Vec<PerfRow>, Vec<Chart>) {
    let label = |m: &Measurement| match m.backend {
        Some(b) => format!("{} ({b})", m.path),
        None => m.path.clone(),
    };
    let rows = results
        .measurements
        .iter()
        .map(|m| PerfRow {
            path: m.path.clone(),
            backend: m.backend.map_or_else(|| "-".into(), |b| b.to_string()),
            kind: m.kind.clone(),
            unit: m.unit.clone(),
            median: num(m.stats.median),
            min: num(m.stats.min),
            max: num(m.stats.max),
            ci95: match (m.stats.ci95_low, m.stats.ci95_high) {
                (Some(l), Some(h)) => format!("{} .. {}", num(l), num(h)),
                _ => "-".into(),
            },
            n: m.stats.n,
            // Which baseline a ratio divides by is part of what it means.
            ratio: match (m.ratio_to_baseline, &m.baseline) {
                (Some(r), Some(b)) => format!("{r:.2}x of {b}"),
                (Some(r), None) => format!("{r:.2}"),
                _ => "-".into(),
            },
            cpu: match (m.cpu_sender_percent, m.cpu_receiver_percent) {
                (Some(s), Some(r)) => format!("{s:.0}% / {r:.0}%"),
                _ => "-".into(),
            },
            mtu: m.mtu.map_or_else(|| "-".into(), |v| v.to_string()),
            details: match m.udp_offered_mbps {
                Some(o) => format!("offered {o} Mbit/s; {}", m.details.clone().unwrap_or_default()),
                None => m.details.clone().unwrap_or_default(),
            },
            flags: m.flags.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", "),
        })
        .collect();
    let mut kinds: Vec<&str> = Vec::new();
    for m in &results.measurements {
        if !kinds.contains(&m.kind.as_str()) {
            kinds.push(&m.kind);
        }
    }
    let charts = kinds
        .into_iter()
        .map(|kind| {
            let ms: Vec<&Measurement> = results.measurements.iter().filter(|m| m.kind == kind).collect();
            // The scale covers the intervals too: a whisker longer than the longest bar stays inside the chart.
            let scale = chart::Scale::from_zero(ms.iter().flat_map(|m| chart::extent(&m.stats)), BAR_WIDTH);
            Chart {
                kind: kind.to_string(),
                unit: ms.first().map(|m| m.unit.clone()).unwrap_or_default(),
                height: ms.len() * BAR_PITCH + 4,
                bars: ms
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let width = scale.at(m.stats.median);
                        let whisker = chart::whisker(&m.stats, &scale);
                        Bar {
                            label: label(m),
                            value: num(m.stats.median),
                            y: i * BAR_PITCH,
                            width,
                            whisker,
                            text_x: whisker.map_or(width, |w| w.hi.max(width)),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    (rows, charts)
}

fn view(results: &SuiteResults) -> View<'_> {
    let severity = |s: CheckStatus| match s {
        CheckStatus::Error => 0,
        CheckStatus::Fail => 1,
        CheckStatus::Warn => 2,
        _ => 3,
    };
    let mut problems: Vec<&CheckResult> = results
        .checks
        .iter()
        .filter(|c| matches!(c.status, CheckStatus::Fail | CheckStatus::Error | CheckStatus::Warn))
        .collect();
    problems.sort_by_key(|c| severity(c.status));
    let groups: Vec<BackendView<'_>> = suites_of(results)
        .into_iter()
        .enumerate()
        .map(|(i, (name, checks))| {
            let total = checks.len();
            let mut x = 0.0;
            let segments =
                [CheckStatus::Pass, CheckStatus::Warn, CheckStatus::Skip, CheckStatus::Fail, CheckStatus::Error]
                    .into_iter()
                    .filter_map(|st| {
                        let count = checks.iter().filter(|c| c.status == st).count();
                        (count > 0).then(|| {
                            let width = BAR_WIDTH * count as f64 / total.max(1) as f64;
                            let seg = Segment { status: st.as_str(), count, x, width };
                            x += width;
                            seg
                        })
                    })
                    .collect();
            // Problems first inside each group too.
            let mut sorted = checks.clone();
            sorted.sort_by_key(|c| severity(c.status));
            BackendView {
                name: name.rsplit('.').next().unwrap_or(&name).to_string(),
                total,
                passed: checks.iter().filter(|c| c.status == CheckStatus::Pass).count(),
                failed: checks.iter().filter(|c| matches!(c.status, CheckStatus::Fail | CheckStatus::Error)).count(),
                segments,
                y: i * BAR_PITCH,
                rows: sorted.into_iter().map(row).collect(),
            }
        })
        .collect();
    let (perf, charts) = perf_view(results);
    View {
        perf,
        charts,
        r: results,
        verdict: verdict(results),
        duration_s: format!("{:.1}", results.duration_ms as f64 / 1000.0),
        backends_list: results.metadata.backends.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", "),
        problems: problems.into_iter().map(row).collect(),
        chart_height: groups.len() * BAR_PITCH + 4,
        groups,
        bar_width: BAR_WIDTH,
    }
}

/// Renders `view` with `template`; `name` (ending in .html or .md) picks tera's escaping and names errors.
fn render_view<T: Serialize>(name: &'static str, template: &str, view: &T) -> Result<String, ReportError> {
    let mut tera = tera::Tera::default();
    // The .html name turns on tera's autoescaping; the markdown templates escape what they need themselves.
    tera.add_raw_template(name, template)
        .map_err(|e| ReportError::Render { template: name, message: format!("{e:?}") })?;
    let ctx = tera::Context::from_serialize(view)
        .map_err(|e| ReportError::Render { template: name, message: e.to_string() })?;
    tera.render(name, &ctx).map_err(|e| ReportError::Render { template: name, message: format!("{e:?}") })
}

pub fn markdown(results: &SuiteResults) -> Result<String, ReportError> {
    render_view("report.md", MD_TEMPLATE, &view(results))
}

pub fn html(results: &SuiteResults) -> Result<String, ReportError> {
    html_with(HTML_TEMPLATE, results)
}

/// `html` with another template: the browser test renders deliberately broken ones.
pub fn html_with(template: &str, results: &SuiteResults) -> Result<String, ReportError> {
    render_view("report.html", template, &view(results))
}
