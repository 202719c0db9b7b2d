//! Checks of a pod's `volumes`, its containers' `volumeMounts` and the security contexts, with Kubernetes'
//! rules (`ValidateVolumes`, `validateVolumeMounts`, `ValidateSecurityContext` of the API server).

use std::collections::BTreeSet;

use super::{err, is_dns_label};
use crate::{ApiError, ContainerSpec, PodSecurityContext, PodSpec, SecurityContext, ALL_CAPABILITIES};

/// Kubernetes' bound for `runAsUser` and `runAsGroup`.
const MAX_ID: i64 = 2_147_483_647;

/// The pod's volumes: DNS-label names, unique, exactly one source each, absolute host paths.
pub(super) fn volumes(pod: &PodSpec) -> Result<(), ApiError> {
    let mut seen = BTreeSet::new();
    for (i, v) in pod.volumes.iter().enumerate() {
        let at = |f: &str| format!("volumes[{i}].{f}");
        if !is_dns_label(&v.name, 63) {
            return Err(err(at("name"), format!("`{}` is not a DNS label", v.name)));
        }
        if !seen.insert(v.name.as_str()) {
            return Err(err(at("name"), format!("duplicate volume name `{}`", v.name)));
        }
        match (&v.empty_dir, &v.host_path) {
            (Some(empty), None) => {
                if !matches!(empty.medium.as_str(), "" | "Memory") {
                    let message = format!("`{}` is not a medium (\"\" or Memory)", empty.medium);
                    return Err(err(at("emptyDir.medium"), message));
                }
                if let Some(size) = &empty.size_limit {
                    crate::quantity::memory_bytes(size).map_err(|m| err(at("emptyDir.sizeLimit"), m))?;
                }
            }
            (None, Some(host)) => {
                if !host.path.starts_with('/') {
                    return Err(err(at("hostPath.path"), format!("`{}` is not an absolute path", host.path)));
                }
                if !crate::HOST_PATH_TYPES.contains(&host.type_.as_str()) {
                    let supported = crate::HOST_PATH_TYPES[1..].join(", ");
                    let message = format!("Unsupported value: \"{}\": supported values: \"\", {supported}", host.type_);
                    return Err(err(at("hostPath.type"), message));
                }
            }
            _ => return Err(err(format!("volumes[{i}]"), "must set exactly one of emptyDir and hostPath")),
        }
    }
    pod_security_context(pod)
}

/// The pod's securityContext: ids in range, and every container able to take it. It applies to every
/// container, and one without an image runs as the agent does (its ids would change the node's files), so
/// a pod that sets it with such a container is refused rather than run without it.
fn pod_security_context(pod: &PodSpec) -> Result<(), ApiError> {
    let Some(sc) = pod.security_context.as_ref().filter(|sc| **sc != PodSecurityContext::default()) else {
        return Ok(());
    };
    if let Some((i, c)) = pod.containers.iter().enumerate().find(|(_, c)| c.image.is_none()) {
        return Err(err(
            "securityContext",
            format!(
                "applies to every container, and containers[{i}] (`{}`) has no image testbed runs: a container \
                 without one shares the node's files and runs as the agent does",
                c.name
            ),
        ));
    }
    id("securityContext.runAsUser", sc.run_as_user)?;
    id("securityContext.runAsGroup", sc.run_as_group)?;
    id("securityContext.fsGroup", sc.fs_group)?;
    for (k, group) in sc.supplemental_groups.iter().enumerate() {
        id(&format!("securityContext.supplementalGroups[{k}]"), Some(*group))?;
    }
    Ok(())
}

fn id(field: &str, value: Option<i64>) -> Result<(), ApiError> {
    match value {
        Some(v) if !(0..=MAX_ID).contains(&v) => Err(err(field, format!("{v} must be between 0 and {MAX_ID}"))),
        _ => Ok(()),
    }
}

