//! The topology's container images onto its nodes, without a registry: built or read on the host once per
//! `up` (`crate::image::deliverable`), copied to each node that runs a container of them over the node's SSH
//! session, and imported there by `testbed-agent import-image`, which checks every blob against its digest.
//! An image whose manifest is already in the node's store is not copied again. The pods then name it by
//! digest.
//!
//! SSH rather than a read-only disk as for the agent: a disk is attached when the VM starts, so a running
//! node (`up FILE` on a running lab) could not get a new image without a restart, and the busybox archive is
//! 2 MB, a quarter of the agent, copied once per node and image.

use std::collections::BTreeMap;

use testbed_api::PodSpec;

use crate::guest::agent_deploy::AGENT_GUEST_PATH;
use crate::guest::{shell_quote, Session, SshError};
use crate::image::deliverable::{deliverable, DeliverableImage};
use crate::image::ImageError;
use crate::plan::{ContainerImage, Plan, PodPlan};

/// Where an image is on the node and how it is imported there; tests point it at a scratch directory.
#[derive(Debug, Clone, Copy)]
pub struct NodeStore<'a> {
    pub agent: &'a str,
    pub store: &'a str,
}

impl NodeStore<'static> {
    pub const GUEST: NodeStore<'static> = NodeStore { agent: AGENT_GUEST_PATH, store: testbed_api::AGENT_IMAGE_STORE };
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("image {image} ({digest}): {error}")]
    Ssh { image: ContainerImage, digest: String, error: SshError },
    #[error(
        "image {image} ({digest}): the node's import refused it (exit {exit_code}): {stderr}; nothing of it \
         was stored"
    )]
    Refused { image: ContainerImage, digest: String, exit_code: i32, stderr: String },
    #[error("image {image}: the node imported manifest {actual}, not {digest}")]
    WrongDigest { image: ContainerImage, digest: String, actual: String },
}

/// The lab's images, each once, by what the topology names.
#[derive(Debug, Clone, Default)]
pub struct LabImages {
    images: BTreeMap<ContainerImage, DeliverableImage>,
}

impl LabImages {
    /// Builds or reads every image `plan`'s pods name (blocking: a first build fetches a .deb).
    pub fn resolve(plan: &Plan) -> Result<LabImages, (ContainerImage, ImageError)> {
        let mut images = BTreeMap::new();
        for source in plan.pods.iter().flat_map(|p| p.images.values()) {
            if !images.contains_key(source) {
                let image = deliverable(source).map_err(|e| (source.clone(), e))?;
                images.insert(source.clone(), image);
            }
        }
        Ok(LabImages { images })
    }

    /// The images the pods of `node` need, each once.
    pub fn for_node<'a>(&'a self, plan: &'a Plan, node: &str) -> Vec<&'a DeliverableImage> {
        let mut needed: Vec<&DeliverableImage> = plan
            .pods
            .iter()
            .filter(|p| p.node == node)
            .flat_map(|p| p.images.values())
            .filter_map(|s| self.images.get(s))
            .collect();
        needed.sort_by(|a, b| a.digest.cmp(&b.digest));
        needed.dedup_by(|a, b| a.digest == b.digest);
        needed
    }

    /// `pod`'s spec for its agent: every container with an image names it by the digest delivered.
    pub fn agent_spec(&self, pod: &PodPlan) -> PodSpec {
        let mut spec = pod.spec.clone();
        for c in &mut spec.containers {
            if let Some(image) = pod.images.get(&c.name).and_then(|s| self.images.get(s)) {
                c.image = Some(image.digest.clone());
            }
        }
        spec
    }
}

