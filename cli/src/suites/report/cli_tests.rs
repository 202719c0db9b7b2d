//! `testbed report --compare` and `--history` end to end, in process, on real results.json fixtures: the files
//! they write and the exit codes a CI job gates on.

use testbed_api::results::{Measurement, PerfFlag};

use super::fixtures::{later, perf_run, testbed, write_run, REGRESSED};

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn compare_exits_0_within_noise_1_on_a_regression_2_when_not_comparable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (old, same, worse, kernel) =
        (tmp.path().join("old"), tmp.path().join("same"), tmp.path().join("worse"), tmp.path().join("kernel"));
    write_run(&old, &perf_run());
    // +-1 % everywhere: inside every interval.
    write_run(&same, &later(2, |_| 1.01));
    // One figure down 30 %.
    write_run(&worse, &later(3, |name| if name == REGRESSED { 0.7 } else { 1.0 }));
    let mut k = later(4, |_| 1.0);
    k.metadata.kernel = Some("6.12.0-1-amd64".into());
    write_run(&kernel, &k);

    assert_eq!(testbed(&["report", "--compare", path(&old), path(&same)]), 0);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(same.join("compare.json")).expect("compare.json")).expect("json");
    assert_eq!(json["outcome"], "ok");
    assert!(json["figures"].as_array().expect("figures").iter().all(|f| f["verdict"] == "within-noise"), "{json}");
    for f in ["compare.md", "compare.html"] {
        assert!(same.join(f).is_file(), "{f}");
    }

    assert_eq!(testbed(&["report", "--compare", path(&old), path(&worse)]), 1);
    let md = std::fs::read_to_string(worse.join("compare.md")).expect("compare.md");
    assert!(md.contains("# testbed perf comparison: REGRESSED"), "{md}");
    assert!(md.contains(&format!("| {REGRESSED} (Mbit/s, higher is better) |")), "{md}");
    assert!(md.contains("| -30.0 % | **worse** |"), "{md}");
    // 30 % is inside a 40 % tolerance.
    assert_eq!(testbed(&["report", "--compare", path(&old), path(&worse), "--tolerance", "40"]), 0);

    // Another kernel: not comparable (2), whatever the figures say; compared anyway, the figures decide.
    assert_eq!(testbed(&["report", "--compare", path(&old), path(&kernel)]), 2);
    let md = std::fs::read_to_string(kernel.join("compare.md")).expect("compare.md");
    assert!(
        md.contains("NOT COMPARABLE") && md.contains("| metadata.kernel | 6.1.0-28-amd64 | 6.12.0-1-amd64 | yes |")
    );
    assert_eq!(testbed(&["report", "--compare", path(&old), path(&kernel), "--allow-mismatch"]), 0);

    // --out puts the files elsewhere and leaves NEW alone.
    let out = tmp.path().join("cmp");
    assert_eq!(testbed(&["report", "--compare", path(&old), path(&same), "--out", path(&out)]), 0);
    assert!(out.join("compare.json").is_file());
}

