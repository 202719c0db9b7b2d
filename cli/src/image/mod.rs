//! Guest images: build from Debian packages, fetch by URL + sha256, content-addressed cache. (owner: image)
//!
//! `ensure` is what `up` calls; the `image` command exposes the same operations to people.
//!
//! Probe mode: a provider that wants to know whether an accelerator really runs guests boots a built image's
//! `kernel` + `initrd` with [`probe_cmdline`] and waits for [`PROBE_OK`] on the serial console; the initramfs
//! prints it as its first action and powers the VM off (QEMU exits). It needs no disk and no network.

pub mod build;
mod cache;
mod cpio;
pub mod deliverable;
mod fetch;
mod load;
pub mod oci;
pub mod seed;
pub mod vagrant_box;

#[cfg(test)]
mod boot_test;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::exit::{CliError, CliResult};
use crate::plan::ImageRef;
use crate::ui::Ui;

pub use build::BuildOptions;
pub use cache::{accel_cache_dir, cache_root};

/// The kernel argument that selects probe mode in the initramfs.
pub const PROBE_ARG: &str = "testbed.probe=1";
/// What the initramfs prints on ttyS0 in probe mode before powering off.
pub const PROBE_OK: &str = "TESTBED-PROBE-OK";
/// The serial-console line testbed's init prints once sshd listens; the provider waits for it before its first
/// SSH attempt (earlier attempts only meet QEMU's user-network SYN backoff).
pub const SSHD_STARTED: &str = "testbed-init: sshd started";

/// What the provider boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageArtifacts {
    /// Cache id, e.g. `debian-12-3f2a9c1b0d4e` or `url-<sha256 prefix>`.
    pub id: String,
    /// Immutable base qcow2; nodes get an overlay with this as backing file (`-F qcow2`).
    pub disk: PathBuf,
    /// Direct-boot kernel; None = a stock cloud image that boots from its disk through firmware.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// Kernel arguments for direct boot, e.g. "console=ttyS0 root=/dev/vda rw quiet".
    pub cmdline: String,
}

/// Kernel arguments that make a built image's initramfs print [`PROBE_OK`] and power off at once, given the
/// image's own command line.
pub fn probe_cmdline(image_cmdline: &str) -> String {
    format!("{image_cmdline} {PROBE_ARG}")
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("unknown image name {name:?}; known names: {}", known.join(", "))]
    UnknownName { name: String, known: Vec<String> },
    #[error("`{tool}` is not installed; install it with `apt-get install {package}`")]
    MissingTool { tool: String, package: String },
    #[error("building an image needs root (mmdebstrap root mode and mkfs.ext4 -d must keep file owners); run as root or use `image fetch`")]
    NeedsRoot,
    #[error("no bookworm `deb` entry in /etc/apt/sources.list or /etc/apt/sources.list.d/; pass --mirror URL or set TESTBED_DEBIAN_MIRROR")]
    NoAptSource,
    #[error("cannot find a cache directory: set TESTBED_CACHE_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    #[error("not enough disk space in {}: {detail} (nothing was left in the cache)", path.display())]
    DiskFull { path: PathBuf, detail: String },
    #[error("{what} failed ({status}):\n{output}")]
    CommandFailed { what: String, status: String, output: String },
    #[error("image recipe: {0}")]
    Recipe(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("bad manifest {}: {source}", path.display())]
    Manifest { path: PathBuf, source: serde_json::Error },
    #[error("invalid --sha256 {0:?}: expected 64 hex digits")]
    BadSha256(String),
    #[error("invalid image URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("download of {url} failed: {detail}")]
    Download { url: String, detail: String },
    #[error("checksum mismatch for {url}: expected sha256 {expected}, got {actual}; nothing was cached")]
    ChecksumMismatch { url: String, expected: String, actual: String },
    #[error("no cached image with id or name {0:?} (see `testbed image list`)")]
    NotCached(String),
    #[error("image {id} is in use by {user}; run `testbed down` for that lab first")]
    InUse { id: String, user: cache::ImageUser },
    #[error("seed disk: {0}")]
    Seed(String),
    #[error("{}: {what}", path.display())]
    OciImage { path: PathBuf, what: String },
    #[error("template {name}: {detail}")]
    Template { name: String, detail: String },
}

