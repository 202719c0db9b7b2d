//! Container images (issue 16) built from Debian packages, no registry and no docker, each one layer of an
//! OCI image layout with an `oci-archive` of that layout beside it: `busybox` (one static binary, busybox.rs)
//! and `debian-tools` (a Debian root with the tools the suites run, debian_tools.rs). Cached under
//! `<cache root>/oci/<name>-<id>/` (id: a hash of the recipe), entries appearing by a rename as for guest
//! images; the node's agent imports either form (`testbed-agent import-image`) and checks every digest again.

mod busybox;
mod debian_tools;

#[cfg(test)]
pub use busybox::{busybox_layer, DEFAULTS as BUSYBOX_DEFAULTS};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::ImageError;

pub const BUSYBOX: &str = "busybox";
pub const DEBIAN_TOOLS: &str = "debian-tools";
pub const KNOWN_NAMES: &[&str] = &[BUSYBOX, DEBIAN_TOOLS];
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A layer's blob as the manifest lists it, and its `diff_id` (the digest of the uncompressed tar).
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: String,
}

impl Layer {
    /// An uncompressed tar layer: its blob digest is its diff_id.
    pub fn tar(tar: Vec<u8>) -> Layer {
        let diff_id = sha256_digest(&tar);
        Layer { blob: tar, media_type: "application/vnd.oci.image.layer.v1.tar", diff_id }
    }

    /// A gzip-compressed layer, as registries serve them: fewer bytes to copy to every node.
    pub fn gzip(tar: &[u8]) -> std::io::Result<Layer> {
        // mtime 0 and no file name in the gzip header, so the same tar gives the same blob.
        let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
        gz.write_all(tar)?;
        let blob = gz.finish()?;
        Ok(Layer { blob, media_type: "application/vnd.oci.image.layer.v1.tar+gzip", diff_id: sha256_digest(tar) })
    }
}

/// What a container runs with when its pod says nothing (image-spec config.md, `config`).
pub struct RuntimeDefaults {
    pub cmd: &'static [&'static str],
    pub path: &'static str,
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A built container image in the cache.
#[derive(Debug, Clone, Serialize)]
pub struct OciImage {
    pub name: String,
    pub id: String,
    /// The image layout directory.
    pub layout: PathBuf,
    /// The same layout as an `oci-archive` tarball.
    pub archive: PathBuf,
    /// The manifest's digest: what a container's `image` names once the node has imported it.
    pub digest: String,
}

fn cache_dir() -> Result<PathBuf, ImageError> {
    Ok(super::cache_root()?.join("oci"))
}

/// Image `name`'s recipe as text (what it is made of): its hash names the cache entry.
fn recipe(name: &str) -> Result<String, ImageError> {
    match name {
        BUSYBOX => Ok(busybox::recipe()),
        DEBIAN_TOOLS => Ok(debian_tools::recipe()),
        _ => {
            let known = KNOWN_NAMES.iter().map(|s| s.to_string()).collect();
            Err(ImageError::UnknownName { name: name.into(), known })
        }
    }
}

fn image_id(name: &str) -> Result<String, ImageError> {
    Ok(format!("{name}-{}", &hex::encode(Sha256::digest(recipe(name)?))[..12]))
}

/// Writes image `name` (a known one) into `staging`: its layout and its archive.
fn build_into(name: &str, staging: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(staging).map_err(|e| ImageError::io(format!("create {}", staging.display()), e))?;
    let (layer, defaults) = match name {
        BUSYBOX => (busybox::layer(staging)?, &busybox::DEFAULTS),
        _ => (debian_tools::layer(staging)?, &debian_tools::DEFAULTS),
    };
    write_layout(&staging.join("layout"), name, &layer, defaults)?;
    write_archive(&staging.join("layout"), &staging.join("image.tar"))
}

/// Returns the cached image `name`, building it first when missing (or always with `force`).
pub fn build(name: &str, force: bool) -> Result<OciImage, ImageError> {
    let id = image_id(name)?;
    let dir = cache_dir()?.join(&id);
    if !force && dir.join("layout/index.json").is_file() {
        return read(&dir);
    }
    let staging = cache_dir()?.join(format!(".tmp-{id}-{}", std::process::id()));
    let built = build_into(name, &staging).and_then(|()| {
        if force {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::rename(&staging, &dir).map_err(|e| ImageError::io(format!("rename to {}", dir.display()), e))
    });
    let _ = std::fs::remove_dir_all(&staging);
    built?;
    read(&dir)
}

/// The cached container images.
pub fn list() -> Result<Vec<OciImage>, ImageError> {
    let root = cache_dir()?;
    let Ok(entries) = std::fs::read_dir(&root) else { return Ok(vec![]) };
    let mut images = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(".tmp-") && dir.join("layout/index.json").is_file() {
            images.push(read(&dir)?);
        }
    }
    images.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(images)
}

fn read(dir: &Path) -> Result<OciImage, ImageError> {
    let index_path = dir.join("layout/index.json");
    let text = std::fs::read(&index_path).map_err(|e| ImageError::io(format!("read {}", index_path.display()), e))?;
    let index: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| ImageError::Manifest { path: index_path.clone(), source })?;
    let manifest = &index["manifests"][0];
    let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(OciImage {
        name: manifest["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap_or_default().into(),
        id,
        layout: dir.join("layout"),
        archive: dir.join("image.tar"),
        digest: manifest["digest"].as_str().unwrap_or_default().into(),
    })
}

