//! Every HTML report (run, compare, history) opened in a real headless browser (Debian's chromium): a script
//! appended to a copy of the page measures the laid-out boxes and the test fails when a chart draws nothing, a
//! mark or label lies outside its chart (an SVG clips it: cut off), two labels of a chart overlap, a label has no
//! width (no font), or a chart is wider than the window. The second test shows each check failing on a
//! deliberately broken template.
//!
//! chromium missing: the tests say so and pass, except with CI=true, where they fail (tests/packages.txt lists
//! chromium, so CI must have it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::compare::{compare, Comparison, Gate, Run};
use super::fixtures::{later, perf_run, REGRESSED};
use super::{compare_view, history};

/// Window the pages are laid out in: a laptop screen.
const WINDOW: &str = "--window-size=1280,2000";
const TIMEOUT: Duration = Duration::from_secs(90);

/// Measures every SVG of the page and writes `{"problems": [...], "svgs": N, "marks": N}` into a <pre>.
const CHECKER: &str = r#"<pre id="tb-layout"></pre><script>
(function () {
  const problems = [];
  let svgs = 0, marks = 0;
  const vw = document.documentElement.clientWidth;
  const box = r => `[${r.left.toFixed(1)},${r.top.toFixed(1)} .. ${r.right.toFixed(1)},${r.bottom.toFixed(1)}]`;
  document.querySelectorAll('svg').forEach((svg, i) => {
    svgs++;
    const name = `svg ${i} (${svg.getAttribute('aria-label') || 'unnamed'})`;
    const b = svg.getBoundingClientRect();
    if (b.width < 1 || b.height < 1) problems.push(`${name}: empty box ${box(b)}`);
    if (b.right > vw + 0.5) problems.push(`${name}: wider than the window (${b.right} > ${vw})`);
    let drawn = 0;
    const texts = [];
    svg.querySelectorAll('rect, line, circle, polyline, path, text').forEach(el => {
      const r = el.getBoundingClientRect();
      const what = el.tagName === 'text' ? `text "${el.textContent}"` : `<${el.tagName}>`;
      if (el.tagName === 'text') {
        if (el.textContent.trim() !== '' && r.width < 1) problems.push(`${name}: ${what} has no width (no font?)`);
        texts.push([what, r]);
      } else if (r.width > 0 || r.height > 0) {
        drawn++;
      }
      if (r.width === 0 && r.height === 0) return;
      const t = 0.5;
      if (r.left < b.left - t || r.right > b.right + t || r.top < b.top - t || r.bottom > b.bottom + t)
        problems.push(`${name}: ${what} cut off: ${box(r)} outside ${box(b)}`);
    });
    if (drawn === 0) problems.push(`${name}: draws nothing but text`);
    marks += drawn;
    for (let a = 0; a < texts.length; a++) for (let c = a + 1; c < texts.length; c++) {
      const [p, q] = [texts[a][1], texts[c][1]];
      const w = Math.min(p.right, q.right) - Math.max(p.left, q.left);
      const h = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
      if (w > 1 && h > 1) problems.push(`${name}: ${texts[a][0]} overlaps ${texts[c][0]}`);
    }
  });
  document.getElementById('tb-layout').textContent = JSON.stringify({ problems, svgs, marks });
})();
</script>"#;

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TESTBED_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n))).find(|p| p.is_file())
}

/// chromium, or None after saying why the test does not run; panics on CI, which must have it.
fn browser() -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but chromium is not installed (tests/packages.txt lists it; or set TESTBED_CHROMIUM)"
        );
        eprintln!("chromium not found: the browser checks of the HTML reports did not run");
    }
    found
}

#[derive(Debug, serde::Deserialize)]
struct Layout {
    problems: Vec<String>,
    svgs: usize,
    marks: usize,
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&")
}

/// Lays `html` out in chromium and returns what the checker measured.
fn layout(chromium: &Path, html: &str) -> Layout {
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("page.html");
    let checked = match html.rfind("</body>") {
        Some(i) => format!("{}{CHECKER}{}", &html[..i], &html[i..]),
        None => panic!("no </body> in the page:\n{html}"),
    };
    std::fs::write(&page, checked).expect("write page");
    let profile = dir.path().join("profile");
    let out = dir.path().join("dom.html");
    let mut child = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--no-first-run", WINDOW, "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("dom file"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", chromium.display()));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for chromium") {
            break s;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let dom = std::fs::read_to_string(&out).expect("dom");
    assert!(status.success(), "chromium failed ({status}):\n{err}");
    let start = dom.find("<pre id=\"tb-layout\">").map(|i| i + "<pre id=\"tb-layout\">".len());
    let json = start.and_then(|s| dom[s..].find("</pre>").map(|e| unescape(&dom[s..s + e])));
    let json = json.unwrap_or_else(|| panic!("the layout checker did not run; DOM:\n{dom}\nstderr:\n{err}"));
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("checker output {json}: {e}"))
}