impl ImageError {
    pub fn io(context: String, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::StorageFull {
            return ImageError::DiskFull { path: PathBuf::from(&context), detail: source.to_string() };
        }
        ImageError::Io { context, source }
    }

    /// True when the user's input is at fault (exit 2) rather than the machine (exit 3).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ImageError::UnknownName { .. }
                | ImageError::BadSha256(_)
                | ImageError::BadUrl { .. }
                | ImageError::ChecksumMismatch { .. }
                | ImageError::NotCached(_)
                | ImageError::InUse { .. }
                | ImageError::OciImage { .. }
        )
    }
}

impl From<ImageError> for CliError {
    fn from(e: ImageError) -> Self {
        if e.is_bad_input() {
            CliError::bad_input(e)
        } else {
            CliError::infra(e)
        }
    }
}

/// Returns a bootable image for `r`: from the cache when present, else built (named) or downloaded and
/// verified (URL). Building takes about a minute and needs root; downloads resume after interruption.
pub async fn ensure(ui: &Ui, r: &ImageRef) -> Result<ImageArtifacts, ImageError> {
    match r {
        ImageRef::Named(name) => {
            let ui = ui.clone();
            let name = name.clone();
            let opts = BuildOptions {
                force: false,
                mirror: std::env::var("TESTBED_DEBIAN_MIRROR").ok().filter(|m| !m.is_empty()),
            };
            tokio::task::spawn_blocking(move || build::build(&ui, &name, &opts))
                .await
                .map_err(|e| ImageError::Recipe(format!("image build task failed: {e}")))?
        }
        ImageRef::Url { url, sha256 } => fetch::fetch(ui, url, sha256).await,
    }
}

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build a guest image from Debian packages with mmdebstrap (needs root; about a minute).
    Build {
        /// Image name; known: debian-12.
        #[arg(long, default_value = build::DEBIAN_12)]
        name: String,
        /// Rebuild even when the cache holds an image built from the same inputs.
        #[arg(long)]
        force: bool,
        /// Debian mirror URL (default: the bookworm entries of this host's apt sources).
        #[arg(long, env = "TESTBED_DEBIAN_MIRROR")]
        mirror: Option<String>,
    },
    /// Download a disk image, verify its sha256 and cache it (qcow2; other formats are converted).
    Fetch {
        url: String,
        /// Expected sha256 of the downloaded file (64 hex digits).
        #[arg(long)]
        sha256: String,
    },
    /// Package a built image as a vagrant-libvirt box (`vagrant box add --name testbed/ID FILE`); builds the
    /// image first when the cache has none.
    Box {
        /// Image name; known: debian-12.
        #[arg(long, default_value = build::DEBIAN_12)]
        name: String,
        /// Directory for the .box file (default: `boxes/` beside the image cache).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write one node's seed disk (hostname, underlay NICs, host key, authorized keys) for a VM that Vagrant
    /// makes from the box; the top-level Vagrantfile calls this.
    Seed {
        /// Topology file.
        topology: PathBuf,
        /// Node name in the topology.
        #[arg(long)]
        node: String,
        /// File of OpenSSH public keys the guest's root accepts.
        #[arg(long)]
        authorized_keys: PathBuf,
        /// The seed disk to write (raw vfat).
        #[arg(long)]
        out: PathBuf,
    },
    /// List cached images.
    List,
    /// Remove cached images by id or name (a name removes every image of that name).
    Rm { id_or_name: String },
    /// Put a container image on a running lab's nodes (as `kind load`): a name testbed builds or an OCI
    /// image layout or oci-archive; pods then name it (`image: busybox`, `imagePullPolicy: Never`).
    Load(load::LoadArgs),
    /// Container images (OCI) built from Debian packages: `oci build busybox|debian-tools`, `oci list`.
    Oci {
        #[command(subcommand)]
        command: OciCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum OciCommand {
    /// Build a container image from Debian packages, no registry: `busybox` (apt-get download + dpkg-deb,
    /// seconds) or `debian-tools` (mmdebstrap, about a minute).
    Build {
        /// Image name; known: busybox, debian-tools.
        name: String,
        /// Rebuild even when the cache holds one built from the same recipe.
        #[arg(long)]
        force: bool,
    },
    /// List the cached container images (layout directory, oci-archive and manifest digest of each).
    List,
}

#[derive(Serialize)]
struct ListedImage<'a> {
    name: &'a str,
    source: &'a cache::Source,
    created_unix: u64,
    size_bytes: u64,
    #[serde(flatten)]
    artifacts: ImageArtifacts,
}

pub async fn cmd_image(ui: &Ui, args: ImageArgs) -> CliResult {
    match args.command {
        ImageCommand::Build { name, force, mirror } => {
            let opts = BuildOptions { force, mirror: mirror.filter(|m| !m.is_empty()) };
            let ui2 = ui.clone();
            let artifacts = tokio::task::spawn_blocking(move || build::build(&ui2, &name, &opts))
                .await
                .map_err(CliError::infra)??;
            print_artifacts(ui, &artifacts)
        }
        ImageCommand::Fetch { url, sha256 } => {
            let artifacts = fetch::fetch(ui, &url, &sha256).await?;
            print_artifacts(ui, &artifacts)
        }
        ImageCommand::Box { name, out: out_dir } => {
            let artifacts = ensure(ui, &ImageRef::Named(name.clone())).await?;
            let out_dir = match out_dir {
                Some(dir) => dir,
                None => vagrant_box::boxes_dir()?,
            };
            let made = tokio::task::spawn_blocking(move || {
                vagrant_box::write_box(&artifacts, &name, &out_dir, Path::new(vagrant_box::BOOT_FILES_ROOT))
            })
            .await
            .map_err(CliError::infra)??;
            if ui.is_json() {
                out(&serde_json::to_string_pretty(&made).map_err(CliError::infra)?);
            } else {
                out(&format!(
                    "box {} (kernel {}, initrd {})\nadd it with: vagrant box add --force --name {} {}",
                    made.file.display(),
                    made.kernel.display(),
                    made.initrd.display(),
                    made.name,
                    made.file.display()
                ));
            }
            Ok(())
        }
        ImageCommand::Seed { topology, node, authorized_keys, out: seed_file } => {
            let plan = crate::plan::load(&topology).map_err(CliError::bad_input)?;
            let Some(node_plan) = plan.nodes.iter().find(|n| n.name == node) else {
                return Err(CliError::bad_input(anyhow::anyhow!("{}: no node {node:?}", topology.display())));
            };
            let keys = std::fs::read_to_string(&authorized_keys)
                .map_err(|e| CliError::bad_input(anyhow::anyhow!("{}: {e}", authorized_keys.display())))?;
            vagrant_box::write_node_seed(node_plan, &keys, &seed_file)?;
            Ok(())
        }
        ImageCommand::List => {
            let root = cache::cache_root()?;
            let entries = cache::list(&root)?;
            if ui.is_json() {
                let listed: Vec<ListedImage<'_>> = entries
                    .iter()
                    .map(|e| ListedImage {
                        name: &e.manifest.name,
                        source: &e.manifest.source,
                        created_unix: e.manifest.created_unix,
                        size_bytes: e.manifest.size_bytes,
                        artifacts: e.manifest.artifacts(&e.dir),
                    })
                    .collect();
                out(&serde_json::to_string_pretty(&listed).map_err(CliError::infra)?);
            } else if entries.is_empty() {
                ui.info(format!("no cached images in {}", root.display()));
            } else {
                let mut table = format!("{:<28} {:<24} {:>9}  SOURCE", "ID", "NAME", "SIZE");
                for e in &entries {
                    let source = match &e.manifest.source {
                        cache::Source::Built { kernel_release, .. } => format!("built (kernel {kernel_release})"),
                        cache::Source::Url { url, .. } => url.clone(),
                    };
                    table.push_str(&format!(
                        "\n{:<28} {:<24} {:>6} MB  {source}",
                        e.manifest.id,
                        e.manifest.name,
                        e.manifest.size_bytes >> 20
                    ));
                }
                out(&table);
            }
            Ok(())
        }
        ImageCommand::Oci { command } => cmd_oci(ui, command).await,
        ImageCommand::Load(args) => load::cmd_load(ui, args).await,
        ImageCommand::Rm { id_or_name } => {
            let root = cache::cache_root()?;
            let doomed: Vec<cache::Entry> = cache::list(&root)?
                .into_iter()
                .filter(|e| e.manifest.id == id_or_name || e.manifest.name == id_or_name)
                .collect();
            if doomed.is_empty() {
                return Err(ImageError::NotCached(id_or_name).into());
            }
            // A running VM reads its base through the overlay's backing file; removing it under the VM would
            // break the node on its next read of an unwritten block.
            for e in &doomed {
                if let Some(user) = cache::user_of(&e.dir) {
                    return Err(ImageError::InUse { id: e.manifest.id.clone(), user }.into());
                }
            }
            let mut removed = Vec::new();
            for e in doomed {
                std::fs::remove_dir_all(&e.dir)
                    .map_err(|err| CliError::infra(ImageError::io(format!("remove {}", e.dir.display()), err)))?;
                ui.info(format!("removed {} ({})", e.manifest.id, e.dir.display()));
                removed.push(e.manifest.id);
            }
            if ui.is_json() {
                out(&serde_json::json!({ "removed": removed }).to_string());
            }
            Ok(())
        }
    }
}

async fn cmd_oci(ui: &Ui, command: OciCommand) -> CliResult {
    let images = match command {
        OciCommand::Build { name, force } => {
            let task = ui.task(&format!("container image {name}"));
            let started = std::time::Instant::now();
            let built = tokio::task::spawn_blocking(move || oci::build(&name, force)).await.map_err(CliError::infra)?;
            match &built {
                Ok(image) => task.finish(format!("{} in {:.0} s", image.id, started.elapsed().as_secs_f64())),
                Err(e) => task.fail(e.to_string()),
            }
            vec![built?]
        }
        OciCommand::List => oci::list()?,
    };
    if ui.is_json() {
        out(&serde_json::to_string_pretty(&images).map_err(CliError::infra)?);
    } else if images.is_empty() {
        ui.info("no cached container images (build one with `testbed image oci build busybox`)");
    } else {
        let mut table = format!("{:<25} {:<12} {:<73} LAYOUT", "ID", "NAME", "DIGEST");
        for i in &images {
            table.push_str(&format!("\n{:<25} {:<12} {:<73} {}", i.id, i.name, i.digest, i.layout.display()));
        }
        out(&table);
    }
    Ok(())
}

fn print_artifacts(ui: &Ui, a: &ImageArtifacts) -> CliResult {
    if ui.is_json() {
        out(&serde_json::to_string_pretty(a).map_err(CliError::infra)?);
    } else {
        let mut text = format!("id:      {}\ndisk:    {}", a.id, a.disk.display());
        if let (Some(k), Some(i)) = (&a.kernel, &a.initrd) {
            text.push_str(&format!("\nkernel:  {}\ninitrd:  {}\ncmdline: {}", k.display(), i.display(), a.cmdline));
        }
        out(&text);
    }
    Ok(())
}

/// Data on stdout. A closed pipe (`| head`) is the reader's choice, not an error worth a panic.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
}