fn run(cmd: &mut Command, what: &str) -> Result<(), ImageError> {
    let out = cmd.output().map_err(|e| ImageError::io(what.into(), e))?;
    if !out.status.success() {
        let output = String::from_utf8_lossy(&out.stderr).into_owned();
        return Err(ImageError::CommandFailed { what: what.into(), status: out.status.to_string(), output });
    }
    Ok(())
}

fn put_blob(layout: &Path, bytes: &[u8], media_type: &str) -> Result<serde_json::Value, ImageError> {
    let digest = sha256_digest(bytes);
    let path = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    std::fs::write(&path, bytes).map_err(|e| ImageError::io(format!("write {}", path.display()), e))?;
    Ok(json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() }))
}

/// An image layout (image-spec image-layout.md) of one layer, its manifest named `name` in index.json.
pub fn write_layout(layout: &Path, name: &str, layer: &Layer, defaults: &RuntimeDefaults) -> Result<(), ImageError> {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| ImageError::io(format!("create {}", blobs.display()), e))?;
    let layer_desc = put_blob(layout, &layer.blob, layer.media_type)?;
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": defaults.cmd, "Env": [format!("PATH={}", defaults.path)], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [layer.diff_id] },
    });
    let config_desc = put_blob(layout, config.to_string().as_bytes(), "application/vnd.oci.image.config.v1+json")?;
    let manifest = json!({
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "config": config_desc, "layers": [layer_desc],
    });
    let mut manifest_desc = put_blob(layout, manifest.to_string().as_bytes(), MANIFEST_MEDIA_TYPE)?;
    manifest_desc["annotations"] = json!({ "org.opencontainers.image.ref.name": name });
    let files = [
        ("oci-layout", json!({ "imageLayoutVersion": "1.0.0" })),
        ("index.json", json!({ "schemaVersion": 2, "manifests": [manifest_desc] })),
    ];
    for (file, value) in files {
        let path = layout.join(file);
        std::fs::write(&path, value.to_string()).map_err(|e| ImageError::io(format!("write {}", path.display()), e))?;
    }
    Ok(())
}

fn write_archive(layout: &Path, archive: &Path) -> Result<(), ImageError> {
    let io = |e| ImageError::io(format!("write {}", archive.display()), e);
    let file = std::fs::File::create(archive).map_err(io)?;
    let mut tar = tar::Builder::new(file);
    tar.append_dir_all(".", layout).map_err(io)?;
    tar.finish().map_err(io)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn a_gzip_layer_names_the_uncompressed_tar_as_its_diff_id_and_is_the_same_for_the_same_tar() {
        let tar = busybox_layer(b"\x7fELF fake busybox", &["sh".to_string()]).unwrap();
        let layer = Layer::gzip(&tar).unwrap();
        assert_eq!(layer.blob, Layer::gzip(&tar).unwrap().blob, "same tar, same blob");
        assert_eq!(layer.diff_id, Layer::tar(tar.clone()).diff_id);
        assert_ne!(sha256_digest(&layer.blob), layer.diff_id);
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(layer.blob.as_slice()).read_to_end(&mut unpacked).unwrap();
        assert_eq!(unpacked, tar);

        let dir = tempfile::tempdir().unwrap();
        write_layout(dir.path(), DEBIAN_TOOLS, &layer, &debian_tools::DEFAULTS).unwrap();
        let blob = |digest: &str| {
            let path = dir.path().join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(path).unwrap()).unwrap()
        };
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap());
        assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        assert_eq!(manifest["layers"][0]["digest"], sha256_digest(&layer.blob));
        let config = blob(manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["rootfs"]["diff_ids"][0], layer.diff_id);
        assert_eq!(config["config"]["Cmd"][0], "/bin/bash");
        assert!(config["config"]["Env"][0].as_str().unwrap().starts_with("PATH=/usr/local/sbin:"), "{config}");
    }

    #[test]
    fn the_layer_is_deterministic_and_the_layout_names_its_blobs_by_digest() {
        let applets = ["sh".to_string(), "ls".to_string(), "sh".to_string()];
        let layer = busybox_layer(b"\x7fELF fake busybox", &applets).unwrap();
        assert_eq!(layer, busybox_layer(b"\x7fELF fake busybox", &applets).unwrap(), "same input, same bytes");
        let names: Vec<String> = tar::Archive::new(layer.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.contains(&"bin/busybox".to_string()) && names.contains(&"bin/sh".to_string()), "{names:?}");
        assert_eq!(names.iter().filter(|n| *n == "bin/sh").count(), 1, "applets deduplicated");

        let dir = tempfile::tempdir().unwrap();
        write_layout(dir.path(), BUSYBOX, &Layer::tar(layer.clone()), &BUSYBOX_DEFAULTS).unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
        assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], BUSYBOX);
        // Every blob is named by the sha256 of its bytes.
        for blob in std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap() {
            let blob = blob.unwrap();
            let bytes = std::fs::read(blob.path()).unwrap();
            assert_eq!(hex::encode(Sha256::digest(&bytes)), blob.file_name().to_string_lossy());
        }
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("blobs/sha256").join(manifest_digest.trim_start_matches("sha256:")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(manifest["layers"][0]["digest"], format!("sha256:{}", hex::encode(Sha256::digest(&layer))));
        assert_eq!(manifest["layers"][0]["size"], layer.len());
    }

    #[test]
    fn unknown_names_are_refused() {
        assert!(matches!(image_id("alpine"), Err(ImageError::UnknownName { .. })));
        assert!(image_id(BUSYBOX).unwrap().starts_with("busybox-"));
        assert!(image_id(DEBIAN_TOOLS).unwrap().starts_with("debian-tools-"));
    }
}
