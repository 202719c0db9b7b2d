//! The lab directory: where a lab's plan, state, keys, disks and logs live, and the lock that serialises
//! `up`/`down` of one lab. `down` needs nothing but this directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::plan::Plan;
use crate::topology::validate::is_lab_name;

use super::state::LabState;

#[derive(Debug, thiserror::Error)]
pub enum LabDirError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not valid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("lab `{lab}` is busy: another testbed command (up or down) holds {path}; wait for it or stop it")]
    Busy { lab: String, path: PathBuf },
    #[error("cannot find a home or state directory: set TESTBED_STATE_DIR")]
    NoStateDir,
    #[error("refusing to remove {path}: not a lab directory (a valid lab name directly under {state_root})")]
    NotALabDir { path: PathBuf, state_root: PathBuf },
    #[error("{path} exists but testbed did not make it (no plan.json, state.json or lock in it): refusing to use or remove it; move it away or set TESTBED_STATE_DIR")]
    Foreign { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LabDirError + '_ {
    move |source| LabDirError::Io { path: path.to_path_buf(), source }
}

/// `$TESTBED_STATE_DIR`, else `$XDG_STATE_HOME/testbed/labs`, else `~/.local/state/testbed/labs`.
pub fn state_root() -> Result<PathBuf, LabDirError> {
    if let Some(d) = std::env::var_os("TESTBED_STATE_DIR").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(d).join("testbed/labs"));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or(LabDirError::NoStateDir)?;
    Ok(PathBuf::from(home).join(".local/state/testbed/labs"))
}

/// Whether `dir` holds what `up` writes into a lab directory: plan.json or state.json, or `lock`, where labs
/// made by earlier versions kept their lock.
fn made_by_testbed(dir: &Path) -> bool {
    ["plan.json", "state.json", "lock"].iter().any(|f| dir.join(f).exists())
}

/// Names of the labs under the state root: directories with a valid lab name that testbed made (anything
/// else in a shared state directory is not ours and is never selected, let alone removed).
pub fn list_labs(root: &Path) -> Result<Vec<String>, LabDirError> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(root)(e)),
    };
    let mut labs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(root))?;
        if !entry.file_type().map_err(io(root))?.is_dir() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if is_lab_name(&name) && made_by_testbed(&entry.path()) {
            labs.push(name);
        }
    }
    labs.sort();
    Ok(labs)
}

/// Paths inside one lab's directory. `down` needs nothing but this directory, so everything a lab's machines
/// use lives here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabDir {
    pub name: String,
    pub root: PathBuf,
    /// The state root `root` lives directly under (checked again by `remove`).
    pub state_root: PathBuf,
}

impl LabDir {
    /// `lab` must be a valid lab name (callers check user input with `is_lab_name` first and report bad
    /// input); `remove` refuses a directory whose name is not one.
    pub fn new(state_root: &Path, lab: &str) -> LabDir {
        LabDir { name: lab.to_string(), root: state_root.join(lab), state_root: state_root.to_path_buf() }
    }

    pub fn exists(&self) -> bool {
        self.root.is_dir()
    }

    pub fn plan_path(&self) -> PathBuf {
        self.root.join("plan.json")
    }
    pub fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn client_key(&self) -> PathBuf {
        self.root.join("id_ed25519")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.root.join("known_hosts")
    }
    /// The agent binary padded to whole sectors, attached read-only to every VM as /dev/vdc.
    pub fn agent_disk(&self) -> PathBuf {
        self.root.join("agent.img")
    }
    /// Next to the lab's directory, never inside it, and never removed: `down` deletes the directory while
    /// holding the lock, and a lock file inside it could be unlinked (and a new one locked by a second `up`)
    /// while the first holder still runs.
    pub fn lock_path(&self) -> PathBuf {
        self.state_root.join(format!(".{}.lock", self.name))
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }
    pub fn overlay(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("overlay.qcow2")
    }
    pub fn seed(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("seed.img")
    }
    pub fn serial_log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("serial.log")
    }
    pub fn pidfile(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("qemu.pid")
    }
    pub fn qmp_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("qmp.sock")
    }
    /// QEMU's own stderr (command-line and startup errors; after daemonizing QEMU writes nowhere).
    pub fn qemu_log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("qemu.log")
    }
    pub fn host_key(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("ssh_host_ed25519_key")
    }

    pub fn create(&self) -> Result<(), LabDirError> {
        fs::create_dir_all(&self.root).map_err(io(&self.root))
    }

    pub fn read_plan(&self) -> Result<Plan, LabDirError> {
        read_json(&self.plan_path())
    }

    pub fn write_plan(&self, plan: &Plan) -> Result<(), LabDirError> {
        write_json_atomic(&self.plan_path(), plan)
    }

    /// The state, or None when `up` never got as far as writing it.
    pub fn read_state(&self) -> Result<Option<LabState>, LabDirError> {
        let path = self.state_path();
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    pub fn write_state(&self, state: &LabState) -> Result<(), LabDirError> {
        write_json_atomic(&self.state_path(), state)
    }

    /// Refuses a directory at the lab's path that testbed did not make: one with files but none of ours. With a
    /// shared TESTBED_STATE_DIR, `up` or `down` of a lab named like it would otherwise take it over or delete it.
    fn check_ours(&self) -> Result<(), LabDirError> {
        let Ok(mut entries) = fs::read_dir(&self.root) else { return Ok(()) };
        if made_by_testbed(&self.root) || entries.next().is_none() {
            Ok(())
        } else {
            Err(LabDirError::Foreign { path: self.root.clone() })
        }
    }

    /// Takes the lab's lock without waiting (a second `up`/`down` fails at once with `Busy`), and makes the
    /// lab's directory.
    pub fn lock(&self) -> Result<LabLock, LabDirError> {
        self.check_ours()?;
        fs::create_dir_all(&self.state_root).map_err(io(&self.state_root))?;
        let path = self.lock_path();
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        // SAFETY: flock on an fd we own; no memory is shared with the kernel.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(LabDirError::Busy { lab: self.name.clone(), path });
            }
            return Err(io(&path)(err));
        }
        self.create()?;
        Ok(LabLock { _file: file })
    }

    /// Removes the whole directory (`down`, rollback). Missing is fine. Refuses anything that is not a direct
    /// child of the state root with a valid lab name: this is the one `remove_dir_all` of the lab lifecycle.
    pub fn remove(&self) -> Result<(), LabDirError> {
        let direct_child = self.root.parent() == Some(self.state_root.as_path())
            && self.root.file_name().and_then(|n| n.to_str()) == Some(self.name.as_str());
        if !direct_child || !is_lab_name(&self.name) {
            return Err(LabDirError::NotALabDir { path: self.root.clone(), state_root: self.state_root.clone() });
        }
        self.check_ours()?;
        match fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.root)(e)),
        }
    }
}

