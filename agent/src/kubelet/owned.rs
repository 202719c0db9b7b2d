//! Which node pods the loop created, and for which API pod: kept in `<state-dir>/kubelet/pods.json` rather
//! than in the pod records, because the runtime recreates a pod from its spec alone (lost sandbox, reboot,
//! pending retry) and a record field would not survive that. An entry is written before the pod is created
//! and removed once it is deleted, so a crash in between leaves an entry without a pod (the loop creates or
//! forgets it), never a pod the loop would take for a node-local one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::diff::Owner;
use super::KubeletError;

pub struct Owned {
    path: PathBuf,
    pods: Mutex<BTreeMap<String, Owner>>,
}

impl Owned {
    /// The records at `path`; none when the file is not there.
    pub fn load(path: PathBuf) -> Result<Self, KubeletError> {
        let pods = match std::fs::read(&path) {
            Ok(data) => {
                serde_json::from_slice(&data).map_err(|e| KubeletError::State(format!("{}: {e}", path.display())))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(KubeletError::State(format!("{}: {e}", path.display()))),
        };
        Ok(Self { path, pods: Mutex::new(pods) })
    }

    pub fn snapshot(&self) -> BTreeMap<String, Owner> {
        self.lock().clone()
    }

    pub fn insert(&self, name: &str, owner: Owner) -> Result<(), KubeletError> {
        let mut pods = self.lock();
        pods.insert(name.to_string(), owner);
        self.save(&pods)
    }

    pub fn remove(&self, name: &str) -> Result<(), KubeletError> {
        let mut pods = self.lock();
        if pods.remove(name).is_none() {
            return Ok(());
        }
        self.save(&pods)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Owner>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, pods: &BTreeMap<String, Owner>) -> Result<(), KubeletError> {
        super::write_atomic(&self.path, &serde_json::to_vec_pretty(pods).unwrap_or_default(), 0o644)
    }
}