/// Container `i`'s mounts and security context. Both need an `image`: a container without one shares the
/// node's files and runs as the agent does, so a mount or a user there would be a change to the node.
pub(super) fn container(pod: &PodSpec, i: usize, c: &ContainerSpec) -> Result<(), ApiError> {
    let at = |f: &str| format!("containers[{i}].{f}");
    let no_image = "needs an image testbed runs (a digest, `name@sha256:<hex>` in an API pod, or an absolute \
                    path): a container without one shares the node's files and runs as the agent does";
    if c.image.is_none() && !c.volume_mounts.is_empty() {
        return Err(err(at("volumeMounts"), no_image));
    }
    if c.image.is_none() && c.security_context.is_some() {
        return Err(err(at("securityContext"), no_image));
    }
    let mut paths = BTreeSet::new();
    for (j, m) in c.volume_mounts.iter().enumerate() {
        let at = |f: &str| format!("containers[{i}].volumeMounts[{j}].{f}");
        if !pod.volumes.iter().any(|v| v.name == m.name) {
            let known: Vec<&str> = pod.volumes.iter().map(|v| v.name.as_str()).collect();
            let known = if known.is_empty() { "the pod has no volumes".into() } else { known.join(", ") };
            return Err(err(at("name"), format!("unknown volume `{}` (volumes: {known})", m.name)));
        }
        if !m.mount_path.starts_with('/') || m.mount_path.contains(':') {
            return Err(err(at("mountPath"), format!("`{}` must be an absolute path without ':'", m.mount_path)));
        }
        if !paths.insert(m.mount_path.trim_end_matches('/')) {
            return Err(err(at("mountPath"), format!("`{}` is mounted twice", m.mount_path)));
        }
        if m.sub_path.starts_with('/') || m.sub_path.split('/').any(|part| part == "..") {
            return Err(err(at("subPath"), format!("`{}` must be a relative path without '..'", m.sub_path)));
        }
    }
    if let Some(sc) = &c.security_context {
        security_context(i, sc)?;
    }
    Ok(())
}

