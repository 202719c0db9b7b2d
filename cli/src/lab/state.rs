//! What `up` records in `state.json` so that `down`, `status` and the suites find a lab again without its
//! topology file. The JSON format is a contract with labs made by earlier versions: field names and the
//! strings of [`Stage`] and [`Accel`] must not change.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The accelerator a node's VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What made the lab's machines: `down`, `status` and a later `up` take it from the state, never from the
/// command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// QEMU processes testbed starts itself (labs recorded before there was a choice are these).
    #[default]
    Qemu,
    /// vagrant-libvirt machines from the repository's Vagrantfile.
    Vagrant,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Qemu => "qemu",
            ProviderKind::Vagrant => "vagrant",
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The steps that bring a node up, in order. A node's state records the last one it reached; `up`'s errors and
/// timings name the one that was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Seed and overlay disks.
    Disk,
    /// The machine starts and its guest boots.
    Boot,
    /// Waiting for the guest's sshd.
    Ssh,
    /// Getting the agent onto the node and healthy.
    Agent,
    /// Applying the node's NodeSpec (and impairments inside the guest).
    Network,
    /// Copying the container images its pods name to the node and importing them there.
    Images,
    /// Creating the topology's pods on the node.
    Pods,
    /// Everything done.
    Ready,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Disk => "disk",
            Stage::Boot => "boot",
            Stage::Ssh => "ssh",
            Stage::Agent => "agent",
            Stage::Network => "network",
            Stage::Images => "images",
            Stage::Pods => "pods",
            Stage::Ready => "ready",
        }
    }

    /// Whether the guest had started by then, so its serial console has something to say about a failure.
    pub fn guest_started(self) -> bool {
        matches!(self, Stage::Boot | Stage::Ssh | Stage::Agent | Stage::Network)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `up` started, so that `down`/`status` can find it again without the topology file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    pub lab: String,
    #[serde(default)]
    pub provider: ProviderKind,
    pub accelerator: Accel,
    /// Why that accelerator (probe outcome or override).
    pub accelerator_reason: String,
    pub qemu_version: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub nodes: BTreeMap<String, NodeState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// QEMU's PID (host netns) once launched.
    pub pid: Option<u32>,
    /// Field 22 of /proc/<pid>/stat at launch: a PID is ours only while this still matches (PID reuse).
    pub pid_start_time: Option<u64>,
    pub ssh_port: u16,
    pub accelerator: Accel,
    /// The host key the guest was given and the client pins.
    pub host_key_public: String,
    /// Image id (content hash) the node's overlay is backed by.
    pub image_id: String,
    /// Last stage reached.
    pub stage: Stage,
}

/// A machine process as `up` recorded it: a PID is only this machine's while its start time still matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedProcess {
    pub pid: u32,
    /// Field 22 of /proc/<pid>/stat at launch.
    pub start_time: u64,
}

impl NodeState {
    /// The machine process this node records, when it records one.
    pub fn process(&self) -> Option<RecordedProcess> {
        Some(RecordedProcess { pid: self.pid?, start_time: self.pid_start_time? })
    }

    /// Forgets the machine process (it was stopped, or is to be replaced).
    pub fn forget_process(&mut self) {
        self.pid = None;
        self.pid_start_time = None;
    }
}

/// Current time as RFC 3339 UTC (`2026-11-23T13:20:05Z`), without a date crate.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_440_005), "2026-11-23T13:20:05Z");
    }

    #[test]
    fn stages_and_accelerators_keep_their_json_strings() {
        let all = [Stage::Disk, Stage::Boot, Stage::Ssh, Stage::Agent, Stage::Network, Stage::Pods, Stage::Ready];
        for stage in all {
            assert_eq!(serde_json::to_value(stage).unwrap(), serde_json::json!(stage.as_str()));
            assert_eq!(serde_json::from_value::<Stage>(serde_json::json!(stage.as_str())).unwrap(), stage);
        }
        assert_eq!(serde_json::to_value(Accel::Kvm).unwrap(), serde_json::json!("kvm"));
        assert_eq!(serde_json::to_value(ProviderKind::Vagrant).unwrap(), serde_json::json!("vagrant"));
    }

    #[test]
    fn a_state_recorded_before_providers_could_be_chosen_is_a_qemu_labs() {
        let old = serde_json::json!({
            "lab": "l", "accelerator": "tcg", "accelerator_reason": "", "qemu_version": "", "created_at": "",
            "nodes": {}
        });
        assert_eq!(serde_json::from_value::<LabState>(old).unwrap().provider, ProviderKind::Qemu);
    }
}
