//! Reading an OCI image layout (image-spec `image-layout.md`): `index.json` names manifests by digest, a
//! manifest names the config and the layers, and every blob is `blobs/sha256/<hex>`. Each blob read here
//! is checked against its digest and size before it is used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io, Digest, ImageError};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full name containerd's and nerdctl's exports give an image (their `ref.name` holds the tag only).
const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// What a container takes from the image config (`config` in the image-spec's config.md), unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(rename = "Entrypoint", default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigBlob {
    #[serde(default)]
    config: Option<ImageConfig>,
}

/// A layer blob, verified, with the media type that says how to unpack it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    pub digest: Digest,
    pub media_type: String,
    pub path: PathBuf,
}

/// One image of a layout: its manifest's digest, its config, and its layers from the bottom up.
#[derive(Debug, Clone)]
pub struct ImageManifest {
    pub digest: Digest,
    /// Names the layout gives the image (`image_names`), for the store's name index.
    pub names: Vec<String>,
    pub config: ImageConfig,
    pub layers: Vec<LayerBlob>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ImageError> {
    let text = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&text).map_err(|source| ImageError::Json { path: path.into(), source })
}

/// The blob a descriptor names, checked against its digest and size.
fn verified_blob(dir: &Path, descriptor: &Descriptor) -> Result<(Digest, PathBuf), ImageError> {
    let digest = Digest::parse(&descriptor.digest)?;
    let path = dir.join("blobs/sha256").join(digest.hex());
    digest.verify_file(&path, Some(descriptor.size))?;
    Ok((digest, path))
}

/// Reads the image of layout `dir` named `reference` (the manifest's `org.opencontainers.image.ref.name`
/// annotation, or its digest); with no reference the index must hold exactly one manifest.
pub fn read_layout(dir: &Path, reference: Option<&str>) -> Result<ImageManifest, ImageError> {
    let index_path = dir.join("index.json");
    let index: Index = read_json(&index_path)?;
    let layout_error = |what: String| ImageError::Layout { path: index_path.clone(), what };
    let chosen = match reference {
        None => match index.manifests.as_slice() {
            [one] => one,
            many => return Err(layout_error(format!("{} manifests and no reference to choose one", many.len()))),
        },
        Some(wanted) => index
            .manifests
            .iter()
            .find(|m| m.digest == wanted || m.annotations.get(REF_NAME).is_some_and(|name| name == wanted))
            .ok_or_else(|| layout_error(format!("no manifest named {wanted}")))?,
    };
    if !chosen.media_type.is_empty() && chosen.media_type != MANIFEST_MEDIA_TYPE {
        return Err(layout_error(format!("{} is a {}, not an image manifest", chosen.digest, chosen.media_type)));
    }
    let (digest, manifest_path) = verified_blob(dir, chosen)?;
    let manifest: Manifest = read_json(&manifest_path)?;
    let (_, config_path) = verified_blob(dir, &manifest.config)?;
    let config = read_json::<ConfigBlob>(&config_path)?.config.unwrap_or_default();
    let layers = manifest
        .layers
        .iter()
        .map(|layer| {
            let (digest, path) = verified_blob(dir, layer)?;
            Ok(LayerBlob { digest, media_type: layer.media_type.clone(), path })
        })
        .collect::<Result<_, ImageError>>()?;
    Ok(ImageManifest { digest, names: image_names(&chosen.annotations), config, layers })
}

/// The names an index entry gives its image: containerd's full name, and `ref.name` when it is a full
/// reference too (`localhost/app:v1`, as podman and skopeo write it); a bare `ref.name` (`latest`, `v1`) is a
/// tag without a repository and names nothing. Names that are not references are left out.
fn image_names(annotations: &BTreeMap<String, String>) -> Vec<String> {
    let full = |name: &&String| name.contains(['/', ':']) && testbed_api::image_ref::normalize(name).is_ok();
    let mut names: Vec<String> =
        [CONTAINERD_NAME, REF_NAME].iter().filter_map(|key| annotations.get(*key)).filter(full).cloned().collect();
    names.dedup();
    names
}

/// Unpacks an `oci-archive` (a tar of an image layout) into `into`, which must not exist yet.
pub fn unpack_archive(archive: &Path, into: &Path) -> Result<(), ImageError> {
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    std::fs::create_dir_all(into).map_err(io(into))?;
    tar::Archive::new(file).unpack(into).map_err(io(archive))
}