fn security_context(i: usize, sc: &SecurityContext) -> Result<(), ApiError> {
    let at = |f: &str| format!("containers[{i}].securityContext.{f}");
    id(&at("runAsUser"), sc.run_as_user)?;
    id(&at("runAsGroup"), sc.run_as_group)?;
    let caps = sc.capabilities.clone().unwrap_or_default();
    for (list, names) in [("add", &caps.add), ("drop", &caps.drop)] {
        for (k, name) in names.iter().enumerate() {
            let full = format!("CAP_{}", name.to_ascii_uppercase());
            if !name.eq_ignore_ascii_case("ALL") && !ALL_CAPABILITIES.contains(&full.as_str()) {
                let message = format!("unknown capability `{name}` (names go without CAP_, e.g. NET_RAW, or ALL)");
                return Err(err(at(&format!("capabilities.{list}[{k}]")), message));
            }
        }
    }
    if sc.allow_privilege_escalation == Some(false) {
        if sc.privileged == Some(true) {
            let message = "cannot set allowPrivilegeEscalation to false and privileged to true";
            return Err(err(at("allowPrivilegeEscalation"), message));
        }
        if caps.add.iter().any(|c| c.eq_ignore_ascii_case("SYS_ADMIN")) {
            let message = "cannot set allowPrivilegeEscalation to false and capabilities.add CAP_SYS_ADMIN";
            return Err(err(at("allowPrivilegeEscalation"), message));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::validate::validate_pod;
    use crate::{
        Capabilities, ContainerSpec, EmptyDirVolumeSource, HostPathVolumeSource, PodSecurityContext, PodSpec,
        SecurityContext, Volume, VolumeMount,
    };

    fn pod() -> PodSpec {
        let container = |name: &str| ContainerSpec {
            name: name.into(),
            command: vec![],
            args: vec![],
            image: Some(format!("sha256:{}", "0f".repeat(32))),
            env: Default::default(),
            resources: Default::default(),
            pids_limit: None,
            volume_mounts: vec![VolumeMount { name: "data".into(), mount_path: "/data".into(), ..Default::default() }],
            security_context: None,
            probes: Default::default(),
        };
        PodSpec {
            name: "p".into(),
            containers: vec![container("a"), container("b")],
            volumes: vec![
                Volume { name: "data".into(), empty_dir: Some(EmptyDirVolumeSource::default()), host_path: None },
                Volume {
                    name: "conf".into(),
                    empty_dir: None,
                    host_path: Some(HostPathVolumeSource { path: "/etc/conf".into(), type_: "Directory".into() }),
                },
            ],
            ..Default::default()
        }
    }

    fn field(change: impl FnOnce(&mut PodSpec)) -> Option<String> {
        let mut p = pod();
        change(&mut p);
        validate_pod(&p).err().map(|e| e.field.unwrap_or_default())
    }

    #[test]
    fn mounts_name_a_volume_of_the_pod_at_an_absolute_path() {
        assert_eq!(field(|_| {}), None);
        assert_eq!(
            field(|p| p.containers[1].volume_mounts[0].name = "nope".into()).as_deref(),
            Some("containers[1].volumeMounts[0].name")
        );
        assert_eq!(
            field(|p| p.containers[0].volume_mounts[0].mount_path = "data".into()).as_deref(),
            Some("containers[0].volumeMounts[0].mountPath")
        );
        assert_eq!(
            field(|p| p.containers[0].volume_mounts[0].sub_path = "../up".into()).as_deref(),
            Some("containers[0].volumeMounts[0].subPath")
        );
        let twice = |p: &mut PodSpec| {
            let again = p.containers[0].volume_mounts[0].clone();
            p.containers[0].volume_mounts.push(VolumeMount { name: "conf".into(), ..again });
        };
        assert_eq!(field(twice).as_deref(), Some("containers[0].volumeMounts[1].mountPath"));
        let no_image = |p: &mut PodSpec| {
            p.containers[0].image = None;
            p.containers[0].command = vec!["sleep".into()];
        };
        assert_eq!(field(no_image).as_deref(), Some("containers[0].volumeMounts"));
    }

    #[test]
    fn volumes_have_unique_names_and_one_source() {
        assert_eq!(field(|p| p.volumes[1].name = "data".into()).as_deref(), Some("volumes[1].name"));
        assert_eq!(field(|p| p.volumes[0].host_path = p.volumes[1].host_path.clone()).as_deref(), Some("volumes[0]"));
        assert_eq!(
            field(|p| p.volumes[1].host_path.as_mut().unwrap().path = "rel".into()).as_deref(),
            Some("volumes[1].hostPath.path")
        );
        assert_eq!(
            field(|p| p.volumes[1].host_path.as_mut().unwrap().type_ = "Dir".into()).as_deref(),
            Some("volumes[1].hostPath.type")
        );
        let medium = |p: &mut PodSpec| p.volumes[0].empty_dir.as_mut().unwrap().medium = "Disk".into();
        assert_eq!(field(medium).as_deref(), Some("volumes[0].emptyDir.medium"));
        let size = |p: &mut PodSpec| p.volumes[0].empty_dir.as_mut().unwrap().size_limit = Some("lots".into());
        assert_eq!(field(size).as_deref(), Some("volumes[0].emptyDir.sizeLimit"));
    }

    #[test]
    fn security_contexts_follow_the_api_servers_rules() {
        let with = |sc: SecurityContext| field(move |p| p.containers[0].security_context = Some(sc));
        let caps = |add: &[&str]| Some(Capabilities { add: add.iter().map(|c| c.to_string()).collect(), drop: vec![] });
        assert_eq!(with(SecurityContext { capabilities: caps(&["NET_ADMIN", "all"]), ..Default::default() }), None);
        assert_eq!(
            with(SecurityContext { capabilities: caps(&["CAP_NET_ADMIN"]), ..Default::default() }).as_deref(),
            Some("containers[0].securityContext.capabilities.add[0]")
        );
        assert_eq!(
            with(SecurityContext { run_as_user: Some(-1), ..Default::default() }).as_deref(),
            Some("containers[0].securityContext.runAsUser")
        );
        let escalation =
            SecurityContext { privileged: Some(true), allow_privilege_escalation: Some(false), ..Default::default() };
        assert_eq!(with(escalation).as_deref(), Some("containers[0].securityContext.allowPrivilegeEscalation"));
        let no_image = |p: &mut PodSpec| {
            p.containers[0].image = None;
            p.containers[0].command = vec!["sleep".into()];
            p.containers[0].volume_mounts.clear();
            p.containers[0].security_context = Some(SecurityContext::default());
        };
        assert_eq!(field(no_image).as_deref(), Some("containers[0].securityContext"));
    }

    #[test]
    fn pod_groups_are_ids_in_range() {
        let with = |sc: PodSecurityContext| field(move |p| p.security_context = Some(sc));
        let groups = |g: &[i64]| PodSecurityContext { supplemental_groups: g.to_vec(), ..Default::default() };
        assert_eq!(with(PodSecurityContext { fs_group: Some(2000), ..groups(&[4000, 0]) }), None);
        assert_eq!(with(groups(&[4000, -5])).as_deref(), Some("securityContext.supplementalGroups[1]"));
        let fs_group = PodSecurityContext { fs_group: Some(1 << 40), ..Default::default() };
        assert_eq!(with(fs_group).as_deref(), Some("securityContext.fsGroup"));
    }

    #[test]
    fn a_pod_security_context_needs_every_container_in_an_image() {
        let without_image = |sc: PodSecurityContext| {
            field(move |p| {
                p.containers[1].image = None;
                p.containers[1].command = vec!["sleep".into()];
                p.containers[1].volume_mounts.clear();
                p.security_context = Some(sc);
            })
        };
        let run_as = PodSecurityContext { run_as_user: Some(1000), ..Default::default() };
        assert_eq!(without_image(run_as).as_deref(), Some("securityContext"));
        assert_eq!(without_image(PodSecurityContext::default()), None, "an empty one asks nothing");
    }
}
