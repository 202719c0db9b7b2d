//! docs/ci.md's nightly jobs (docs/ci/*.yml, embedded verbatim in docs/ci.md): both parse as YAML and have the
//! parts the doc promises, every `testbed` command in them parses with the real command line, and the
//! `testbed report` commands run exactly as written against real results.json fixtures laid out as the jobs lay
//! them out (the VM commands are the e2e tests' to run).

use std::path::{Path, PathBuf};

use clap::Parser;

use super::fixtures::{later, perf_run, testbed, write_run, REGRESSED};

const GITHUB: &str = include_str!("../../../../docs/ci/github-nightly.yml");
const GITLAB: &str = include_str!("../../../../docs/ci/gitlab-nightly.yml");
const DOC: &str = include_str!("../../../../docs/ci.md");

/// What the jobs grep for in compare.json to tell "not comparable" from other bad input (both exit 2).
const NOT_COMPARABLE: &str = r#""outcome": "not-comparable""#;
/// What the jobs grep for to tell an inconclusive night from a regression (both exit 1).
const INCONCLUSIVE: &str = r#""outcome": "inconclusive""#;

/// The fenced ```yaml blocks of a markdown document.
fn yaml_blocks(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in md.lines() {
        match (&mut cur, line) {
            (None, "```yaml") => cur = Some(String::new()),
            (Some(_), "```") => out.extend(cur.take()),
            (Some(c), l) => {
                c.push_str(l);
                c.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

/// Every `testbed ...` command line of the job's shell scripts, without a trailing `|| ...`.
fn commands(scripts: &[String]) -> Vec<String> {
    scripts
        .iter()
        .flat_map(|s| s.lines())
        .map(str::trim)
        .filter(|l| l.starts_with("testbed "))
        .map(|l| l.split(" ||").next().unwrap_or(l).trim().to_string())
        .collect()
}

fn github_scripts(doc: &serde_yaml::Value) -> Vec<String> {
    let steps = doc["jobs"]["nightly"]["steps"].as_sequence().expect("jobs.nightly.steps");
    steps.iter().filter_map(|s| s["run"].as_str().map(str::to_string)).collect()
}

fn gitlab_scripts(doc: &serde_yaml::Value) -> Vec<String> {
    let job = &doc["testbed-nightly"];
    ["before_script", "script", "after_script"]
        .iter()
        .flat_map(|k| job[k].as_sequence().cloned().unwrap_or_default().into_iter().map(move |v| (k, v)))
        // A `key: value` inside an unquoted command makes YAML read a mapping, which GitLab rejects.
        .map(|(k, v)| v.as_str().map(str::to_string).unwrap_or_else(|| panic!("GitLab {k}: not a string: {v:?}")))
        .collect()
}

/// A `testbed report` line's arguments with its paths resolved under `root` and `DIR/*/` globs expanded, as
/// the job's shell would in its working directory.
fn resolve(line: &str, root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut words = line.split_whitespace().skip(1).peekable();
    while let Some(w) = words.next() {
        assert!(!w.contains('$') && !w.contains('"'), "`{line}`: the test resolves plain words only");
        if w == "--tolerance" || w == "--max-unstable" {
            out.push(w.to_string());
            out.extend(words.next().map(str::to_string));
        } else if w.starts_with('-') || w == "report" {
            out.push(w.to_string());
        } else if let Some(dir) = w.strip_suffix("*/") {
            let mut subs: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
                .unwrap_or_else(|e| panic!("`{line}`: {dir}: {e}"))
                .map(|e| e.expect("dir entry").path())
                .filter(|p| p.is_dir())
                .collect();
            subs.sort();
            out.extend(subs.iter().map(|p| p.display().to_string()));
        } else {
            out.push(root.join(w).display().to_string());
        }
    }
    out
}

fn run_line(line: &str, root: &Path) -> u8 {
    let args = resolve(line, root);
    testbed(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn docs_ci_md_embeds_both_jobs_verbatim() {
    let blocks = yaml_blocks(DOC);
    assert_eq!(blocks.len(), 2, "docs/ci.md: expected the GitHub and the GitLab job");
    assert_eq!(blocks[0], GITHUB, "docs/ci.md's first yaml block differs from docs/ci/github-nightly.yml");
    assert_eq!(blocks[1], GITLAB, "docs/ci.md's second yaml block differs from docs/ci/gitlab-nightly.yml");
}

#[test]
fn both_jobs_parse_and_do_what_the_doc_says() {
    let gh: serde_yaml::Value = serde_yaml::from_str(GITHUB).expect("docs/ci/github-nightly.yml");
    let gl: serde_yaml::Value = serde_yaml::from_str(GITLAB).expect("docs/ci/gitlab-nightly.yml");
    assert!(gh["on"]["schedule"].is_sequence(), "GitHub: nightly schedule");
    let uses: Vec<&str> = gh["jobs"]["nightly"]["steps"]
        .as_sequence()
        .expect("steps")
        .iter()
        .filter_map(|s| s["uses"].as_str())
        .collect();
    for action in ["actions/cache@v4", "actions/upload-artifact@v4"] {
        assert!(uses.contains(&action), "GitHub: {action} in {uses:?}");
    }
    let junit = gl["testbed-nightly"]["artifacts"]["reports"]["junit"].as_sequence().expect("GitLab junit reports");
    assert_eq!(junit.len(), 2);
    assert!(gl["testbed-nightly"]["cache"].is_sequence(), "GitLab: image cache");
    for (name, scripts) in [("GitHub", github_scripts(&gh)), ("GitLab", gitlab_scripts(&gl))] {
        let cmds = commands(&scripts);
        let all = cmds.join("\n");
        for needed in [
            "testbed up ",
            "run conformance",
            "--backend all",
            "run perf",
            "report --compare",
            "report --history",
            "testbed down",
        ] {
            assert!(all.contains(needed), "{name}: no `{needed}` among\n{all}");
        }
        // Every testbed command of the job is one the real command line accepts.
        for c in &cmds {
            let words: Vec<&str> = std::iter::once("testbed").chain(c.split_whitespace().skip(1)).collect();
            if let Err(e) = crate::Cli::try_parse_from(&words) {
                panic!("{name}: `{c}` does not parse: {e}");
            }
        }
        // Shell syntax of each step (GitLab runs a job's lines as one script, so they are checked together).
        let whole = if name == "GitLab" { vec![scripts.join("\n")] } else { scripts.clone() };
        for s in &whole {
            let out = std::process::Command::new("bash").args(["-n", "-c", s]).output().expect("bash");
            assert!(out.status.success(), "{name}: bash -n: {}\n{s}", String::from_utf8_lossy(&out.stderr));
        }
        let script = scripts.join("\n");
        assert!(script.contains(NOT_COMPARABLE), "{name}: the job must tell not-comparable from bad input");
        assert!(script.contains(INCONCLUSIVE), "{name}: the job must tell inconclusive from a regression");
        assert!(script.contains("/dev/kvm"), "{name}: says whether the runner has KVM");
    }
}

/// Lays out what the job has when it reaches its report steps: the last good run (both jobs' layouts), this
/// night's results and a few nights of history.
fn job_tree(root: &Path, tonight: &testbed_api::results::SuiteResults) {
    for base in ["baseline/perf", "baseline/results/perf"] {
        write_run(&root.join(base), &perf_run());
    }
    write_run(&root.join("results/perf"), tonight);
    for day in 1..=3 {
        write_run(&root.join(format!("history/2026010{day}T021700Z")), &later(day, |_| 1.0));
    }
}

#[test]
fn the_jobs_report_commands_run_as_written_and_gate() {
    for (name, doc, scripts) in [("GitHub", GITHUB, github_scripts as fn(&_) -> _), ("GitLab", GITLAB, gitlab_scripts)]
    {
        let scripts = scripts(&serde_yaml::from_str(doc).expect("yaml"));
        let reports: Vec<String> =
            commands(&scripts).into_iter().filter(|c| c.starts_with("testbed report ")).collect();
        let compare = reports.iter().find(|c| c.contains("--compare")).expect("a compare step");
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();

        // A quiet night: every report command succeeds and writes its files.
        job_tree(root, &later(4, |_| 1.01));
        for c in &reports {
            assert_eq!(run_line(c, root), 0, "{name}: `{c}`");
        }
        assert!(root.join("results/history.html").is_file(), "{name}: history.html");
        assert!(root.join("results/perf/compare.html").is_file(), "{name}: compare.html");

        // A regressed figure fails the gate.
        write_run(&root.join("results/perf"), &later(5, |n| if n == REGRESSED { 0.6 } else { 1.0 }));
        assert_eq!(run_line(compare, root), 1, "{name}: `{compare}` on a regression");

        // A new kernel: exit 2, and compare.json says so in the words the job greps for.
        let mut k = later(6, |_| 1.0);
        k.metadata.kernel = Some("6.12.0-1-amd64".into());
        write_run(&root.join("results/perf"), &k);
        assert_eq!(run_line(compare, root), 2, "{name}: `{compare}` on another kernel");
        let json = std::fs::read_to_string(root.join("results/perf/compare.json")).expect("compare.json");
        assert!(json.contains(NOT_COMPARABLE), "{json}");

        // A night whose every figure ran on a disturbed host: exit 1, and compare.json says inconclusive.
        let mut d = later(7, |_| 1.0);
        d.measurements.iter_mut().for_each(|m| m.flags = vec![testbed_api::results::PerfFlag::DisturbedHost]);
        write_run(&root.join("results/perf"), &d);
        assert_eq!(run_line(compare, root), 1, "{name}: `{compare}` on a disturbed night");
        let json = std::fs::read_to_string(root.join("results/perf/compare.json")).expect("compare.json");
        assert!(json.contains(INCONCLUSIVE), "{json}");
    }
}
