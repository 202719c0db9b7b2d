//! The node's image store, content-addressed: `layers/<hex>/` is the layer of digest `sha256:<hex>`
//! unpacked (once, whatever image brought it), `images/<hex>.json` the image of manifest `sha256:<hex>`
//! (its config and its layers). Entries appear by a rename from `tmp/`, so a crash mid-unpack leaves no
//! half layer under a digest; a failed import removes what it staged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::layout::{read_layout, unpack_archive};
use super::unpack::unpack_layer;
use super::{io, Digest, ImageConfig, ImageError};

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
        let images = self.root.join("images");
        std::fs::create_dir_all(&images).map_err(io(&images))?;
        let path = self.image_file(&manifest.digest);
        let staged = self.staging("image")?;
        let json = serde_json::to_vec_pretty(&image).expect("an image serialises");
        std::fs::write(&staged, json).map_err(io(&staged))?;
        std::fs::rename(&staged, &path).map_err(io(&path))?;
        Ok(image)
    }

    /// Imports image `reference` of an `oci-archive` tarball (unpacked into `tmp/`, removed afterwards).
    pub fn import_archive(&self, archive: &Path, reference: Option<&str>) -> Result<StoredImage, ImageError> {
        let staged = self.staging("archive")?;
        let imported = unpack_archive(archive, &staged).and_then(|()| self.import_layout(&staged, reference));
        let _ = std::fs::remove_dir_all(&staged);
        imported
    }

    pub fn image_file(&self, digest: &Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.json", digest.hex()))
    }

    /// The stored image of manifest `digest`, if imported.
    pub fn get(&self, digest: &Digest) -> Result<Option<StoredImage>, ImageError> {
        let path = self.image_file(digest);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| ImageError::Json { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::Io { path, source: e }),
        }
    }
}