/// Gets `images` into the store of the node behind `session`; returns how many were copied (the others were
/// there already).
pub async fn deliver(
    session: &Session,
    store: NodeStore<'_>,
    images: &[&DeliverableImage],
) -> Result<usize, DeliveryError> {
    let Some(first) = images.first() else { return Ok(0) };
    // One command for all: under TCG every command the guest's shell starts costs a noticeable fraction of
    // a second.
    let hexes: Vec<&str> = images.iter().map(|i| i.hex()).collect();
    let present = format!(
        "for h in {}; do [ -f {}/images/$h.json ] && echo $h; done; exit 0",
        hexes.join(" "),
        shell_quote(store.store)
    );
    let out = session.exec(&present, None).await.map_err(|error| DeliveryError::Ssh {
        image: first.source.clone(),
        digest: first.digest.clone(),
        error,
    })?;
    let present = out.stdout_lossy();
    let mut copied = 0;
    for image in images.iter().filter(|i| !present.lines().any(|l| l.trim() == i.hex())) {
        import(session, store, image).await?;
        copied += 1;
    }
    Ok(copied)
}

/// Copies `image` to the node behind `session` and imports it whether or not the store has it, indexed
/// under `names` too (`testbed image load`, as `kind load` puts an image on nodes); returns every name the
/// node's store gives it.
pub async fn load(
    session: &Session,
    store: NodeStore<'_>,
    image: &DeliverableImage,
    names: &[String],
) -> Result<Vec<String>, DeliveryError> {
    let printed = import_named(session, store, image, names).await?;
    let names = printed["names"].as_array().map(Vec::as_slice).unwrap_or_default();
    Ok(names.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
}

/// Copies `image` to the node and imports it there (the upload is removed whatever the import says).
async fn import(session: &Session, store: NodeStore<'_>, image: &DeliverableImage) -> Result<(), DeliveryError> {
    import_named(session, store, image, &[]).await.map(drop)
}

/// `import` with more names for the index; what the node's import printed.
async fn import_named(
    session: &Session,
    store: NodeStore<'_>,
    image: &DeliverableImage,
    names: &[String],
) -> Result<serde_json::Value, DeliveryError> {
    let store_dir = shell_quote(store.store);
    let upload = format!("{}/incoming-{}.tar", store.store, image.hex());
    // A built image is indexed under its name (`busybox`), so that pods may name it so; an archive's own
    // names come from its index.
    let built = match &image.source {
        ContainerImage::Built(name) => Some(name),
        ContainerImage::Path(_) => None,
    };
    let name: String = built.into_iter().chain(names).map(|n| format!(" --name {}", shell_quote(n))).collect();
    let command = format!(
        "mkdir -p {store_dir} && cat > {up} && {agent} import-image --store {store_dir} --ref {digest}{name} {up}; \
         rc=$?; rm -f {up}; exit $rc",
        up = shell_quote(&upload),
        agent = shell_quote(store.agent),
        digest = image.digest,
    );
    let out = session.exec(&command, Some(&image.archive)).await.map_err(|error| DeliveryError::Ssh {
        image: image.source.clone(),
        digest: image.digest.clone(),
        error,
    })?;
    if out.exit_code != 0 {
        return Err(DeliveryError::Refused {
            image: image.source.clone(),
            digest: image.digest.clone(),
            exit_code: out.exit_code,
            stderr: out.stderr_lossy().trim().to_string(),
        });
    }
    let printed: serde_json::Value = serde_json::from_str(out.stdout_lossy().trim()).unwrap_or_default();
    let actual = printed["image"]["digest"].as_str().unwrap_or("(none printed)");
    if actual != image.digest {
        return Err(DeliveryError::WrongDigest {
            image: image.source.clone(),
            digest: image.digest.clone(),
            actual: actual.to_string(),
        });
    }
    Ok(printed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_gets_the_images_of_its_pods_once_and_its_pods_name_them_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lab.yaml");
        let layout = dir.path().join("app");
        let layer = crate::image::oci::busybox_layer(b"\x7fELF fake", &["sh".to_string()]).unwrap();
        let layer = crate::image::oci::Layer::tar(layer);
        crate::image::oci::write_layout(&layout, "app", &layer, &crate::image::oci::BUSYBOX_DEFAULTS).unwrap();
        let src = format!(
            "{}pods:\n  - name: a\n    node: node1\n    containers:\n      - {{name: x, image: ./app}}\n      \
             - {{name: y, image: ./app}}\n      - {{name: z, command: [sh]}}\n  - {{name: b, node: node2, \
             containers: [{{name: z, command: [sh]}}]}}\n",
            crate::topology::tests::BASE
        );
        std::fs::write(&file, &src).unwrap();
        let checked = crate::topology::check_source(&file, src.as_bytes()).unwrap();
        let plan = crate::plan::build(&checked);
        let images = LabImages::resolve(&plan).unwrap();
        let node1 = images.for_node(&plan, "node1");
        assert_eq!(node1.len(), 1, "two containers of one image: one copy");
        assert!(images.for_node(&plan, "node2").is_empty());
        let spec = images.agent_spec(&plan.pods[0]);
        let named: Vec<Option<&str>> = spec.containers.iter().map(|c| c.image.as_deref()).collect();
        assert_eq!(named, [Some(node1[0].digest.as_str()), Some(node1[0].digest.as_str()), None]);
        testbed_api::validate::validate_pod(&spec).expect("the agent accepts it");
    }

    /// An agent binary of this workspace (any build: `import-image` runs on the host here).
    fn agent_binary() -> std::path::PathBuf {
        let debug = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/testbed-agent");
        crate::guest::agent_deploy::locate_agent_binary().ok().filter(|p| p.is_file()).unwrap_or(debug)
    }

    /// Through a real sshd on loopback and the real `testbed-agent import-image` into a scratch store (as
    /// root: the layer's files keep their owners).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_image_is_copied_once_and_a_corrupt_layer_is_refused_naming_its_digest() {
        let agent = agent_binary();
        assert!(
            agent.is_file(),
            "no testbed-agent at {}: build it with `cargo build -p testbed-agent`",
            agent.display()
        );
        let sshd = crate::guest::test_sshd::Sshd::start().expect("sshd (apt-get install openssh-server)");
        let session = sshd.connect().await;
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("app");
        let layer = crate::image::oci::busybox_layer(b"\x7fELF fake", &["sh".to_string()]).unwrap();
        let layer = crate::image::oci::Layer::tar(layer);
        crate::image::oci::write_layout(&layout, "app", &layer, &crate::image::oci::BUSYBOX_DEFAULTS).unwrap();
        let image = deliverable(&ContainerImage::Path(layout.clone())).unwrap();
        let store_dir = dir.path().join("store");
        let (agent, store_path) = (agent.display().to_string(), store_dir.display().to_string());
        let store = NodeStore { agent: &agent, store: &store_path };

        assert_eq!(deliver(&session, store, &[&image]).await.unwrap(), 1);
        assert!(store_dir.join("images").join(format!("{}.json", image.hex())).is_file());
        assert_eq!(deliver(&session, store, &[&image]).await.unwrap(), 0, "already in the store");
        let leftovers: Vec<_> = std::fs::read_dir(&store_dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("incoming-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // One byte of the layer changed: the manifest still names the layer's true digest.
        let layer_hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&layer.blob));
        let layer_path = layout.join("blobs/sha256").join(&layer_hex);
        let mut bytes = std::fs::read(&layer_path).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&layer_path, bytes).unwrap();
        let corrupt = deliverable(&ContainerImage::Path(layout.clone())).unwrap();
        let fresh = dir.path().join("fresh");
        let fresh_path = fresh.display().to_string();
        let store = NodeStore { agent: &agent, store: &fresh_path };
        let err = deliver(&session, store, &[&corrupt]).await.unwrap_err().to_string();
        for part in [layout.display().to_string(), corrupt.digest.clone(), format!("sha256:{layer_hex}")] {
            assert!(err.contains(&part), "`{part}` missing: {err}");
        }
        assert!(!fresh.join("images").join(format!("{}.json", corrupt.hex())).exists(), "{err}");
        assert!(!fresh.join("layers").join(&layer_hex).exists(), "{err}");
    }
}
