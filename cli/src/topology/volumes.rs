//! A topology pod's `volumes` and `securityContext`, and its containers' `volumeMounts` and
//! `securityContext`: Kubernetes' names and shape, so a pod spec copied from a manifest reads the same here.
//! Checked by `testbed_api::validate::validate_pod` like every other pod field (the agent and the API server
//! run the same checks).

use schemars::JsonSchema;
use serde::Deserialize;
use testbed_api::{
    Capabilities, EmptyDirVolumeSource, HostPathVolumeSource, PodSecurityContext, SecurityContext, Volume, VolumeMount,
};

use super::model::Scalar;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeDef {
    /// DNS label, unique in the pod.
    pub name: String,
    /// A directory as long-lived as the pod, shared by its containers.
    pub empty_dir: Option<EmptyDirDef>,
    /// A file or directory of the node.
    pub host_path: Option<HostPathDef>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EmptyDirDef {
    /// `Memory` for a tmpfs; left out: the node's disk.
    pub medium: Option<String>,
    /// Memory quantity (`64Mi`): the tmpfs's size with `medium: Memory`.
    pub size_limit: Option<Scalar>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostPathDef {
    /// Absolute path on the node.
    pub path: String,
    /// What must be there (Kubernetes' values): left out or `""` checks nothing (a missing path fails the
    /// container's start); `DirectoryOrCreate` / `FileOrCreate` make an empty directory or file when nothing is
    /// there; `Directory`, `File`, `Socket`, `CharDevice`, `BlockDevice` require one.
    #[serde(rename = "type")]
    pub type_: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMountDef {
    /// A volume of the pod.
    pub name: String,
    /// Absolute path in the container.
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
    /// Relative path inside the volume to mount instead of its root.
    pub sub_path: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecurityContextDef {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub read_only_root_filesystem: Option<bool>,
    pub privileged: Option<bool>,
    /// `false` sets no_new_privs.
    pub allow_privilege_escalation: Option<bool>,
    pub capabilities: Option<CapabilitiesDef>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapabilitiesDef {
    /// Names without `CAP_` (`NET_ADMIN`), or `ALL`.
    #[serde(default)]
    pub add: Vec<String>,
    /// Names without `CAP_` (`NET_RAW`), or `ALL`.
    #[serde(default)]
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSecurityContextDef {
    /// uid of the containers that set none.
    pub run_as_user: Option<i64>,
    /// gid of the containers that set none.
    pub run_as_group: Option<i64>,
    /// Groups every container's process gets besides its user's own.
    #[serde(default)]
    pub supplemental_groups: Vec<i64>,
    /// A group every container's process gets, owning the pod's emptyDirs.
    pub fs_group: Option<i64>,
}

impl From<&VolumeDef> for Volume {
    fn from(v: &VolumeDef) -> Self {
        Volume {
            name: v.name.clone(),
            empty_dir: v.empty_dir.as_ref().map(|e| EmptyDirVolumeSource {
                medium: e.medium.clone().unwrap_or_default(),
                size_limit: e.size_limit.as_ref().map(|s| s.0.clone()),
            }),
            host_path: v
                .host_path
                .as_ref()
                .map(|h| HostPathVolumeSource { path: h.path.clone(), type_: h.type_.clone().unwrap_or_default() }),
        }
    }
}

impl From<&VolumeMountDef> for VolumeMount {
    fn from(m: &VolumeMountDef) -> Self {
        VolumeMount {
            name: m.name.clone(),
            mount_path: m.mount_path.clone(),
            read_only: m.read_only,
            sub_path: m.sub_path.clone().unwrap_or_default(),
        }
    }
}

impl From<&SecurityContextDef> for SecurityContext {
    fn from(s: &SecurityContextDef) -> Self {
        SecurityContext {
            run_as_user: s.run_as_user,
            run_as_group: s.run_as_group,
            read_only_root_filesystem: s.read_only_root_filesystem,
            privileged: s.privileged,
            allow_privilege_escalation: s.allow_privilege_escalation,
            capabilities: s.capabilities.as_ref().map(|c| Capabilities { add: c.add.clone(), drop: c.drop.clone() }),
        }
    }
}

impl From<&PodSecurityContextDef> for PodSecurityContext {
    fn from(s: &PodSecurityContextDef) -> Self {
        PodSecurityContext {
            run_as_user: s.run_as_user,
            run_as_group: s.run_as_group,
            supplemental_groups: s.supplemental_groups.clone(),
            fs_group: s.fs_group,
        }
    }
}
