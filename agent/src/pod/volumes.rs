//! A pod's volumes on the node: `emptyDir` is `<pod dir>/volumes/<name>` (a tmpfs mounted there with
//! `medium: Memory`), shared by the containers that mount it and removed with the pod directory; `hostPath`
//! is the node's path itself. The bundle binds them into the containers (`bundle::VolumeBind`).

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use testbed_api::{ContainerSpec, PodSecurityContext, PodSpec, Volume};

use super::bundle::VolumeBind;

/// Why a volume could not be made or mounted; names the pod, container or path involved.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("pod {pod} container {container}: hostPath volume `{volume}`: {path} does not exist on the node")]
    MissingHostPath { pod: String, container: String, volume: String, path: String },
    /// The kubelet's words: `hostPath type check failed: PATH is not a directory`.
    #[error("pod {pod}: hostPath volume `{volume}`: hostPath type check failed: {path} is not a {kind}")]
    HostPathType { pod: String, volume: String, path: String, kind: &'static str },
    #[error("pod {pod}: hostPath volume `{volume}`: create {path}: {source}")]
    HostPathCreate { pod: String, volume: String, path: String, source: std::io::Error },
    #[error("pod {pod}: emptyDir volume `{volume}`: {what} {path}: {source}")]
    EmptyDir { pod: String, volume: String, what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("pod {pod} container {container}: subPath {path}: {source}")]
    SubPath { pod: String, container: String, path: PathBuf, source: std::io::Error },
}

fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(name)
}

fn is_memory(v: &Volume) -> bool {
    v.empty_dir.as_ref().is_some_and(|e| e.medium == "Memory")
}

/// The hostPath volumes as their `type` says, before anything of the pod is made, so a pod that fails here
/// leaves nothing behind (no cgroup, no mount, no directory): a `DirectoryOrCreate` / `FileOrCreate` path is
/// made when nothing is there (as the kubelet makes it, 0755 / 0644, owned by root, not its parent); any
/// other type must already be that kind of file. Then the first hostPath a container mounts that is missing.
pub fn check_host_paths(spec: &PodSpec) -> Result<(), VolumeError> {
    for v in &spec.volumes {
        let Some(host) = &v.host_path else { continue };
        prepare_host_path(&host.path, &host.type_).map_err(|failure| match failure {
            HostPathFailure::NotA(kind) => VolumeError::HostPathType {
                pod: spec.name.clone(),
                volume: v.name.clone(),
                path: host.path.clone(),
                kind,
            },
            HostPathFailure::Create(source) => VolumeError::HostPathCreate {
                pod: spec.name.clone(),
                volume: v.name.clone(),
                path: host.path.clone(),
                source,
            },
        })?;
    }
    for c in &spec.containers {
        for m in &c.volume_mounts {
            let Some(host) = spec.volumes.iter().find(|v| v.name == m.name).and_then(|v| v.host_path.as_ref()) else {
                continue;
            };
            if std::fs::symlink_metadata(&host.path).is_err() {
                return Err(VolumeError::MissingHostPath {
                    pod: spec.name.clone(),
                    container: c.name.clone(),
                    volume: m.name.clone(),
                    path: host.path.clone(),
                });
            }
        }
    }
    Ok(())
}

enum HostPathFailure {
    /// What the path should have been (the kubelet's wording).
    NotA(&'static str),
    Create(std::io::Error),
}

/// The kubelet's `checkType` for one hostPath (`pkg/volume/hostpath`): the kind a type requires, made first
/// for the `*OrCreate` types when nothing is at `path`.
fn prepare_host_path(path: &str, type_: &str) -> Result<(), HostPathFailure> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
    let existing = std::fs::metadata(path).ok();
    let (kind, is_it): (&'static str, fn(&std::fs::FileType) -> bool) = match type_ {
        "DirectoryOrCreate" | "Directory" => ("directory", std::fs::FileType::is_dir),
        "FileOrCreate" | "File" => ("file", std::fs::FileType::is_file),
        "Socket" => ("socket file", std::fs::FileType::is_socket),
        "CharDevice" => ("character device", std::fs::FileType::is_char_device),
        "BlockDevice" => ("block device", std::fs::FileType::is_block_device),
        // "": nothing is checked (validation refused anything else).
        _ => return Ok(()),
    };
    match (existing, type_) {
        (Some(m), _) if is_it(&m.file_type()) => Ok(()),
        (Some(_), _) => Err(HostPathFailure::NotA(kind)),
        (None, "DirectoryOrCreate") => {
            std::fs::DirBuilder::new().mode(0o755).create(path).map_err(HostPathFailure::Create)
        }
        (None, "FileOrCreate") => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
            .map(drop)
            .map_err(HostPathFailure::Create),
        (None, _) => Err(HostPathFailure::NotA(kind)),
    }
}

