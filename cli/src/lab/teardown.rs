//! Teardown from the lab directory alone, in the one safe order: the provider stops the lab's machines, then
//! removes what it made outside the directory (QEMU: the lab's netns, with its taps and bridges), and only then
//! is the directory removed, so a failed stop leaves everything `down` needs to try again. Used by `down` and
//! by `up`'s rollback.

use crate::provider::{Provider, ProviderError};

use super::dir::{LabDir, LabDirError};

#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error(transparent)]
    LabDir(#[from] LabDirError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// What a teardown did, for the user and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Teardown {
    /// (node, pid) of the machines that were stopped.
    pub stopped: Vec<(String, u32)>,
    /// The host-side resource the provider removed (QEMU: the lab's netns).
    pub netns_deleted: Option<String>,
    pub dir_removed: bool,
}

impl Teardown {
    pub fn is_noop(&self) -> bool {
        self.stopped.is_empty() && self.netns_deleted.is_none() && !self.dir_removed
    }

    /// One line for `up`'s rollback.
    pub fn rollback_summary(&self) -> String {
        format!(
            "rolled back: {} VM(s) stopped, netns {}, lab directory {}",
            self.stopped.len(),
            self.netns_deleted.as_deref().unwrap_or("(none)"),
            if self.dir_removed { "removed" } else { "(none)" }
        )
    }
}

/// Removes everything of the lab; idempotent (a second call finds nothing and does nothing).
pub fn teardown(dir: &LabDir, provider: &dyn Provider) -> Result<Teardown, TeardownError> {
    let stopped = provider.stop_machines(dir)?;
    let netns_deleted = provider.remove_host_resources(dir)?;
    let dir_removed = dir.exists();
    if dir_removed {
        dir.remove()?;
    }
    Ok(Teardown { stopped, netns_deleted, dir_removed })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::lab::fixtures::test_plan;
    use crate::provider::qemu::hostnet::fake::FakeHostNet;
    use crate::provider::qemu::hostnet::HostNet as _;
    use crate::provider::qemu::QemuProvider;

    #[test]
    fn teardown_is_idempotent_and_only_touches_the_labs_netns() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "demo");
        dir.create().unwrap();
        let net = Arc::new(FakeHostNet::default());
        net.create_netns("tb-demo").unwrap();
        net.create_netns("tb-other").unwrap();
        let first = teardown(&dir, &QemuProvider::new(net.clone())).unwrap();
        assert_eq!(first.netns_deleted.as_deref(), Some("tb-demo"));
        assert!(first.dir_removed && !dir.exists());
        assert!(net.netns_exists("tb-other").unwrap());
        let second = teardown(&dir, &QemuProvider::new(net.clone())).unwrap();
        assert!(second.is_noop());
    }

    #[test]
    fn netns_comes_from_the_lab_name_not_the_plan() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "mine");
        dir.create().unwrap();
        let mut plan = test_plan();
        plan.netns = "tb-other".into();
        dir.write_plan(&plan).unwrap();
        let net = Arc::new(FakeHostNet::default());
        net.create_netns("tb-other").unwrap();
        let t = teardown(&dir, &QemuProvider::new(net.clone())).unwrap();
        assert_eq!(t.netns_deleted, None);
        assert!(net.netns_exists("tb-other").unwrap());
    }
}
