//! The content-addressed image cache. Layout:
//!
//! ```text
//! <root>/                      $TESTBED_CACHE_DIR | $XDG_CACHE_HOME/testbed/images | ~/.cache/testbed/images
//!   <id>/image.json            Manifest (written last, inside the temp dir, before the rename)
//!   <id>/disk.qcow2            immutable base disk
//!   <id>/vmlinuz, initrd.img   direct-boot kernel + initramfs (built images only)
//!   .tmp-<id>-<pid>-<nonce>/   an entry being built or downloaded; renamed to <id>/ when complete
//!   .part-<sha256>             a download in progress (kept to resume with a Range request)
//!   .accel/<key>.json          cached KVM probe outcomes (see `accel_cache_dir`)
//! ```
//!
//! An entry appears by `rename(2)` of a complete directory, so readers never see a half-written image.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ImageArtifacts, ImageError};

pub const MANIFEST: &str = "image.json";
pub const DISK: &str = "disk.qcow2";
pub const KERNEL: &str = "vmlinuz";
pub const INITRD: &str = "initrd.img";

/// Where cached images live (see the module doc for the precedence).
pub fn cache_root() -> Result<PathBuf, ImageError> {
    if let Some(dir) = std::env::var_os("TESTBED_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("testbed/images"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache/testbed/images")),
        None => Err(ImageError::NoCacheDir),
    }
}

/// Where the KVM probe outcomes are cached (`provider::accel`): `<cache_root>/.accel`. The one cache rule
/// is `cache_root`'s; living inside it means one variable moves the whole cache, and the dot keeps `image
/// list`/`rm` from ever taking it for an image.
pub fn accel_cache_dir() -> Result<PathBuf, ImageError> {
    Ok(cache_root()?.join(".accel"))
}

/// How an image came to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    Built {
        recipe_version: u32,
        suite: String,
        /// `package=version` of the packages asked for, as installed.
        packages: Vec<String>,
        kernel_release: String,
    },
    Url {
        url: String,
        sha256: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    /// `debian-12` for built images, the file name of the URL for fetched ones.
    pub name: String,
    pub source: Source,
    pub created_unix: u64,
    /// Kernel arguments for direct boot; empty for firmware-booted disks.
    pub cmdline: String,
    pub has_kernel: bool,
    /// Bytes on the host for the whole entry.
    pub size_bytes: u64,
}

impl Manifest {
    pub fn artifacts(&self, dir: &Path) -> ImageArtifacts {
        ImageArtifacts {
            id: self.id.clone(),
            disk: dir.join(DISK),
            kernel: self.has_kernel.then(|| dir.join(KERNEL)),
            initrd: self.has_kernel.then(|| dir.join(INITRD)),
            cmdline: self.cmdline.clone(),
        }
    }
}

