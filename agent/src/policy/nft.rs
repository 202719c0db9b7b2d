//! The kernel side of the policy enforcer: the `nft` binary, as the service proxy uses it
//! (`agent/src/proxy/nft.rs`). The trait has the proxy's `Nft` shape (read back, apply all or nothing) over
//! text instead of the proxy's rule model: the policy table is small and written whole, so the kernel's
//! own listing is what a read compares. Kept apart from the proxy's so that its move to a netlink batch does
//! not change this one; the two are to be joined.

use std::io::Write;
use std::process::{Command, Stdio};

use super::render::{FAMILY, TABLE};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running nft: {0}")]
    Spawn(std::io::Error),
    #[error("nft {args}: {stderr}")]
    Failed { args: String, stderr: String },
}

/// What the enforcer needs of the kernel: its table as nft lists it, and a script applied all or nothing.
pub trait Nft: Send {
    /// `nft list table inet testbed-policy`; None when the table does not exist.
    fn read(&mut self) -> Result<Option<String>, NftError>;
    /// One `nft -f -` transaction.
    fn apply(&mut self, script: &str) -> Result<(), NftError>;
}

/// The `nft` binary on the PATH, in the agent's network namespace.
pub struct NftCli;

impl Nft for NftCli {
    fn read(&mut self) -> Result<Option<String>, NftError> {
        let out = Command::new("nft")
            .args(["list", "table", FAMILY, TABLE])
            .stdin(Stdio::null())
            .output()
            .map_err(NftError::Spawn)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(NftError::Failed {
                args: format!("list table {FAMILY} {TABLE}"),
                stderr: stderr.trim().into(),
            });
        }
        Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(NftError::Spawn)?;
        // Dropping stdin after the write closes it: nft reads to the end, then commits.
        let written = child.stdin.take().map(|mut stdin| stdin.write_all(script.as_bytes()));
        let out = child.wait_with_output().map_err(NftError::Spawn)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr: Vec<&str> = stderr.lines().take(6).collect();
            return Err(NftError::Failed { args: "-f -".into(), stderr: stderr.join("\n") });
        }
        written.transpose().map_err(NftError::Spawn)?;
        Ok(())
    }
}
