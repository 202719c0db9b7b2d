//! Guest images: build from Debian packages, fetch by URL + sha256, content-addressed cache. (owner: image)

use crate::exit::{not_built, CliResult};
use crate::ui::Ui;

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build a guest image from Debian packages with mmdebstrap.
    Build,
    /// List cached images.
    List,
}

pub async fn cmd_image(_ui: &Ui, _args: ImageArgs) -> CliResult {
    Err(not_built("image"))
}
