//! One layer tar into one directory, as containerd's overlay snapshotter lays it out: the layer's files as
//! they are, and its whiteouts (image-spec `layer.md`) in the form overlayfs reads from a lower directory:
//! `.wh.NAME` (NAME deleted from the layers below) becomes a character device 0/0 named NAME, and
//! `DIR/.wh..wh..opq` (nothing of DIR from the layers below shows) becomes the xattr
//! `trusted.overlay.opaque=y` on DIR. Both need root (CAP_MKNOD, CAP_SYS_ADMIN), as mounting does.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::layout::LayerBlob;
use super::{io, ImageError};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

fn decompressed(layer: &LayerBlob) -> Result<Box<dyn Read>, ImageError> {
    let file = std::fs::File::open(&layer.path).map_err(io(&layer.path))?;
    let media_type = layer.media_type.as_str();
    if media_type.ends_with("tar+gzip") || media_type.ends_with("tar.gzip") {
        Ok(Box::new(flate2::read::GzDecoder::new(file)))
    } else if media_type.ends_with("layer.v1.tar") || media_type.ends_with("rootfs.diff.tar") {
        Ok(Box::new(file))
    } else {
        Err(ImageError::LayerMediaType { digest: layer.digest.clone(), media_type: media_type.into() })
    }
}

/// Unpacks `layer` into `dest` (an empty directory).
pub fn unpack_layer(layer: &LayerBlob, dest: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let mut archive = tar::Archive::new(decompressed(layer)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let entry_error = |entry: &Path, what: String| ImageError::LayerEntry {
        digest: layer.digest.clone(),
        entry: entry.display().to_string(),
        what,
    };
    for entry in archive.entries().map_err(io(&layer.path))? {
        let mut entry = entry.map_err(io(&layer.path))?;
        let path: PathBuf = entry.path().map_err(io(&layer.path))?.into_owned();
        let relative = inside(&path).ok_or_else(|| entry_error(&path, "leaves the layer's root".into()))?;
        if relative.as_os_str().is_empty() {
            // The root itself (`./`, as `tar -C dir .` and mmdebstrap write it): the layer directory is there
            // already, and the container's root is the overlay's, whatever mode the layer gives it.
            if entry.header().entry_type().is_dir() {
                continue;
            }
            return Err(entry_error(&path, "the layer's root is not a directory".into()));
        }
        let name = relative.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = dest.join(relative.parent().unwrap_or(Path::new("")));
        if name == OPAQUE_MARKER {
            std::fs::create_dir_all(&parent).map_err(io(&parent))?;
            set_xattr(&parent, "trusted.overlay.opaque", b"y").map_err(|e| entry_error(&path, e.to_string()))?;
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            std::fs::create_dir_all(&parent).map_err(io(&parent))?;
            overlay_whiteout(&parent.join(hidden)).map_err(|e| entry_error(&path, e.to_string()))?;
        } else if !entry.unpack_in(dest).map_err(|e| entry_error(&path, with_cause(&e)))? {
            return Err(entry_error(&path, "leaves the layer's root".into()));
        }
    }
    Ok(())
}

/// The tar crate's errors say what failed in their message and why in their source.
fn with_cause(e: &std::io::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The entry's path relative to the layer root (a leading `/` or `./` dropped; empty for the root itself), or
/// None if it has `..`.
fn inside(path: &Path) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(relative)
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput.into())
}

/// overlayfs' whiteout: a character device with device number 0/0.
fn overlay_whiteout(path: &Path) -> std::io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let (c, name) = (c_path(path)?, CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?);
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    if unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
