//! Teardown from the lab directory alone, in the one safe order: the provider stops the lab's machines, then
//! removes what it made outside the directory (QEMU: the lab's netns, with its taps and bridges), and only then
//! is the directory removed, so a failed stop leaves everything `down` needs to try again. Used by `down` and
//! by `up`'s rollback.

use serde::Serialize;

use super::dir::{LabDir, LabDirError};
use super::provider::{Provider, ProviderError};

#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error(transparent)]
    LabDir(#[from] LabDirError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Forwarder(#[from] super::forwarder::ForwarderError),
}

/// What a teardown did, for the user and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Teardown {
    /// (node, pid) of the machines that were stopped.
    pub stopped: Vec<(String, u32)>,
    /// The host-side resource the provider removed (QEMU: the lab's netns).
    pub netns_deleted: Option<String>,
    pub dir_removed: bool,
    /// The PID of the API forwarder that was stopped.
    pub forwarder_stopped: Option<u32>,
}

impl Teardown {
    pub fn is_noop(&self) -> bool {
        self.stopped.is_empty() && self.netns_deleted.is_none() && !self.dir_removed && self.forwarder_stopped.is_none()
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
    // First the forwarder: it would otherwise keep reconnecting to machines that are going away.
    let forwarder_stopped = super::forwarder::stop(dir)?;
    let stopped = provider.stop_machines(dir)?;
    let netns_deleted = provider.remove_host_resources(dir)?;
    let dir_removed = dir.exists();
    if dir_removed {
        dir.remove()?;
    }
    Ok(Teardown { stopped, netns_deleted, dir_removed, forwarder_stopped })
}

/// `down -o json`. A contract for scripts, like `status -o json`: the field names and shapes must not change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum DownReport {
    /// No lab was found, so nothing was done; `lab` is always null.
    NoLab { lab: Option<String>, removed: bool },
    /// What the teardown of `lab` did.
    TornDown { lab: String, stopped: Vec<StoppedMachine>, netns_deleted: Option<String>, dir_removed: bool },
}

/// One machine `down` stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoppedMachine {
    pub node: String,
    pub pid: u32,
}

impl DownReport {
    pub fn no_lab() -> Self {
        DownReport::NoLab { lab: None, removed: false }
    }

    pub fn torn_down(lab: &str, t: &Teardown) -> Self {
        DownReport::TornDown {
            lab: lab.to_string(),
            stopped: t.stopped.iter().map(|(node, pid)| StoppedMachine { node: node.clone(), pid: *pid }).collect(),
            netns_deleted: t.netns_deleted.clone(),
            dir_removed: t.dir_removed,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn down_report_keeps_its_json_fields() {
        assert_eq!(serde_json::to_value(DownReport::no_lab()).unwrap(), json!({"lab": null, "removed": false}));
        let t = Teardown {
            stopped: vec![("node1".into(), 42)],
            netns_deleted: Some("tb-x".into()),
            dir_removed: true,
            forwarder_stopped: Some(43),
        };
        assert_eq!(
            serde_json::to_value(DownReport::torn_down("x", &t)).unwrap(),
            json!({
                "lab": "x",
                "stopped": [{"node": "node1", "pid": 42}],
                "netns_deleted": "tb-x",
                "dir_removed": true,
            })
        );
    }
}
