//! Topology file: model, parsing with positions, validation. (owner: foundation)

use crate::exit::{not_built, CliResult};
use crate::ui::Ui;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Topology file (YAML).
    pub file: std::path::PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Topology file (YAML).
    pub file: std::path::PathBuf,
}

pub fn cmd_validate(_ui: &Ui, _args: ValidateArgs) -> CliResult {
    Err(not_built("validate"))
}

pub fn cmd_plan(_ui: &Ui, _args: PlanArgs) -> CliResult {
    Err(not_built("plan"))
}