/// Lays out every page in parallel (one chromium each): (name, layout).
fn layouts(chromium: &Path, pages: Vec<(&'static str, String)>) -> Vec<(&'static str, Layout)> {
    std::thread::scope(|s| {
        let handles: Vec<_> =
            pages.into_iter().map(|(name, html)| (name, s.spawn(move || layout(chromium, &html)))).collect();
        handles.into_iter().map(|(n, h)| (n, h.join().expect("layout thread"))).collect()
    })
}

fn comparison(factor: impl Fn(&str) -> f64) -> Comparison {
    let (old, new) = (perf_run(), later(2, factor));
    let run = |dir: &str, results| Run { dir: dir.into(), results };
    let gate = Gate { tolerance_percent: 5.0, max_unstable_percent: 50.0, allow_mismatch: false };
    compare(&run("results/nightly-1", &old), &run("results/nightly-2", &new), gate).expect("compare")
}

fn history_runs() -> Vec<(String, testbed_api::results::SuiteResults)> {
    (1..=7)
        .map(|day| {
            let drift = 1.0 - 0.04 * f64::from(day);
            (format!("results/nightly-{day}"), later(day, |n| if n == REGRESSED { drift } else { 1.0 }))
        })
        .collect()
}

/// A conformance run with every status, for the checks-per-backend chart.
fn conformance_run() -> testbed_api::results::SuiteResults {
    use crate::suites::fake::{plan, FakeCluster, Faults};
    use testbed_api::Backend;
    let c = FakeCluster::new(plan(2, Backend::Vxlan), Faults { snat: true, ..Faults::default() });
    let ui = crate::ui::Ui::new(crate::ui::OutputFormat::Json, true);
    super::fixtures::block_on(crate::suites::run_conformance(
        &c,
        &ui,
        &[Backend::Vxlan, Backend::None],
        crate::suites::runner::Selection::default(),
        &[],
    ))
}

#[test]
fn every_html_report_renders_in_chromium_with_nothing_cut_off() {
    let Some(chromium) = browser() else { return };
    // A perf run whose one figure has a very wide interval: its whisker reaches far beyond every bar.
    let mut wide = perf_run();
    let m = wide.measurements.iter_mut().find(|m| m.kind == "tcp-1").expect("tcp-1");
    m.samples = vec![100.0, 900.0, 120.0];
    m.stats = testbed_api::results::Stats::of(&m.samples);
    let pages = vec![
        ("run report (perf)", super::html(&wide).expect("html")),
        ("run report (conformance)", super::html(&conformance_run()).expect("html")),
        (
            "compare (regressed)",
            compare_view::html(&comparison(|n| if n == REGRESSED { 0.7 } else { 1.0 })).expect("html"),
        ),
        // Huge changes both ways stretch the axis: the 100 % tick must give way to the end labels.
        (
            "compare (wild)",
            compare_view::html(&comparison(|n| if n.contains("udp") { 9.0 } else { 0.1 })).expect("html"),
        ),
        ("history", history::html(&history_runs()).expect("html")),
    ];
    for (name, l) in layouts(&chromium, pages) {
        assert!(l.problems.is_empty(), "{name}: {:#?}", l.problems);
        assert!(l.svgs > 0 && l.marks >= l.svgs, "{name}: {} charts, {} marks", l.svgs, l.marks);
    }
}

/// `template` with `from` replaced by `to`; panics when `from` is not in it, so a fault cannot silently vanish.
fn broken(template: &str, from: &str, to: &str) -> String {
    assert!(template.contains(from), "the fault's anchor `{from}` is not in the template");
    template.replace(from, to)
}

#[test]
fn the_browser_check_catches_cut_off_empty_and_overlapping_charts() {
    let Some(chromium) = browser() else { return };
    let run_t = include_str!("../../../../templates/report/report.html.tera");
    let cmp_t = include_str!("../../../../templates/report/compare.html.tera");
    let hist_t = include_str!("../../../../templates/report/history.html.tera");
    let perf = perf_run();
    let c = comparison(|n| if n == REGRESSED { 0.7 } else { 1.0 });
    let pages: Vec<(&str, Result<String, String>)> = vec![
        // The perf chart as wide as its bars only: the labels' column pushes bars, whiskers and values out.
        (
            "narrow",
            super::html_with(&broken(run_t, "width=\"{{ bar_width + 380 }}\"", "width=\"{{ bar_width }}\""), &perf)
                .map_err(|e| e.to_string()),
        ),
        // The bars and whiskers not displayed: the perf charts draw nothing but labels.
        (
            "empty",
            super::html_with(
                &broken(
                    &broken(run_t, "<rect class=\"bar\"", "<rect display=\"none\" class=\"bar\""),
                    "<g class=\"whisker\">",
                    "<g display=\"none\">",
                ),
                &perf,
            )
            .map_err(|e| e.to_string()),
        ),
        // The change written over the figure's label.
        (
            "overlap",
            compare_view::html_with(&broken(cmp_t, "<text x=\"{{ plot + 262 }}\"", "<text x=\"40\""), &c)
                .map_err(|e| e.to_string()),
        ),
        // The chart shorter than its plot and date labels.
        (
            "history",
            history::html_with(
                &broken(hist_t, "height=\"{{ bottom + 30 }}\"", "height=\"{{ bottom - 20 }}\""),
                &history_runs(),
            )
            .map_err(|e| e.to_string()),
        ),
    ];
    let pages = pages.into_iter().map(|(n, h)| (n, h.unwrap_or_else(|e| panic!("{n}: {e}")))).collect();
    let found: Vec<(&str, Layout)> = layouts(&chromium, pages);
    let expect =
        [("narrow", "cut off"), ("empty", "draws nothing but text"), ("overlap", "overlaps"), ("history", "cut off")];
    for ((name, l), (want_name, want)) in found.iter().zip(expect) {
        assert_eq!(*name, want_name);
        assert!(l.problems.iter().any(|p| p.contains(want)), "{name}: expected `{want}` among {:#?}", l.problems);
    }
}
