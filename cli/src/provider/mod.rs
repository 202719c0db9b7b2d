//! QEMU provider and lab lifecycle: netns, bridges, taps, VMs, SSH, lab state. (owner: provider)

pub mod accel;
pub mod hostnet;
pub mod labdir;
pub mod procs;
pub mod qemu;

use crate::exit::{not_built, CliResult};
use crate::ui::Ui;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Topology file (YAML).
    pub file: std::path::PathBuf,
}
#[derive(Debug, clap::Args)]
pub struct DownArgs {}
#[derive(Debug, clap::Args)]
pub struct StatusArgs {}
#[derive(Debug, clap::Args)]
pub struct SshArgs {
    pub node: String,
}
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    pub node: String,
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {}

pub async fn cmd_up(_ui: &Ui, _a: UpArgs) -> CliResult {
    Err(not_built("up"))
}
pub async fn cmd_down(_ui: &Ui, _a: DownArgs) -> CliResult {
    Err(not_built("down"))
}
pub async fn cmd_status(_ui: &Ui, _a: StatusArgs) -> CliResult {
    Err(not_built("status"))
}
pub async fn cmd_ssh(_ui: &Ui, _a: SshArgs) -> CliResult {
    Err(not_built("ssh"))
}
pub async fn cmd_exec(_ui: &Ui, _a: ExecArgs) -> CliResult {
    Err(not_built("exec"))
}
pub async fn cmd_doctor(_ui: &Ui, _a: DoctorArgs) -> CliResult {
    Err(not_built("doctor"))
}