pub struct Entry {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// The cached entry `id`, if complete.
pub fn lookup(root: &Path, id: &str) -> Result<Option<Entry>, ImageError> {
    let dir = root.join(id);
    let path = dir.join(MANIFEST);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let manifest: Manifest =
                serde_json::from_slice(&bytes).map_err(|source| ImageError::Manifest { path: path.clone(), source })?;
            Ok(Some(Entry { dir, manifest }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ImageError::io(format!("read {}", path.display()), e)),
    }
}

/// Every complete entry, oldest first. Temp dirs and partial downloads are skipped.
pub fn list(root: &Path) -> Result<Vec<Entry>, ImageError> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ImageError::io(format!("read {}", root.display()), e)),
    };
    let mut entries = Vec::new();
    for item in rd {
        let item = item.map_err(|e| ImageError::io(format!("read {}", root.display()), e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if let Some(entry) = lookup(root, &name)? {
            entries.push(entry);
        }
    }
    entries.sort_by(|a, b| (a.manifest.created_unix, &a.manifest.id).cmp(&(b.manifest.created_unix, &b.manifest.id)));
    Ok(entries)
}

/// A directory being filled; removed on drop unless `commit` moved it into place.
pub struct TempEntry {
    pub dir: PathBuf,
    root: PathBuf,
    id: String,
    committed: bool,
}

impl TempEntry {
    pub fn create(root: &Path, id: &str) -> Result<TempEntry, ImageError> {
        std::fs::create_dir_all(root).map_err(|e| ImageError::io(format!("create {}", root.display()), e))?;
        let nonce: u32 = rand::random();
        let dir = root.join(format!(".tmp-{id}-{}-{nonce:08x}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| ImageError::io(format!("create {}", dir.display()), e))?;
        Ok(TempEntry { dir, root: root.to_path_buf(), id: id.to_string(), committed: false })
    }

    /// Writes the manifest and renames the directory to `<root>/<id>`. If another process finished the same
    /// entry first, ours is dropped and theirs (identical inputs) is returned.
    pub fn commit(mut self, manifest: &Manifest) -> Result<Entry, ImageError> {
        let path = self.dir.join(MANIFEST);
        let json = serde_json::to_vec_pretty(manifest)
            .map_err(|source| ImageError::Manifest { path: path.clone(), source })?;
        std::fs::write(&path, json).map_err(|e| ImageError::io(format!("write {}", path.display()), e))?;
        let dest = self.root.join(&self.id);
        match std::fs::rename(&self.dir, &dest) {
            Ok(()) => {
                self.committed = true;
                Ok(Entry { dir: dest, manifest: manifest.clone() })
            }
            Err(e) if dest.join(MANIFEST).exists() => {
                // Lost a race with an identical build/download: use the winner's entry; Drop removes ours.
                let _ = e;
                lookup(&self.root, &self.id)?.ok_or_else(|| {
                    ImageError::io(format!("rename to {}", dest.display()), std::io::Error::other("entry vanished"))
                })
            }
            Err(e) => Err(ImageError::io(format!("rename {} to {}", self.dir.display(), dest.display()), e)),
        }
    }
}

impl Drop for TempEntry {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes temp entries left by testbed processes that no longer run (killed mid-build, power loss).
/// Their names end in `-<pid>-<nonce>`; an entry of a live process is left alone.
pub fn sweep_stale(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else { return };
    for item in rd.flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".tmp-") else { continue };
        let mut parts = rest.rsplitn(3, '-');
        let (_nonce, pid) = (parts.next(), parts.next().and_then(|p| p.parse::<u32>().ok()));
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(item.path());
            }
        }
    }
}

/// A process that uses a cached image (see `user_of`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    pub pid: u32,
    /// `lab `L` node `N`` when its command line names a lab's node directory, else its command name.
    pub what: String,
}

impl std::fmt::Display for ImageUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.what, self.pid)
    }
}

/// A process that has a file in `dir` open or names one on its command line. A VM booted from a URL image
/// names only its overlay; QEMU keeps the overlay's backing file (the cached base disk) open, so the open
/// file descriptors are what finds it. Built images are also named on the command line (`-kernel`).
pub fn user_of(dir: &Path) -> Option<ImageUser> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: u32 = p.file_name().to_str()?.parse().ok()?;
        let cmdline = String::from_utf8_lossy(&std::fs::read(p.path().join("cmdline")).ok()?).replace('\0', " ");
        let holds_open = || {
            std::fs::read_dir(p.path().join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir)))
        };
        if !cmdline.contains(&needle) && !holds_open() {
            return None;
        }
        let what = lab_node_of(&cmdline).unwrap_or_else(|| {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            format!("process `{}`", comm.trim())
        });
        Some(ImageUser { pid, what })
    })
}

/// `lab `L` node `N`` from a QEMU command line of a lab VM, whose disks live in `<state>/<lab>/nodes/<node>/`.
fn lab_node_of(cmdline: &str) -> Option<String> {
    cmdline.split([' ', ',', '=']).find_map(|word| {
        let path = Path::new(word);
        let node_dir = path.ancestors().find(|a| a.parent().and_then(Path::file_name) == Some("nodes".as_ref()))?;
        let node = node_dir.file_name()?.to_str()?;
        let lab = node_dir.parent()?.parent()?.file_name()?.to_str()?;
        Some(format!("lab `{lab}` node `{node}`"))
    })
}

