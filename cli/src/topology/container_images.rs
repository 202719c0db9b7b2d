//! A container's `image:`: a name of an image testbed builds, or the path of an OCI image on the host. Only
//! what the file shows is checked here (a known name, a path that exists and has the form of a layout or an
//! archive); the digests are checked by the node's agent when `up` imports the image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use testbed_api::PodSpec;

use super::checked::ContainerImage;
use super::locate::FieldPath;
use super::validate::Ctx;
use super::TopologyError;
use crate::image::oci::KNOWN_NAMES;

/// The container image `value` names, at `path` of the file.
pub(super) fn check(ctx: &Ctx<'_>, path: &FieldPath, value: &str) -> Result<ContainerImage, TopologyError> {
    ContainerImage::from_reference(value, ctx.file().parent()).map_err(|message| ctx.at(path, message))
}

impl ContainerImage {
    /// The image `value` names: a name testbed builds, or the path of an OCI image layout directory (with its
    /// index.json) or `oci-archive` that exists, a relative one taken from `base` (the topology file's
    /// directory; the working directory without one). Err: why it is neither, for a person.
    pub fn from_reference(value: &str, base: Option<&Path>) -> Result<ContainerImage, String> {
        if !value.contains('/') && !value.starts_with('.') {
            if KNOWN_NAMES.contains(&value) {
                return Ok(ContainerImage::Built(value.to_string()));
            }
            return Err(format!(
                "unknown image `{value}`: testbed builds {}; a path to an OCI image layout or oci-archive on the \
                 host contains a `/` (./image.tar)",
                KNOWN_NAMES.join(", ")
            ));
        }
        let relative = Path::new(value);
        let full: PathBuf = match base {
            Some(dir) if relative.is_relative() => dir.join(relative),
            _ => relative.to_path_buf(),
        };
        let full = std::path::absolute(&full).unwrap_or(full);
        if full.is_dir() {
            if !full.join("index.json").is_file() {
                return Err(format!("{} is a directory without index.json: not an OCI image layout", full.display()));
            }
        } else if !full.is_file() {
            return Err(format!("no OCI image layout or oci-archive at {}", full.display()));
        }
        Ok(ContainerImage::Path(full))
    }
}

/// A manifest digest that stands for the one `up` learns: with it, the API's rules for containers with an
/// image (an empty `command` keeps the image's) apply when the file is checked.
const STAND_IN_DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// `spec` as the agent will see it, as far as the file decides: the containers of `images` with an image.
pub(super) fn with_stand_in_digests(spec: &PodSpec, images: &BTreeMap<String, ContainerImage>) -> PodSpec {
    let mut spec = spec.clone();
    for c in spec.containers.iter_mut().filter(|c| images.contains_key(&c.name)) {
        c.image = Some(STAND_IN_DIGEST.to_string());
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::super::checked::ContainerImage;
    use super::super::tests::BASE;
    use super::super::{check_source, TopologyError};

    fn check_in(dir: &std::path::Path, pods: &str) -> Result<super::super::CheckedTopology, TopologyError> {
        let file = dir.join("lab.yaml");
        let src = format!("{BASE}pods:\n{pods}");
        std::fs::write(&file, &src).unwrap();
        check_source(&file, src.as_bytes())
    }

    #[test]
    fn a_built_name_or_a_path_from_the_files_directory_and_command_may_then_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.tar"), b"an archive").unwrap();
        let pods = "  - name: web\n    node: node1\n    containers:\n      - {name: a, image: busybox}\n      \
                    - {name: b, image: ./app.tar, command: [sh]}\n      - {name: c, command: [sh]}\n";
        let t = check_in(dir.path(), pods).expect("valid");
        let images = &t.pods[0].images;
        assert_eq!(images.get("a"), Some(&ContainerImage::Built("busybox".into())));
        assert_eq!(images.get("b"), Some(&ContainerImage::Path(dir.path().join("./app.tar"))));
        assert_eq!(images.get("c"), None);
        assert!(t.pods[0].spec.containers.iter().all(|c| c.image.is_none()), "the digest is up's to fill in");
    }

    #[test]
    fn an_unknown_name_a_missing_path_or_no_command_without_image_are_refused_where_they_are() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        let cases = [
            (
                "      - {name: a, image: alpine}\n",
                11,
                26,
                "pods[0].containers[0].image",
                "unknown image `alpine`: testbed builds busybox",
            ),
            (
                "      - {name: a, image: ./gone.tar}\n",
                11,
                26,
                "pods[0].containers[0].image",
                "no OCI image layout or oci-archive at",
            ),
            ("      - {name: a, image: empty}\n", 11, 26, "pods[0].containers[0].image", "unknown image `empty`"),
            (
                "      - {name: a, image: ./empty}\n",
                11,
                26,
                "pods[0].containers[0].image",
                "a directory without index.json",
            ),
            ("      - {name: a}\n", 11, 9, "pods[0].containers[0].command", ""),
        ];
        for (container, line, column, field, message) in cases {
            let pods = format!("  - name: web\n    node: node1\n    containers:\n{container}");
            match check_in(dir.path(), &pods) {
                Err(TopologyError::Invalid { line: l, column: c, field: f, message: m, .. }) => {
                    assert_eq!((l, c, f.as_str()), (line, column, field), "{container}: {m}");
                    assert!(m.contains(message), "{container}: {m}");
                }
                other => panic!("{container}: expected an error at {field}, got {other:?}"),
            }
        }
    }
}
