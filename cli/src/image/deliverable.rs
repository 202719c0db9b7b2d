//! A container image as `up` copies it to a node: one `oci-archive` (what `testbed-agent import-image`
//! reads) and the manifest digest the node must find in it. The host only reads which manifest the image
//! names; every blob is checked against its digest on the node, after the copy.

use std::io::Read;
use std::path::Path;

use super::oci;
use super::ImageError;
use crate::plan::ContainerImage;

/// An image ready to be copied to a node.
#[derive(Debug, Clone)]
pub struct DeliverableImage {
    /// What the topology named it (`busybox`, a path), for messages.
    pub source: ContainerImage,
    /// The image as an `oci-archive` tarball.
    pub archive: Vec<u8>,
    /// The manifest's digest, `sha256:<hex>`: the container's `image` once imported.
    pub digest: String,
}

impl DeliverableImage {
    /// The digest's hex digits: the image's file name in the node's store.
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// `source` built (from the cache when it is there) or read, as one archive.
pub fn deliverable(source: &ContainerImage) -> Result<DeliverableImage, ImageError> {
    let (archive, digest) = match source {
        ContainerImage::Built(name) => {
            let built = oci::build(name, false)?;
            let archive = std::fs::read(&built.archive)
                .map_err(|e| ImageError::io(format!("read {}", built.archive.display()), e))?;
            (archive, built.digest)
        }
        ContainerImage::Path(path) if path.is_dir() => {
            let index = std::fs::read(path.join("index.json"))
                .map_err(|e| ImageError::io(format!("read {}", path.join("index.json").display()), e))?;
            (layout_archive(path)?, only_manifest(path, &index)?)
        }
        ContainerImage::Path(path) => {
            let archive = std::fs::read(path).map_err(|e| ImageError::io(format!("read {}", path.display()), e))?;
            let index = archive_index(path, &archive)?;
            let digest = only_manifest(path, &index)?;
            (archive, digest)
        }
    };
    Ok(DeliverableImage { source: source.clone(), archive, digest })
}

/// The digest of the one manifest of an `index.json` (a container names one image; a layout of several
/// would need a reference the topology has no field for yet).
fn only_manifest(path: &Path, index: &[u8]) -> Result<String, ImageError> {
    let bad = |what: String| ImageError::OciImage { path: path.to_path_buf(), what };
    let index: serde_json::Value =
        serde_json::from_slice(index).map_err(|e| bad(format!("index.json is not JSON: {e}")))?;
    let manifests = index["manifests"].as_array().map(Vec::as_slice).unwrap_or_default();
    let [manifest] = manifests else {
        return Err(bad(format!(
            "index.json lists {} manifests; a container's image must be exactly one",
            manifests.len()
        )));
    };
    match manifest["digest"].as_str() {
        Some(d) if testbed_api::is_sha256_digest(d) => Ok(d.to_string()),
        other => Err(bad(format!("index.json's manifest digest {other:?} is not sha256:<64 lowercase hex digits>"))),
    }
}

/// `index.json` of an `oci-archive` tarball (at its root, with or without `./`).
fn archive_index(path: &Path, archive: &[u8]) -> Result<Vec<u8>, ImageError> {
    // The bytes are already read: what fails here is the file's form, the user's input.
    let io =
        |e: std::io::Error| ImageError::OciImage { path: path.to_path_buf(), what: format!("not a tar archive: {e}") };
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let name = entry.path().map_err(io)?.into_owned();
        if name == Path::new("index.json") || name == Path::new("./index.json") {
            let mut index = Vec::new();
            entry.read_to_end(&mut index).map_err(io)?;
            return Ok(index);
        }
    }
    Err(ImageError::OciImage {
        path: path.to_path_buf(),
        what: "no index.json in the archive: not an oci-archive".into(),
    })
}

/// An image layout directory as an `oci-archive` tarball, in memory.
fn layout_archive(layout: &Path) -> Result<Vec<u8>, ImageError> {
    let io = |e| ImageError::io(format!("archive {}", layout.display()), e);
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", layout).map_err(io)?;
    tar.into_inner().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busybox_layout(dir: &Path) -> String {
        let layer = oci::busybox_layer(b"\x7fELF fake", &["sh".to_string()]).unwrap();
        oci::write_layout(dir, oci::BUSYBOX, &oci::Layer::tar(layer), &oci::BUSYBOX_DEFAULTS).unwrap();
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        index["manifests"][0]["digest"].as_str().unwrap().to_string()
    }

    #[test]
    fn a_layout_and_its_archive_name_the_same_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let digest = busybox_layout(&layout);
        let from_dir = deliverable(&ContainerImage::Path(layout.clone())).unwrap();
        assert_eq!(from_dir.digest, digest);
        let archive = dir.path().join("image.tar");
        std::fs::write(&archive, &from_dir.archive).unwrap();
        let from_file = deliverable(&ContainerImage::Path(archive)).unwrap();
        assert_eq!(from_file.digest, digest);
        assert_eq!(from_file.hex(), &digest[7..]);
    }

    #[test]
    fn an_index_of_two_manifests_or_none_is_refused_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        busybox_layout(dir.path());
        let index_path = dir.path().join("index.json");
        let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
        let first = index["manifests"][0].clone();
        index["manifests"].as_array_mut().unwrap().push(first);
        std::fs::write(&index_path, index.to_string()).unwrap();
        let err = deliverable(&ContainerImage::Path(dir.path().into())).unwrap_err().to_string();
        assert!(err.contains("lists 2 manifests") && err.contains(&dir.path().display().to_string()), "{err}");

        let not_tar = dir.path().join("not.tar");
        std::fs::write(&not_tar, b"hello").unwrap();
        let err = deliverable(&ContainerImage::Path(not_tar)).unwrap_err();
        assert!(err.is_bad_input(), "{err}");
    }
}
