//! Pod volumes, containers' volume mounts and security contexts, in Kubernetes' shape and JSON names (the
//! agent's specs and the API objects share these types, so `validate_pod` names one field path for both).

use serde::{Deserialize, Serialize};

/// One entry of a pod's `volumes`: exactly one source is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// DNS label, unique in the pod; what `volumeMounts[].name` refers to.
    pub name: String,
    /// A directory that lives as long as the pod, shared by its containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
    /// A file or directory of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathVolumeSource>,
}

/// `emptyDir`: on disk under the pod's directory, or a tmpfs with `medium: Memory`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirVolumeSource {
    /// `""` (the node's disk) or `Memory` (a tmpfs).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub medium: String,
    /// A memory quantity (`64Mi`): the tmpfs's size with `medium: Memory`; on disk it is not enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<String>,
}

/// `hostPath`: a path of the node. With Kubernetes' default `type: ""` nothing is checked before the
/// runtime, whose bind mount of a missing path fails; the other types are checked (and the `*OrCreate` ones
/// made) by the agent before anything of the pod is, as the kubelet does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPathVolumeSource {
    /// Absolute path on the node.
    pub path: String,
    /// One of [`HOST_PATH_TYPES`]: what must be at `path`.
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
}

/// Kubernetes' `hostPath.type` values: `""` checks nothing; `DirectoryOrCreate` and `FileOrCreate` make an
/// empty directory (0755) or file (0644) when nothing is there (not its parent); the others require the path
/// to exist as that kind of file.
pub const HOST_PATH_TYPES: [&str; 8] =
    ["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"];

/// One entry of a container's `volumeMounts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// A volume of the pod.
    pub name: String,
    /// Absolute path in the container, without `:`.
    pub mount_path: String,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// A relative path inside the volume to mount instead of its root (created when missing, as the kubelet
    /// does).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_path: String,
}

/// A container's `securityContext`; what is left out keeps the runtime's default (containerd's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    /// uid of the process (over the pod's and the image's `User`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    /// gid of the process (over the pod's and the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    /// The root filesystem is mounted read-only (volumes keep their own mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
    /// Every capability, no masked /proc paths, /sys writable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    /// `false` sets no_new_privs (the kubelet sets it only when this is explicitly false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_privilege_escalation: Option<bool>,
    /// Added to and dropped from the default set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

/// Capability names without `CAP_` (`NET_RAW`), or `ALL`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Granted on top of the default set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    /// Taken away (after the adds: a drop wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
}

/// A pod's `securityContext`: the defaults of its containers' own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    /// uid of every container that sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    /// gid of every container that sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    /// Groups every container's process gets besides those of its user (Kubernetes' `Merge` policy: the
    /// image's /etc/group memberships stay).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supplemental_groups: Vec<i64>,
    /// A group every container's process gets, which also owns the pod's emptyDirs (set-group-ID, so what a
    /// container writes there is the group's), as the kubelet's volume ownership gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_group: Option<i64>,
}

impl PodSecurityContext {
    /// The groups the pod adds to every container's process: `supplementalGroups`, then `fsGroup` (the
    /// kubelet passes both to the runtime as supplemental groups).
    pub fn extra_groups(this: Option<&Self>) -> Vec<u32> {
        let Some(sc) = this else { return Vec::new() };
        sc.supplemental_groups.iter().chain(&sc.fs_group).filter_map(|g| u32::try_from(*g).ok()).collect()
    }

    /// The gid owning the pod's emptyDirs, when `fsGroup` is set.
    pub fn volume_group(this: Option<&Self>) -> Option<u32> {
        this.and_then(|sc| sc.fs_group).and_then(|g| u32::try_from(g).ok())
    }
}

/// Every capability Linux 6.1 (the guests' kernel) knows, as the runtime-spec names them; what `ALL` means.
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

impl SecurityContext {
    /// The uid and gid the spec sets: the container's own `runAsUser`/`runAsGroup`, else the pod's (None:
    /// the image decides).
    pub fn run_as(this: Option<&Self>, pod: Option<&PodSecurityContext>) -> (Option<u32>, Option<u32>) {
        let pick = |own: Option<i64>, of_pod: Option<i64>| own.or(of_pod).and_then(|id| u32::try_from(id).ok());
        (
            pick(this.and_then(|s| s.run_as_user), pod.and_then(|p| p.run_as_user)),
            pick(this.and_then(|s| s.run_as_group), pod.and_then(|p| p.run_as_group)),
        )
    }

    /// The capability set from `default` as containerd's CRI plugin derives it (`WithCapabilities`): add
    /// `ALL`, then drop `ALL`, then the named adds, then the named drops (a drop wins over an add).
    /// Privileged: every capability.
    pub fn capabilities(this: Option<&Self>, default: &[&str]) -> Vec<String> {
        let Some(sc) = this else { return default.iter().map(|c| c.to_string()).collect() };
        if sc.privileged == Some(true) {
            return ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        }
        let mut set: Vec<String> = default.iter().map(|c| c.to_string()).collect();
        let Some(caps) = &sc.capabilities else { return set };
        let full = |name: &String| format!("CAP_{}", name.to_ascii_uppercase());
        let is_all = |name: &String| name.eq_ignore_ascii_case("ALL");
        if caps.add.iter().any(is_all) {
            set = ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        }
        if caps.drop.iter().any(is_all) {
            set.clear();
        }
        for cap in caps.add.iter().filter(|c| !is_all(c)).map(full) {
            if !set.contains(&cap) {
                set.push(cap);
            }
        }
        let dropped: Vec<String> = caps.drop.iter().filter(|c| !is_all(c)).map(full).collect();
        set.retain(|c| !dropped.contains(c));
        set
    }
}
