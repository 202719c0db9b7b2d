//! OCI images (issue 16): an image layout directory or an `oci-archive` tarball is read as the image-spec
//! says (index.json -> manifest -> config + layers), every blob checked against its sha256 digest, and each
//! layer unpacked once into a content-addressed store, ready to be an overlayfs lower directory.
//!
//! - `digest`: the `sha256:<hex>` digests and the check of a blob against one.
//! - `layout`: reading the layout (or an archive of one) into an [`ImageManifest`].
//! - `unpack`: one layer tar into a directory, whiteouts turned into overlayfs' own form.
//! - `store`: the content-addressed store of unpacked layers and of the images that use them.
//! - `users`: the user a container runs as, from the image's /etc/passwd and /etc/group.

mod digest;
mod layout;
mod store;
mod unpack;
pub mod users;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use digest::Digest;
pub use layout::ImageConfig;
pub use store::{ImageStore, StoredImage};
pub use users::{ImageFiles, ImageUser};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not the JSON the image-spec describes: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{0:?} is not a sha256 digest (sha256:<64 lowercase hex digits>)")]
    BadDigest(String),
    #[error("blob {digest} ({path}) has sha256:{actual}, not the digest that names it")]
    DigestMismatch { digest: Digest, path: PathBuf, actual: String },
    #[error("blob {digest} ({path}) is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch { digest: Digest, path: PathBuf, expected: u64, actual: u64 },
    #[error("{path}: {what}")]
    Layout { path: PathBuf, what: String },
    #[error("{0}")]
    BadName(String),
    #[error("no image {0} in this node's store")]
    NotPresent(String),
    #[error("layer {digest}: media type {media_type} is not a tar layer this store can unpack")]
    LayerMediaType { digest: Digest, media_type: String },
    #[error("layer {digest}: entry {entry}: {what}")]
    LayerEntry { digest: Digest, entry: String, what: String },
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { path, source }
}
