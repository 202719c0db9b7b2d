//! The command edge of `testbed report --compare` and `--history`: loads the runs, writes the outputs and maps
//! the outcome to the exit codes (0 fine, 1 a figure regressed or too few figures were trustworthy to tell, 2 bad
//! input or runs not comparable, 3 writing failed).

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use super::compare::{self, Gate, Outcome, Run, Verdict};
use super::{compare_view, history, load, write, ReportError};
use crate::exit::{CliError, CliResult};
use crate::ui::Ui;

/// Unreadable or invalid input is the caller's (exit 2); a failed render or write is ours (exit 3).
fn classify(e: ReportError) -> CliError {
    match e {
        ReportError::Io { .. } | ReportError::Parse { .. } | ReportError::Schema { .. } => CliError::bad_input(e),
        ReportError::Render { .. } => CliError::infra(e),
    }
}

/// Writes `name` into `dir`; a failure to write is infrastructure.
fn write_out(dir: &Path, name: &str, text: &str) -> CliResult {
    std::fs::create_dir_all(dir).map_err(|e| CliError::infra(anyhow!("{}: {e}", dir.display())))?;
    write(dir, name, text).map_err(CliError::infra)
}

/// `--compare OLD NEW`: writes compare.md, compare.html and compare.json into `out` (default NEW).
pub fn cmd_compare(ui: &Ui, old_dir: &Path, new_dir: &Path, gate: Gate, out: Option<&Path>) -> CliResult {
    let (old, new) = (load(old_dir).map_err(classify)?, load(new_dir).map_err(classify)?);
    let run = |dir: &Path, results| Run { dir: dir.display().to_string(), results };
    let c = compare::compare(&run(old_dir, &old), &run(new_dir, &new), gate).map_err(CliError::bad_input)?;
    let out = out.unwrap_or(new_dir);
    let json = compare_view::json(&c).map_err(CliError::infra)?;
    write_out(out, "compare.json", &json)?;
    write_out(out, "compare.md", &compare_view::markdown(&c).map_err(CliError::infra)?)?;
    write_out(out, "compare.html", &compare_view::html(&c).map_err(CliError::infra)?)?;
    let report = out.join("compare.md");
    if c.outcome == Outcome::NotComparable {
        // The error document is the only one on stdout (`-o json`): compare.json holds the comparison.
        let why: Vec<String> = c
            .mismatches
            .iter()
            .filter(|m| m.blocking)
            .map(|m| format!("{} `{}` vs `{}`", m.field, m.old, m.new))
            .collect();
        return Err(CliError::bad_input(anyhow!(
            "{} and {} are not comparable ({}); --allow-mismatch compares them anyway; report: {}",
            old_dir.display(),
            new_dir.display(),
            why.join(", "),
            report.display()
        )));
    }
    if ui.is_json() {
        print!("{json}");
    } else {
        // Unstable figures the rule alone would call worse or better are listed too: a human may want to look.
        let telling = |f: &&compare::Figure| {
            f.verdict.regressed()
                || f.verdict == Verdict::Better
                || matches!(f.indication, Some(Verdict::Worse | Verdict::Better))
        };
        for f in c.figures.iter().filter(telling) {
            let change = f.change_percent.map_or_else(|| "-".into(), |p| format!("{p:+.1} %"));
            ui.info(format!("{}: {change} {}", f.name(), compare_view::verdict_text(f)));
        }
    }
    let k = &c.counts;
    let summary = format!(
        "{} worse, {} missing, {} better, {} within noise, {} too few samples, {} unstable, {} new (tolerance {} %, \
         at most {} % unverified); report: {}",
        k.worse,
        k.missing,
        k.better,
        k.within_noise,
        k.too_few_samples,
        k.unstable,
        k.new,
        c.tolerance_percent,
        c.max_unstable_percent,
        report.display()
    );
    match c.outcome {
        Outcome::Regressed => Err(CliError::TestsFailed(format!("perf regressed: {summary}"))),
        Outcome::Inconclusive => Err(CliError::TestsFailed(format!(
            "perf gate inconclusive: too few figures were trustworthy (flagged unstable in either run, or too few \
             samples) to tell a regression from noise: {summary}"
        ))),
        _ => {
            ui.info(summary);
            Ok(())
        }
    }
}

/// `--history DIR...`: writes history.html into `out` (default the current directory).
pub fn cmd_history(ui: &Ui, dirs: &[PathBuf], out: Option<&Path>) -> CliResult {
    let mut runs = Vec::with_capacity(dirs.len());
    for d in dirs {
        runs.push((d.display().to_string(), load(d).map_err(classify)?));
    }
    let page = history::html(&runs).map_err(|e| match e {
        history::HistoryError::NoFigures { .. } => CliError::bad_input(e),
        history::HistoryError::Report(e) => CliError::infra(e),
    })?;
    let out = out.unwrap_or(Path::new("."));
    write_out(out, "history.html", &page)?;
    if ui.is_json() {
        let doc = serde_json::json!({"history": out.join("history.html"), "runs": runs.len()});
        println!("{doc}");
    } else {
        ui.info(format!("history of {} runs: {}", runs.len(), out.join("history.html").display()));
    }
    Ok(())
}
