//! The kernel side of the policy enforcer: the `nft` binary, as the service proxy uses it
//! (`agent/src/proxy/nft.rs`). The trait has the proxy's `Nft` shape (read back, apply all or nothing) over
//! text instead of the proxy's rule model: the policy table is small and written whole, so the kernel's
//! own listing is what a read compares. The nft runs themselves are the proxy's (`list`, `run_script`).

use super::render::{FAMILY, TABLE};

pub use crate::proxy::NftError;

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
        let out = crate::proxy::nft_list(&["list", "table", FAMILY, TABLE])?;
        Ok(out.map(|o| String::from_utf8_lossy(&o).into_owned()))
    }

    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        crate::proxy::nft_run_script(script)
    }
}
