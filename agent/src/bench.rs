//! Pod creation benchmark (filled in below).
use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 100)]
    pub pods: usize,
}

pub fn isolate() -> Result<()> {
    anyhow::bail!("not built yet")
}

pub async fn run(_args: BenchArgs) -> Result<()> {
    anyhow::bail!("not built yet")
}
