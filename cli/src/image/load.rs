//! `testbed image load`: a container image onto a running lab's nodes without a registry, as `kind load`
//! puts one on kind's nodes. The image is built (a name testbed builds) or read (an OCI image layout or
//! `oci-archive` on the host), copied to each node over SSH and imported there, every digest checked, and
//! indexed under its names: the layout's own, the built image's name, and every `--name`. A pod then names
//! it so (`image: busybox`, `imagePullPolicy: Never`).

use std::time::Duration;

use anyhow::anyhow;
use serde::Serialize;

use super::deliverable::deliverable;
use crate::exit::{CliError, CliResult};
use crate::lab::container_images::{load, NodeStore};
use crate::lab::{Lab, LabSelector};
use crate::plan::ContainerImage;
use crate::ui::Ui;

/// The arguments of `testbed image load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// A name testbed builds (`busybox`, `debian-tools`) or the path of an OCI image layout directory or `oci-archive`.
    pub image: String,
    #[command(flatten)]
    pub lab: LabSelector,
    /// Only this node (repeatable; default: every node of the lab).
    #[arg(long = "node", value_name = "NODE")]
    pub nodes: Vec<String>,
    /// Also index the image under this name (`registry.local/app:v1`; repeatable).
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Serialize)]
struct Loaded {
    node: String,
    digest: String,
    names: Vec<String>,
}

/// What `image` names (`ContainerImage::from_reference`, relative paths from the working directory).
fn source_of(image: &str) -> Result<ContainerImage, CliError> {
    ContainerImage::from_reference(image, None).map_err(|message| CliError::bad_input(anyhow!(message)))
}

pub async fn cmd_load(ui: &Ui, args: LoadArgs) -> CliResult {
    let source = source_of(&args.image)?;
    for (i, name) in args.names.iter().enumerate() {
        testbed_api::image_ref::normalize(name).map_err(|e| CliError::bad_input(anyhow!("--name #{}: {e}", i + 1)))?;
    }
    let lab = Lab::open(&args.lab)?;
    let nodes: Vec<String> =
        if args.nodes.is_empty() { lab.state.nodes.keys().cloned().collect() } else { args.nodes.clone() };
    for node in &nodes {
        lab.node_endpoint(node)?;
    }
    let built = {
        let source = source.clone();
        // A first build fetches a .deb and writes the cache: blocking work.
        tokio::task::spawn_blocking(move || deliverable(&source)).await.map_err(CliError::infra)??
    };
    let mut loaded = Vec::new();
    for node in nodes {
        let session = lab.session(&node, Duration::from_secs(30)).await?;
        let names = load(&session, NodeStore::GUEST, &built, &args.names)
            .await
            .map_err(|e| CliError::infra(anyhow!("node {node}: {e}")))?;
        ui.info(format!("{node}: {source} ({}) as {}", built.digest, names.join(", ")));
        loaded.push(Loaded { node, digest: built.digest.clone(), names });
    }
    if ui.is_json() {
        println!("{}", serde_json::to_string_pretty(&loaded).map_err(CliError::infra)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_name_or_an_existing_layout_or_archive_and_nothing_else() {
        assert_eq!(source_of("busybox").unwrap(), ContainerImage::Built("busybox".into()));
        let unknown = source_of("nginx").unwrap_err();
        assert_eq!(unknown.exit_code(), 2, "{unknown}");
        assert!(unknown.to_string().contains("testbed builds busybox"), "{unknown}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.json"), "{}").unwrap();
        let layout = dir.path().display().to_string();
        assert_eq!(source_of(&layout).unwrap(), ContainerImage::Path(dir.path().to_path_buf()));
        let missing = dir.path().join("none.tar").display().to_string();
        assert_eq!(source_of(&missing).unwrap_err().exit_code(), 2);
    }
}
