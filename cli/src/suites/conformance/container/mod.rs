//! The `container` group: containers that name an image run in a root filesystem of their own, as a
//! container runtime runs them. A container sees its image's files and not the node's, its writes stay in
//! its upper layer, two containers of a pod share an emptyDir and nothing else, readOnlyRootFilesystem,
//! runAsUser/runAsGroup and a dropped capability hold, and /etc/hostname, /etc/hosts and /etc/resolv.conf are
//! the kubelet's; a container names its image by name or by digest, and one naming an image the node lacks
//! waits for it. Backend-independent: runs once, on the first node, with the busybox image `up` delivers.
//!
//! Every check reads twice where it can: inside the container (an exec naming it) and on the node through
//! `/proc/<pid>/root` and `/proc/<pid>/status` of the container's own process, so a check does not trust the
//! exec path alone (an exec runs as the container's process does: its user, groups and capabilities).

mod checks;

use testbed_api::{
    Capabilities, ContainerSpec, EmptyDirVolumeSource, PodSpec, RestartPolicy, SecurityContext, Volume, VolumeMount,
};

use super::super::cluster::{nodes_of, Cluster};
use super::super::harness::{container, create_tracked, pod, CreatedPods};
use super::super::runner::{CheckError, Level, Runner};
use super::images::{busybox_on, skip_all, Group};

pub(super) const POD_IMG: &str = "tb-c-img";
/// A pod naming an image no node has.
const POD_MISSING: &str = "tb-c-missing";
/// A name in the reserved `.invalid` domain: no image anywhere has it.
const MISSING_IMAGE: &str = "registry.invalid/testbed/missing:1";
/// The kubelet's waiting reason for an image it may not pull.
const ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";
/// The name `up` indexes the busybox image under on the node (`testbed-agent import-image --name`).
const BUSYBOX_NAME: &str = crate::image::oci::BUSYBOX;
/// Root, a writable root filesystem, NET_RAW dropped: its command tries a raw socket (ping) as itself.
const RW: &str = "rw";
/// uid 1000, gid 3000, a read-only root filesystem.
const RO: &str = "ro";
const SHARED: &str = "/shared";
const RUN_AS_USER: u32 = 1000;
const RUN_AS_GROUP: u32 = 3000;
/// `rw`'s command: whether its own process may open a raw socket, left in the emptyDir for the check.
pub const PING_SCRIPT: &str =
    "ping -c 1 -W 1 127.0.0.1 > /shared/ping 2>&1; echo exit=$? >> /shared/ping; exec sleep 3600";

const GROUP: Group = Group {
    name: "container",
    checks: &[
        "a container sees its image's files and not the node's",
        "a container's writes stay in its upper layer: not on the node, gone when the pod is recreated",
        "two containers of a pod share an emptyDir and nothing else of each other's root",
        "readOnlyRootFilesystem refuses writes; an emptyDir mounted in it stays writable",
        "runAsUser and runAsGroup are the ids of the container's process",
        "a dropped capability is gone: NET_RAW not effective, no raw socket",
        "the pod's hostname, hosts and resolv.conf files are the ones the kubelet writes",
        "an image name the node does not have keeps the pod Pending, its container waiting (ErrImageNeverPull)",
    ],
};

/// The group's pod: two busybox containers sharing an emptyDir at /shared, `rw`'s image named by its name
/// in the node's store, `ro`'s by digest.
fn image_pod(digest: &str) -> PodSpec {
    let mount = vec![VolumeMount { name: "shared".into(), mount_path: SHARED.into(), ..Default::default() }];
    let in_image = |name: &str, command: Vec<String>, sc: SecurityContext| ContainerSpec {
        image: Some(if name == RW { BUSYBOX_NAME.to_string() } else { digest.to_string() }),
        volume_mounts: mount.clone(),
        security_context: Some(sc),
        ..container(name, command)
    };
    let drop_raw = SecurityContext {
        capabilities: Some(Capabilities { add: vec![], drop: vec!["NET_RAW".into()] }),
        ..Default::default()
    };
    let confined = SecurityContext {
        run_as_user: Some(RUN_AS_USER.into()),
        run_as_group: Some(RUN_AS_GROUP.into()),
        read_only_root_filesystem: Some(true),
        ..Default::default()
    };
    let containers = vec![
        in_image(RW, super::super::probe::sh(PING_SCRIPT), drop_raw),
        in_image(RO, vec!["sleep".into(), "3600".into()], confined),
    ];
    let volumes =
        vec![Volume { name: "shared".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() }];
    PodSpec { volumes, ..pod(POD_IMG, containers, RestartPolicy::Always) }
}

/// A pod whose one container names `MISSING_IMAGE`.
fn missing_image_pod() -> PodSpec {
    let c = ContainerSpec { image: Some(MISSING_IMAGE.into()), ..container("c", vec!["sleep".into(), "3600".into()]) };
    pod(POD_MISSING, vec![c], RestartPolicy::Always)
}

/// Runs the group on the first node; its pod is added to `created`.
pub(super) async fn run<C: Cluster>(c: &C, r: &mut Runner, created: &CreatedPods) {
    if !GROUP.any_selected(r) {
        return;
    }
    let Some(node) = nodes_of(c.plan()).into_iter().next().map(|n| n.name) else { return };
    let spec = match busybox_on(c, &node).await {
        Ok(digest) => image_pod(&digest),
        Err(e) => return skip_all(r, &GROUP, &e),
    };
    if let Err(e) = create_tracked(c, &node, &spec, created).await {
        return skip_all(r, &GROUP, &CheckError::from(e));
    }
    let (g, e, n) = (GROUP.name, Level::Error, node.as_str());
    let names = GROUP.checks;
    r.run(g, None, names[0], e, checks::own_root(c, n)).await;
    r.run(g, None, names[1], e, checks::upper_layer(c, n, &spec, created)).await;
    r.run(g, None, names[2], e, checks::shared_volume(c, n)).await;
    r.run(g, None, names[3], e, checks::read_only_root(c, n)).await;
    r.run(g, None, names[4], e, checks::user(c, n)).await;
    r.run(g, None, names[5], e, checks::dropped_capability(c, n)).await;
    r.run(g, None, names[6], e, checks::etc_files(c, n)).await;
    r.run(g, None, names[7], e, checks::missing_name(c, n, created)).await;
}