/// The last `max` bytes of a log in the lab directory (a serial console, QEMU's stderr), trimmed; empty when
/// it cannot be read.
pub fn log_tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek};
    let Ok(mut f) = File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    if len > max {
        let _ = f.seek(std::io::SeekFrom::Start(len - max));
    }
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_string()
}

/// Held for the duration of `up`/`down`; the kernel releases the flock when the process dies, even by SIGKILL.
#[derive(Debug)]
pub struct LabLock {
    _file: File,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LabDirError> {
    let bytes = fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|source| LabDirError::Json { path: path.to_path_buf(), source })
}

fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), LabDirError> {
    let tmp = path.with_extension("json.tmp");
    let mut body =
        serde_json::to_vec_pretty(value).map_err(|source| LabDirError::Json { path: path.to_path_buf(), source })?;
    body.push(b'\n');
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&body).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_busy_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "l1");
        let first = dir.lock().unwrap();
        assert!(matches!(dir.lock(), Err(LabDirError::Busy { .. })));
        drop(first);
        let _again = dir.lock().unwrap();
    }

    #[test]
    fn lock_outlives_the_directory_it_guards() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LabDir::new(tmp.path(), "l2");
        let held = dir.lock().unwrap();
        assert!(dir.exists());
        dir.remove().unwrap();
        // The holder removed the directory: the lock is still held, so a second `up` cannot slip in.
        assert!(matches!(dir.lock(), Err(LabDirError::Busy { .. })));
        drop(held);
        let _fresh = dir.lock().unwrap();
        assert!(dir.lock_path().exists() && !dir.lock_path().starts_with(&dir.root));
    }

    #[test]
    fn list_labs_sorted_and_missing_root_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(list_labs(&tmp.path().join("nope")).unwrap().is_empty());
        fs::create_dir_all(tmp.path().join("b")).unwrap();
        fs::write(tmp.path().join("b/lock"), "").unwrap();
        fs::create_dir_all(tmp.path().join("a")).unwrap();
        fs::write(tmp.path().join("a/plan.json"), "{}").unwrap();
        assert_eq!(list_labs(tmp.path()).unwrap(), vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn list_labs_skips_foreign_and_invalid_directories() {
        let tmp = tempfile::tempdir().unwrap();
        // Not a lab: no plan.json or lock.
        fs::create_dir_all(tmp.path().join("photos")).unwrap();
        // Invalid names, even with a lock.
        for bad in ["Upper", "-x", "a_b"] {
            fs::create_dir_all(tmp.path().join(bad)).unwrap();
            fs::write(tmp.path().join(bad).join("lock"), "").unwrap();
        }
        assert!(list_labs(tmp.path()).unwrap().is_empty());
    }

    #[test]
    fn remove_refuses_anything_but_a_named_child_of_the_state_root() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let victim = tmp.path().join("victim");
        fs::create_dir_all(&victim).unwrap();
        fs::create_dir_all(&state).unwrap();
        for name in ["../victim", "", "/", ".", "Victim"] {
            let dir = LabDir::new(&state, name);
            assert!(matches!(dir.remove(), Err(LabDirError::NotALabDir { .. })), "{name:?}");
        }
        // A directory with a lab's name that testbed did not make is neither locked nor removed.
        let foreign = LabDir::new(&state, "backups");
        fs::create_dir_all(foreign.root.join("2025")).unwrap();
        fs::write(foreign.root.join("notes.txt"), "keep me").unwrap();
        assert!(matches!(foreign.lock(), Err(LabDirError::Foreign { .. })));
        assert!(matches!(foreign.remove(), Err(LabDirError::Foreign { .. })));
        assert!(foreign.root.join("notes.txt").exists() && !foreign.root.join("lock").exists());
        // An empty one is fine to take.
        let empty = LabDir::new(&state, "fresh");
        fs::create_dir_all(&empty.root).unwrap();
        drop(empty.lock().unwrap());
        empty.remove().unwrap();
        // A hand-built LabDir pointing elsewhere is refused as well.
        let forged = LabDir { name: "victim".into(), root: victim.clone(), state_root: state.clone() };
        assert!(matches!(forged.remove(), Err(LabDirError::NotALabDir { .. })));
        assert!(victim.is_dir() && state.is_dir());
        let ok = LabDir::new(&state, "lab1");
        ok.create().unwrap();
        ok.remove().unwrap();
        assert!(!ok.exists() && state.is_dir());
    }
}
