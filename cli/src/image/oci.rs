//! Container images (issue 16) built from Debian packages, no registry and no docker: the package's .deb
//! is fetched by `apt-get download` (verified by apt against the mirror's signed index), unpacked with
//! `dpkg-deb -x`, and the files an image needs are written as one uncompressed layer of an OCI image
//! layout, with an `oci-archive` of that layout beside it. The tar is deterministic (sorted entries, owner
//! root, mtime 0), so the same .deb gives the same digests. Cached under `<cache root>/oci/<name>-<id>/`
//! (id: a hash of the recipe), entries appearing by a rename as for guest images; the node's agent
//! imports either form (`testbed-agent import-image`) and checks every digest again.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::ImageError;

/// Bumped whenever the recipe below changes the image; part of the cache key.
const RECIPE_VERSION: u32 = 1;
pub const BUSYBOX: &str = "busybox";
pub const KNOWN_NAMES: &[&str] = &[BUSYBOX];
/// The Debian package each image is made of.
const BUSYBOX_PACKAGE: &str = "busybox-static";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Directories every image has: mount points the runtime fills (/proc, /sys, /dev) and /tmp.
const IMAGE_DIRS: &[&str] = &["bin", "dev", "etc", "proc", "root", "sys", "tmp"];

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

fn image_id(name: &str) -> Result<String, ImageError> {
    if !KNOWN_NAMES.contains(&name) {
        let known = KNOWN_NAMES.iter().map(|s| s.to_string()).collect();
        return Err(ImageError::UnknownName { name: name.into(), known });
    }
    let recipe = format!("oci recipe {RECIPE_VERSION}\npackage {BUSYBOX_PACKAGE}\ndirs {IMAGE_DIRS:?}\n");
    Ok(format!("{name}-{}", &hex::encode(Sha256::digest(recipe))[..12]))
}

/// Returns the cached image `name`, building it first when missing (or always with `force`).
pub fn build(name: &str, force: bool) -> Result<OciImage, ImageError> {
    let id = image_id(name)?;
    let dir = cache_dir()?.join(&id);
    if !force && dir.join("layout/index.json").is_file() {
        return read(&dir);
    }
    let staging = cache_dir()?.join(format!(".tmp-{id}-{}", std::process::id()));
    let built = build_into(&staging).and_then(|()| {
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

fn build_into(staging: &Path) -> Result<(), ImageError> {
    let deb_dir = staging.join("deb");
    std::fs::create_dir_all(&deb_dir).map_err(|e| ImageError::io(format!("create {}", deb_dir.display()), e))?;
    run(Command::new("apt-get").arg("download").arg(BUSYBOX_PACKAGE).current_dir(staging), "apt-get download")?;
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
    write_layout(&staging.join("layout"), BUSYBOX, &layer)?;
    write_archive(&staging.join("layout"), &staging.join("image.tar"))?;
    let _ = std::fs::remove_dir_all(&deb_dir);
    let _ = std::fs::remove_file(&deb);
    Ok(())
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

fn put_blob(layout: &Path, bytes: &[u8], media_type: &str) -> Result<serde_json::Value, ImageError> {
    let hex = hex::encode(Sha256::digest(bytes));
    let path = layout.join("blobs/sha256").join(&hex);
    std::fs::write(&path, bytes).map_err(|e| ImageError::io(format!("write {}", path.display()), e))?;
    Ok(json!({ "mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len() }))
}

/// An image layout (image-spec image-layout.md) of one layer, its manifest named `name` in index.json.
pub fn write_layout(layout: &Path, name: &str, layer: &[u8]) -> Result<(), ImageError> {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| ImageError::io(format!("create {}", blobs.display()), e))?;
    let layer_desc = put_blob(layout, layer, LAYER_MEDIA_TYPE)?;
    let diff_id = layer_desc["digest"].clone();
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
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
    use super::*;

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
        write_layout(dir.path(), BUSYBOX, &layer).unwrap();
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
    }
}