#[test]
fn compare_does_not_gate_on_unstable_figures_and_fails_when_nothing_is_trustworthy() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (old, one, all) = (tmp.path().join("old"), tmp.path().join("one"), tmp.path().join("all"));
    write_run(&old, &perf_run());
    // The regressed figure's samples ran on a disturbed host: it is not called worse, the rest passes.
    let mut r = later(3, |name| if name == REGRESSED { 0.7 } else { 1.0 });
    let disturbed = |m: &mut Measurement| m.flags = vec![PerfFlag::DisturbedHost];
    r.measurements
        .iter_mut()
        .filter(|m| format!("{} {} {}", opt(m.backend), m.path, m.kind) == REGRESSED)
        .for_each(disturbed);
    write_run(&one, &r);
    assert_eq!(testbed(&["report", "--compare", path(&old), path(&one)]), 0);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(one.join("compare.json")).expect("compare.json")).expect("json");
    let f = json["figures"].as_array().expect("figures").iter().find(|f| f["verdict"] == "unstable").expect("one");
    assert_eq!((&f["unstable"][0], &f["indication"]), (&"disturbed_host in NEW".into(), &"worse".into()), "{f}");
    let md = std::fs::read_to_string(one.join("compare.md")).expect("compare.md");
    assert!(md.contains("| -30.0 % | unstable: disturbed_host in NEW (the rule says worse) |"), "{md}");
    assert!(std::fs::read_to_string(one.join("compare.html")).expect("html").contains("g class=\"new unstable\""));
    // Every figure disturbed: the gate cannot say "no regression" and fails (1), as inconclusive.
    let mut r = later(4, |_| 1.0);
    r.measurements.iter_mut().for_each(disturbed);
    write_run(&all, &r);
    assert_eq!(testbed(&["report", "--compare", path(&old), path(&all)]), 1);
    let json = std::fs::read_to_string(all.join("compare.json")).expect("compare.json");
    assert!(json.contains("\"outcome\": \"inconclusive\""), "{json}");
    assert!(std::fs::read_to_string(all.join("compare.md")).expect("md").contains("INCONCLUSIVE"));
    assert_eq!(testbed(&["report", "--compare", path(&old), path(&all), "--max-unstable", "101"]), 2);
    assert_eq!(testbed(&["report", path(&all), "--max-unstable", "10"]), 2, "--max-unstable needs --compare");
}

fn opt(b: Option<testbed_api::Backend>) -> String {
    b.map(|b| b.to_string()).unwrap_or_default()
}

#[test]
fn compare_and_history_reject_bad_input_with_exit_2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    write_run(&run, &perf_run());
    let missing = tmp.path().join("missing");
    assert_eq!(testbed(&["report", "--compare", path(&run), path(&missing)]), 2);
    assert_eq!(testbed(&["report", "--compare", path(&run)]), 2, "NEW is required");
    assert_eq!(testbed(&["report", "--compare", path(&run), path(&run), "--tolerance=-1"]), 2);
    assert_eq!(testbed(&["report", path(&run), "--tolerance", "5"]), 2, "--tolerance needs --compare");
    assert_eq!(
        testbed(&["report", "--history", path(&run), "--allow-mismatch"]),
        2,
        "--allow-mismatch needs --compare"
    );
    assert_eq!(testbed(&["report", path(&run), "--out", path(&run)]), 2, "DIR renders in place");
    assert_eq!(testbed(&["report", path(&run), "--history", path(&run)]), 2, "one mode at a time");
    assert_eq!(testbed(&["report"]), 2);
    // A conformance run has no figures: nothing to compare or chart.
    let mut conformance = perf_run();
    conformance.suite = "conformance".into();
    conformance.measurements.clear();
    let c = tmp.path().join("conformance");
    write_run(&c, &conformance);
    assert_eq!(testbed(&["report", "--compare", path(&c), path(&run)]), 2);
    assert_eq!(testbed(&["report", "--history", path(&c), "--out", path(tmp.path())]), 2);
}

#[test]
fn history_writes_one_page_with_a_trend_per_figure() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut dirs = Vec::new();
    for day in 1..=5 {
        let d = tmp.path().join(format!("nightly-{day}"));
        write_run(&d, &later(day, |name| if name == REGRESSED { 1.0 - 0.05 * f64::from(day) } else { 1.0 }));
        dirs.push(d);
    }
    let out = tmp.path().join("dash");
    let mut args = vec!["report", "--history"];
    args.extend(dirs.iter().map(|d| path(d)));
    args.extend(["--out", path(&out)]);
    assert_eq!(testbed(&args), 0);
    let page = std::fs::read_to_string(out.join("history.html")).expect("history.html");
    let figures = perf_run().measurements.len();
    assert_eq!(page.matches("<polyline class=\"trend\"").count(), figures);
    assert_eq!(page.matches("<circle class=\"median\"").count(), figures * 5);
    // tera's HTML escaping turns `>` into `&gt;`.
    assert!(page.contains(&format!("<h3>{} (Mbit", REGRESSED.replace('>', "&gt;"))), "{page}");
}
