//! The node's image store, content-addressed: `layers/<hex>/` is the layer of digest `sha256:<hex>`
//! unpacked (once, whatever image brought it), `images/<hex>.json` the image of manifest `sha256:<hex>`
//! (its config and its layers), `names/<hash>.json` a name the image was imported under and its manifest
//! digest (the name index, as containerd keeps one: `busybox` finds the image of that name; the file is
//! named by a hash of the normalized name, which may hold '/'). Entries appear by a rename from `tmp/`, so
//! a crash mid-unpack leaves no half layer under a digest; a failed import removes what it staged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use testbed_api::image_ref::normalize;

use super::layout::{read_layout, unpack_archive};
use super::unpack::unpack_layer;
use super::{io, Digest, ImageConfig, ImageError};

/// One entry of the name index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageName {
    /// Normalized (`docker.io/library/busybox:latest`).
    pub name: String,
    /// The manifest's digest.
    pub digest: String,
}

/// An image in the store: what its containers need to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredImage {
    /// The manifest's digest, `sha256:<hex>`.
    pub digest: String,
    pub config: ImageConfig,
    /// Layer digests, bottom layer first (manifest order).
    pub layers: Vec<String>,
}

pub struct ImageStore {
    root: PathBuf,
}

static STAGING: AtomicU64 = AtomicU64::new(0);

impl ImageStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn layer_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("layers").join(digest.hex())
    }

    /// overlayfs `lowerdir` order: the top layer first.
    pub fn lower_dirs(&self, image: &StoredImage) -> Result<Vec<PathBuf>, ImageError> {
        image.layers.iter().rev().map(|d| Ok(self.layer_dir(&Digest::parse(d)?))).collect()
    }

    fn staging(&self, what: &str) -> Result<PathBuf, ImageError> {
        let tmp = self.root.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let n = STAGING.fetch_add(1, Ordering::Relaxed);
        Ok(tmp.join(format!("{what}.{}.{n}", std::process::id())))
    }

    /// Imports image `reference` (see `read_layout`) of the layout directory `dir`.
    pub fn import_layout(&self, dir: &Path, reference: Option<&str>) -> Result<StoredImage, ImageError> {
        let manifest = read_layout(dir, reference)?;
        for layer in &manifest.layers {
            let dest = self.layer_dir(&layer.digest);
            if dest.is_dir() {
                continue;
            }
            let staged = self.staging(layer.digest.hex())?;
            let unpacked = unpack_layer(layer, &staged).and_then(|()| {
                std::fs::create_dir_all(dest.parent().expect("layers/<hex>")).map_err(io(&dest))?;
                std::fs::rename(&staged, &dest).map_err(io(&dest))
            });
            if unpacked.is_err() {
                let _ = std::fs::remove_dir_all(&staged);
            }
            unpacked?;
        }
        let image = StoredImage {
            digest: manifest.digest.to_string(),
            config: manifest.config,
            layers: manifest.layers.iter().map(|l| l.digest.to_string()).collect(),
        };
        self.write_entry(&self.image_file(&manifest.digest), &image)?;
        for name in &manifest.names {
            self.tag(name, &manifest.digest)?;
        }
        Ok(image)
    }

    /// Writes `value` at `path` by a rename from `tmp/`.
    fn write_entry(&self, path: &Path, value: &impl Serialize) -> Result<(), ImageError> {
        let dir = path.parent().expect("an entry has a directory");
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let staged = self.staging("entry")?;
        let json = serde_json::to_vec_pretty(value).expect("an entry serialises");
        std::fs::write(&staged, json).map_err(io(&staged))?;
        std::fs::rename(&staged, path).map_err(io(path))
    }

    fn name_file(&self, normalized: &str) -> PathBuf {
        let hash = hex::encode(Sha256::digest(normalized.as_bytes()));
        self.root.join("names").join(format!("{}.json", &hash[..32]))
    }

    /// Indexes the stored image of manifest `digest` under `name` (moving the name if another image had it,
    /// as a tag moves).
    pub fn tag(&self, name: &str, digest: &Digest) -> Result<ImageName, ImageError> {
        let normalized = normalize(name).map_err(ImageError::BadName)?;
        if self.get(digest)?.is_none() {
            return Err(ImageError::NotPresent(format!("{digest} (to be named {normalized})")));
        }
        let entry = ImageName { name: normalized, digest: digest.to_string() };
        self.write_entry(&self.name_file(&entry.name), &entry)?;
        Ok(entry)
    }

    /// The stored image named `name` (normalized first: `busybox` is `docker.io/library/busybox:latest`).
    pub fn get_by_name(&self, name: &str) -> Result<Option<StoredImage>, ImageError> {
        let normalized = normalize(name).map_err(ImageError::BadName)?;
        let Some(entry) = read_entry::<ImageName>(self.name_file(&normalized))? else { return Ok(None) };
        self.get(&Digest::parse(&entry.digest)?)
    }

    /// Every name of the index, sorted.
    pub fn names(&self) -> Result<Vec<ImageName>, ImageError> {
        let dir = self.root.join("names");
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(vec![]) };
        let mut names = Vec::new();
        for path in entries.flatten().map(|e| e.path()) {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            names.push(serde_json::from_slice(&bytes).map_err(|source| ImageError::Json { path, source })?);
        }
        names.sort_by(|a: &ImageName, b| a.name.cmp(&b.name));
        Ok(names)
    }

    /// Imports image `reference` of an `oci-archive` tarball (unpacked into `tmp/`, removed afterwards).
    pub fn import_archive(&self, archive: &Path, reference: Option<&str>) -> Result<StoredImage, ImageError> {
        let staged = self.staging("archive")?;
        let imported = unpack_archive(archive, &staged).and_then(|()| self.import_layout(&staged, reference));
        let _ = std::fs::remove_dir_all(&staged);
        imported
    }

    fn image_file(&self, digest: &Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.json", digest.hex()))
    }

    /// The stored image of manifest `digest`, if imported.
    pub fn get(&self, digest: &Digest) -> Result<Option<StoredImage>, ImageError> {
        read_entry(self.image_file(digest))
    }
}

/// The entry at `path` (`write_entry`'s JSON), None when there is none.
fn read_entry<T: serde::de::DeserializeOwned>(path: PathBuf) -> Result<Option<T>, ImageError> {
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| ImageError::Json { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ImageError::Io { path, source: e }),
    }
}
