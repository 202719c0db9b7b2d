//! The `busybox` image: Debian's busybox-static, fetched by `apt-get download` (verified by apt against the
//! mirror's signed index) and unpacked with `dpkg-deb -x`; its one uncompressed layer holds the binary, a
//! symlink per applet and a root user. The tar is deterministic (sorted entries, owner root, mtime 0), so the
//! same .deb gives the same digests. No root needed.

use std::path::Path;
use std::process::Command;

use super::{run, Layer, RuntimeDefaults};
use crate::image::ImageError;

/// Bumped whenever the recipe below changes the image; part of the cache key.
const RECIPE_VERSION: u32 = 1;
/// The Debian package the image is made of.
const PACKAGE: &str = "busybox-static";
/// Directories every image has: mount points the runtime fills (/proc, /sys, /dev) and /tmp.
const IMAGE_DIRS: &[&str] = &["bin", "dev", "etc", "proc", "root", "sys", "tmp"];
pub const DEFAULTS: RuntimeDefaults = RuntimeDefaults { cmd: &["/bin/sh"], path: "/bin" };

pub(super) fn recipe() -> String {
    format!("oci recipe {RECIPE_VERSION}\npackage {PACKAGE}\ndirs {IMAGE_DIRS:?}\n")
}

/// The image's layer, from the package downloaded into `staging`.
pub(super) fn layer(staging: &Path) -> Result<Layer, ImageError> {
    let deb_dir = staging.join("deb");
    std::fs::create_dir_all(&deb_dir).map_err(|e| ImageError::io(format!("create {}", deb_dir.display()), e))?;
    run(Command::new("apt-get").arg("download").arg(PACKAGE).current_dir(staging), "apt-get download")?;
    let deb = std::fs::read_dir(staging)
        .map_err(|e| ImageError::io(format!("read {}", staging.display()), e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| ImageError::Recipe(format!("apt-get download left no .deb in {}", staging.display())))?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&deb_dir), "dpkg-deb -x")?;
    let busybox = deb_dir.join("bin/busybox");
    let list = Command::new(&busybox).arg("--list").output().map_err(|e| ImageError::io("busybox --list".into(), e))?;
    let applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .filter(|a| !a.is_empty() && a != "busybox" && !a.contains('/'))
        .collect();
    let binary = std::fs::read(&busybox).map_err(|e| ImageError::io(format!("read {}", busybox.display()), e))?;
    let layer = busybox_layer(&binary, &applets).map_err(|e| ImageError::io("write the layer".into(), e))?;
    let _ = std::fs::remove_dir_all(&deb_dir);
    let _ = std::fs::remove_file(&deb);
    Ok(Layer::tar(layer))
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// The busybox image's one layer: its directories, /etc/passwd and /etc/group for root, the static binary
/// as /bin/busybox and a symlink per applet in /bin (so `sh`, `ls`, ... resolve through PATH=/bin).
pub fn busybox_layer(binary: &[u8], applets: &[String]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for dir in IMAGE_DIRS {
        let mode = if *dir == "tmp" { 0o1777 } else { 0o755 };
        tar.append_data(&mut header(tar::EntryType::Directory, mode, 0), dir, std::io::empty())?;
    }
    let files: [(&str, &[u8]); 2] =
        [("etc/group", b"root:x:0:\nnogroup:x:65534:\n"), ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")];
    for (path, content) in files {
        tar.append_data(&mut header(tar::EntryType::Regular, 0o644, content.len() as u64), path, content)?;
    }
    tar.append_data(&mut header(tar::EntryType::Regular, 0o755, binary.len() as u64), "bin/busybox", binary)?;
    let mut sorted = applets.to_vec();
    sorted.sort();
    sorted.dedup();
    for applet in sorted {
        tar.append_link(&mut header(tar::EntryType::Symlink, 0o777, 0), format!("bin/{applet}"), "busybox")?;
    }
    tar.into_inner()
}