/// Makes every emptyDir of the pod (once per pod: a restarted container finds its volume as it left it).
pub fn create_empty_dirs(pod_dir: &Path, spec: &PodSpec) -> Result<(), VolumeError> {
    for v in spec.volumes.iter().filter(|v| v.empty_dir.is_some()) {
        let dir = volume_dir(pod_dir, &v.name);
        let failed = |what, source| VolumeError::EmptyDir {
            pod: spec.name.clone(),
            volume: v.name.clone(),
            what,
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| failed("create", e))?;
        if is_memory(v) {
            // The kubelet's tmpfs: sized by sizeLimit, else the kernel's default (half the node's memory).
            let size = v.empty_dir.as_ref().and_then(|e| e.size_limit.as_deref());
            let bytes = size.and_then(|q| testbed_api::quantity::memory_bytes(q).ok());
            let options = bytes.map(|b| format!("size={b}"));
            mount(Some("tmpfs"), &dir, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, options.as_deref())
                .map_err(|e| failed("mount a tmpfs on", e.into()))?;
        }
        // World-writable as the kubelet makes it: containers of any uid share it. With an fsGroup the group
        // owns it and set-group-ID passes the group on to what is written there (the kubelet's
        // SetVolumeOwnership on an empty volume).
        let mode = match PodSecurityContext::volume_group(spec.security_context.as_ref()) {
            Some(gid) => {
                std::os::unix::fs::chown(&dir, None, Some(gid)).map_err(|e| failed("chown to the fsGroup", e))?;
                0o2777
            }
            None => 0o777,
        };
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| failed("chmod", e))?;
    }
    Ok(())
}

/// Unmounts the pod's memory emptyDirs (before its directory is removed). Lazily: a container still being
/// killed may hold one open; the tmpfs goes with its last user.
pub fn unmount_memory(pod_dir: &Path, spec: &PodSpec) {
    for v in spec.volumes.iter().filter(|v| is_memory(v)) {
        let _ = umount2(&volume_dir(pod_dir, &v.name), MntFlags::MNT_DETACH);
    }
}

/// Container `c`'s `volumeMounts` as binds from node paths (a subPath is created in its volume when missing,
/// as the kubelet does).
pub fn binds(pod_dir: &Path, spec: &PodSpec, c: &ContainerSpec) -> Result<Vec<VolumeBind>, VolumeError> {
    let mut out = Vec::new();
    for m in &c.volume_mounts {
        // validate_pod made sure the volume exists.
        let Some(v) = spec.volumes.iter().find(|v| v.name == m.name) else { continue };
        let root = match &v.host_path {
            Some(host) => PathBuf::from(&host.path),
            None => volume_dir(pod_dir, &v.name),
        };
        if v.host_path.is_some() && std::fs::symlink_metadata(&root).is_err() {
            return Err(VolumeError::MissingHostPath {
                pod: spec.name.clone(),
                container: c.name.clone(),
                volume: v.name.clone(),
                path: root.display().to_string(),
            });
        }
        let source = if m.sub_path.is_empty() { root } else { root.join(&m.sub_path) };
        if !m.sub_path.is_empty() && !source.exists() {
            std::fs::create_dir_all(&source).map_err(|e| VolumeError::SubPath {
                pod: spec.name.clone(),
                container: c.name.clone(),
                path: source.clone(),
                source: e,
            })?;
        }
        out.push(VolumeBind { source, destination: m.mount_path.clone(), read_only: m.read_only });
    }
    Ok(out)
}