/// Total bytes of regular files under `dir` (not following symlinks).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for item in rd.flatten() {
            let Ok(meta) = item.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                stack.push(item.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: &str) -> Manifest {
        Manifest {
            id: id.into(),
            name: "x".into(),
            source: Source::Url { url: "http://127.0.0.1/x".into(), sha256: "00".into() },
            created_unix: 1,
            cmdline: String::new(),
            has_kernel: false,
            size_bytes: 0,
        }
    }

    #[test]
    fn commit_renames_and_drop_cleans_up() {
        let root = tempfile::tempdir().unwrap();
        let t = TempEntry::create(root.path(), "a").unwrap();
        std::fs::write(t.dir.join(DISK), b"disk").unwrap();
        let entry = t.commit(&manifest("a")).unwrap();
        assert_eq!(entry.dir, root.path().join("a"));
        assert_eq!(list(root.path()).unwrap().len(), 1);

        let t = TempEntry::create(root.path(), "b").unwrap();
        let tmp = t.dir.clone();
        drop(t);
        assert!(!tmp.exists(), "an abandoned entry leaves nothing behind");
        assert_eq!(list(root.path()).unwrap().len(), 1);
    }

    #[test]
    fn stale_temp_entries_of_dead_processes_are_swept() {
        let root = tempfile::tempdir().unwrap();
        let live = TempEntry::create(root.path(), "a").unwrap();
        // PIDs are below 2^22 on Linux; this one cannot be running.
        let dead = root.path().join(".tmp-debian-12-abc-99999999-0badf00d");
        std::fs::create_dir(&dead).unwrap();
        sweep_stale(root.path());
        assert!(live.dir.exists());
        assert!(!dead.exists());
    }

    /// Polls `user_of` (between fork and exec the child still looks like us).
    fn wait_for_user(dir: &Path, pid: u32) -> Option<ImageUser> {
        for _ in 0..200 {
            if let Some(u) = user_of(dir).filter(|u| u.pid == pid) {
                return Some(u);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn a_process_naming_the_image_dir_is_its_user() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("img-in-use");
        let arg = root.path().join("labs/demo/nodes/node1/overlay.qcow2");
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30", "x"])
            .arg(dir.join("disk.qcow2"))
            .arg(format!("file={}", arg.display()))
            .spawn()
            .unwrap();
        let found = wait_for_user(&dir, child.id());
        let _ = child.kill();
        let _ = child.wait();
        let found = found.expect("user not found");
        assert_eq!(found.what, "lab `demo` node `node1`");
        assert_eq!(user_of(&root.path().join("nobody-uses-this")), None);
    }

    /// A URL image's base disk appears only as the overlay's backing file, which QEMU holds open.
    #[test]
    fn a_process_holding_a_file_open_is_its_user() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("img-open");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(DISK), b"base").unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::fs::File::open(dir.join(DISK)).unwrap())
            .spawn()
            .unwrap();
        let found = wait_for_user(&dir, child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.map(|u| u.what), Some("process `sleep`".to_string()));
    }

    #[test]
    fn lab_and_node_from_a_qemu_command_line() {
        let cmd = "qemu-system-x86_64 -name tb-a-b -drive file=/s/labs/my-lab/nodes/n-2/overlay.qcow2,if=virtio";
        assert_eq!(lab_node_of(cmd).as_deref(), Some("lab `my-lab` node `n-2`"));
        assert_eq!(lab_node_of("sleep 30"), None);
    }

    #[test]
    fn accel_cache_is_inside_the_one_cache_root_and_never_an_image() {
        assert_eq!(accel_cache_dir().unwrap(), cache_root().unwrap().join(".accel"));
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(".accel")).unwrap();
        std::fs::write(root.path().join(".accel/0123.json"), br#"{"accel":"tcg","reason":"x"}"#).unwrap();
        assert!(list(root.path()).unwrap().is_empty());
    }

    #[test]
    fn losing_a_race_returns_the_winner() {
        let root = tempfile::tempdir().unwrap();
        let first = TempEntry::create(root.path(), "a").unwrap();
        let second = TempEntry::create(root.path(), "a").unwrap();
        let second_dir = second.dir.clone();
        first.commit(&manifest("a")).unwrap();
        let entry = second.commit(&manifest("a")).unwrap();
        assert_eq!(entry.dir, root.path().join("a"));
        assert!(!second_dir.exists());
    }
}
