//! The lab's state while `up` runs: every change is written to state.json at once, so that a rollback or a
//! later `down` finds every machine that exists even when `up` is killed.

use std::sync::Mutex;

use super::dir::{LabDir, LabDirError};
use super::keys;
use super::provider::SshEndpoint;
use super::state::{LabState, NodeState, Stage};
use super::up::UpError;

pub struct StateRecorder {
    dir: LabDir,
    state: Mutex<LabState>,
}

impl StateRecorder {
    /// Starts from `state`, which is already in the lab directory.
    pub fn new(dir: LabDir, state: LabState) -> Self {
        StateRecorder { dir, state: Mutex::new(state) }
    }

    /// Changes the state and writes it.
    pub fn save(&self, update: impl FnOnce(&mut LabState)) -> Result<(), LabDirError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        update(&mut st);
        self.dir.write_state(&st)
    }

    /// Records that `node` reached `stage`.
    pub fn record_stage(&self, node: &str, stage: Stage) -> Result<(), LabDirError> {
        self.save(|s| {
            if let Some(x) = s.nodes.get_mut(node) {
                x.stage = stage;
            }
        })
    }

    /// Records where `node`'s sshd is when it differs from what the state holds (a provider that learns the
    /// endpoint only once the machine runs), and the lab's known_hosts with it, for `ssh`, `exec` and `status`.
    pub fn record_endpoint(&self, node: &str, ssh: &SshEndpoint) -> Result<(), UpError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(x) = st.nodes.get_mut(node) else { return Ok(()) };
        if x.ssh_port == ssh.port && x.host_key_public == ssh.host_key {
            return Ok(());
        }
        x.ssh_port = ssh.port;
        x.host_key_public.clone_from(&ssh.host_key);
        self.dir.write_state(&st)?;
        keys::write_known_hosts(&self.dir, st.nodes.values())
    }

    pub fn node(&self, node: &str) -> Option<NodeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).nodes.get(node).cloned()
    }

    pub fn snapshot(&self) -> LabState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
