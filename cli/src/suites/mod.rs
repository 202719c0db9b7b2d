//! Suites (conformance, perf) and reports. (owner: suites)

use crate::exit::{not_built, CliResult};
use crate::ui::Ui;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Suite to run: conformance or perf.
    pub suite: String,
}
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Directory holding results.json.
    pub dir: std::path::PathBuf,
}

pub async fn cmd_run(_ui: &Ui, _a: RunArgs) -> CliResult {
    Err(not_built("run"))
}
pub async fn cmd_report(_ui: &Ui, _a: ReportArgs) -> CliResult {
    Err(not_built("report"))
}
