//! The `container` group's checks on its pod (`image_pod`): each reads inside a container (an exec naming
//! it) and, where the exec could mislead, on the node through the container's own process.

use std::time::Duration;

use testbed_api::{ContainerState, PodPhase, PodSpec};

use super::super::super::cluster::Cluster;
use super::super::super::fsops::{Found, Op};
use super::super::super::harness::{create_tracked, remove_leftover, wait_running, CreatedPods, TestPod};
use super::super::super::poll;
use super::super::super::runner::{CheckError, CheckOutcome};
use super::super::images::{in_container, on_node, pid_of, proc_root};
use super::{
    missing_image_pod, ERR_IMAGE_NEVER_PULL, MISSING_IMAGE, POD_IMG, POD_MISSING, RO, RUN_AS_GROUP, RUN_AS_USER, RW,
};

/// The busybox image's whole /etc/passwd (`crate::image::oci::busybox_layer`); Debian's, the node's, has more.
const IMAGE_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh";
/// A file the check writes on the node just before it looks for it in the container.
const NODE_MARKER: &str = "/tmp/tb-c-node-marker";
const UPPER_FILE: &str = "/tmp/tb-c-upper";
const CAP_CHOWN: u64 = 1 << 0;
const CAP_NET_RAW: u64 = 1 << 13;

async fn img<C: Cluster>(c: &C, node: &str) -> Result<TestPod, CheckError> {
    wait_running(c, node, POD_IMG).await
}

fn fail(problems: Vec<String>, evidence: &[&str]) -> CheckOutcome {
    let evidence = evidence.join("\n");
    if problems.is_empty() {
        Ok(evidence)
    } else {
        Err(CheckError::Fail(format!("{}\n{evidence}", problems.join("; "))))
    }
}

pub(super) async fn own_root<C: Cluster>(c: &C, node: &str) -> CheckOutcome {
    let p = img(c, node).await?;
    let pid = pid_of(&p, RW)?;
    let (passwd, release) = ("/etc/passwd", "/etc/os-release");
    let (root_passwd, root_release, root_marker) =
        (proc_root(pid, passwd), proc_root(pid, release), proc_root(pid, NODE_MARKER));
    let node_ops = [
        Op::write(NODE_MARKER, "node"),
        Op::read(passwd),
        Op::read(release),
        Op::read(&root_passwd),
        Op::read(&root_release),
        Op::read(&root_marker),
    ];
    let outside = on_node(c, node, &node_ops).await?;
    let inside = in_container(c, &p, RW, &[Op::read(passwd), Op::read(release), Op::read(NODE_MARKER)]).await;
    on_node(c, node, &[Op::remove(NODE_MARKER)]).await?;
    let inside = inside?;
    if outside.get(NODE_MARKER)? != &Found::Wrote
        || outside.text(passwd, "the node's")? == IMAGE_PASSWD
        || outside.text(release, "the node's").is_err()
    {
        return Err(CheckError::Infra(format!(
            "the node's files cannot be told from the image's\n{}",
            outside.evidence
        )));
    }
    let mut problems = Vec::new();
    for (who, seen, passwd, release, marker) in [
        ("inside", &inside, passwd, release, NODE_MARKER),
        ("through the process's root", &outside, root_passwd.as_str(), root_release.as_str(), root_marker.as_str()),
    ] {
        match seen.get(passwd)? {
            Found::Present(t) if t == IMAGE_PASSWD => {}
            other => problems.push(format!("{who}: /etc/passwd is {other:?}, not the image's")),
        }
        for (path, what) in [(release, "the node's /etc/os-release"), (marker, "the file just written on the node")] {
            if seen.get(path)? != &Found::Absent {
                problems.push(format!("{who}: {what} is there"));
            }
        }
    }
    fail(problems, &[&outside.evidence, &inside.evidence])
}

pub(super) async fn upper_layer<C: Cluster>(c: &C, node: &str, spec: &PodSpec, created: &CreatedPods) -> CheckOutcome {
    let p = img(c, node).await?;
    let pid = pid_of(&p, RW)?;
    let wrote = in_container(c, &p, RW, &[Op::write(UPPER_FILE, "upper")]).await?;
    if wrote.get(UPPER_FILE)? != &Found::Wrote {
        return Err(CheckError::Fail(format!("the container cannot write {UPPER_FILE}\n{}", wrote.evidence)));
    }
    let own = proc_root(pid, UPPER_FILE);
    let before = on_node(c, node, &[Op::read(UPPER_FILE), Op::read(&own)]).await?;
    let mut problems = Vec::new();
    if before.get(UPPER_FILE)? != &Found::Absent {
        problems.push(format!("the container's write is in the node's {UPPER_FILE}"));
    }
    if before.get(&own)? != &Found::Present("upper".into()) {
        problems.push(format!("the container's own root does not have its write: {:?}", before.get(&own)?));
    }
    // Recreated: the pod's new containers start from the image again.
    c.delete_pod(node, POD_IMG, Some(Duration::ZERO)).await?;
    created.borrow_mut().retain(|(n, name)| !(n == node && name == POD_IMG));
    create_tracked(c, node, spec, created).await?;
    let p = img(c, node).await?;
    let after_inside = in_container(c, &p, RW, &[Op::read(UPPER_FILE)]).await?;
    let new_own = proc_root(pid_of(&p, RW)?, UPPER_FILE);
    let after = on_node(c, node, &[Op::read(UPPER_FILE), Op::read(&new_own)]).await?;
    for (who, seen, path) in
        [("inside", &after_inside, UPPER_FILE), ("through the process's root", &after, new_own.as_str())]
    {
        if seen.get(path)? != &Found::Absent {
            problems.push(format!("after the pod was recreated, {who}: the old container's write is still there"));
        }
    }
    fail(problems, &[&wrote.evidence, &before.evidence, "(pod recreated)", &after_inside.evidence, &after.evidence])
}

pub(super) async fn shared_volume<C: Cluster>(c: &C, node: &str) -> CheckOutcome {
    let p = img(c, node).await?;
    let (shared, own) = ("/shared/from-rw", "/tmp/rw-own");
    let wrote = in_container(c, &p, RW, &[Op::write(shared, "rw"), Op::write(own, "rw")]).await?;
    if wrote.get(shared)? != &Found::Wrote || wrote.get(own)? != &Found::Wrote {
        return Err(CheckError::Fail(format!("{RW} cannot write its files\n{}", wrote.evidence)));
    }
    let inside = in_container(c, &p, RO, &[Op::read(shared), Op::read(own)]).await?;
    let pid = pid_of(&p, RO)?;
    let (root_shared, root_own) = (proc_root(pid, shared), proc_root(pid, own));
    let outside = on_node(c, node, &[Op::read(&root_shared), Op::read(&root_own)]).await?;
    let mut problems = Vec::new();
    for (who, seen, shared, own) in [
        ("inside", &inside, shared, own),
        ("through the process's root", &outside, root_shared.as_str(), root_own.as_str()),
    ] {
        if seen.get(shared)? != &Found::Present("rw".into()) {
            problems.push(format!("{RO} ({who}) does not see {RW}'s write to the emptyDir: {:?}", seen.get(shared)?));
        }
        if seen.get(own)? != &Found::Absent {
            problems.push(format!("{RO} ({who}) sees {RW}'s {own}: their roots are shared"));
        }
    }
    fail(problems, &[&wrote.evidence, &inside.evidence, &outside.evidence])
}

pub(super) async fn read_only_root<C: Cluster>(c: &C, node: &str) -> CheckOutcome {
    let p = img(c, node).await?;
    let (own, shared, control) = ("/tmp/ro-own", "/shared/from-ro", "/tmp/rw-control");
    let ro = in_container(c, &p, RO, &[Op::write(own, "ro"), Op::write(shared, "ro")]).await?;
    let rw = in_container(c, &p, RW, &[Op::read(shared), Op::write(control, "rw")]).await?;
    let root_own = proc_root(pid_of(&p, RO)?, own);
    let outside = on_node(c, node, &[Op::read(&root_own)]).await?;
    let mut problems = Vec::new();
    if ro.get(own)? != &Found::Refused || outside.get(&root_own)? != &Found::Absent {
        problems.push(format!("{RO}'s read-only root took a write to {own}"));
    }
    if ro.get(shared)? != &Found::Wrote || rw.get(shared)? != &Found::Present("ro".into()) {
        problems.push(format!("the emptyDir in {RO}'s read-only root is not writable"));
    }
    if rw.get(control)? != &Found::Wrote {
        problems.push(format!("{RW}, without readOnlyRootFilesystem, cannot write its root either"));
    }
    fail(problems, &[&ro.evidence, &rw.evidence, &outside.evidence])
}

/// The numbers of a `/proc/<pid>/status` field (`Uid:` real, effective, saved, filesystem).
fn status_numbers(status: &str, field: &str) -> Vec<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix(&format!("{field}:")));
    let radix = if field.starts_with("Cap") { 16 } else { 10 };
    line.map(|l| l.split_whitespace().filter_map(|v| u64::from_str_radix(v, radix).ok()).collect()).unwrap_or_default()
}

pub(super) async fn user<C: Cluster>(c: &C, node: &str) -> CheckOutcome {
    let p = img(c, node).await?;
    let (ro_status, rw_status) =
        (format!("/proc/{}/status", pid_of(&p, RO)?), format!("/proc/{}/status", pid_of(&p, RW)?));
    let outside = on_node(c, node, &[Op::read(&ro_status), Op::read(&rw_status)]).await?;
    // The container's PID 1 in its own PID namespace is its process; `self` is the exec's, which runs as the
    // container's process does (kubectl exec's semantics).
    let inside = in_container(c, &p, RO, &[Op::read("/proc/1/status"), Op::read("/proc/self/status")]).await?;
    let want = |id: u32| vec![u64::from(id); 4];
    let mut problems = Vec::new();
    let exec_status = inside.text("/proc/self/status", "the exec's status")?;
    let exec_caps = status_numbers(exec_status, "CapEff");
    if exec_caps.iter().any(|c| *c != 0) {
        problems.push(format!("an exec into {RO} has capabilities its process lacks (CapEff {exec_caps:x?})"));
    }
    for (who, text) in [
        ("on the node", outside.text(&ro_status, "the process's status")?),
        ("inside", inside.text("/proc/1/status", "the process's status")?),
        ("an exec into it", exec_status),
    ] {
        let (uid, gid) = (status_numbers(text, "Uid"), status_numbers(text, "Gid"));
        if uid != want(RUN_AS_USER) || gid != want(RUN_AS_GROUP) {
            problems.push(format!("{RO} runs as uid {uid:?} gid {gid:?} ({who}), not {RUN_AS_USER}/{RUN_AS_GROUP}"));
        }
    }
    let rw_uid = status_numbers(outside.text(&rw_status, "the process's status")?, "Uid");
    if rw_uid != want(0) {
        problems.push(format!("{RW}, which sets no user, runs as {rw_uid:?}, not the image's root"));
    }
    fail(problems, &[&outside.evidence, &inside.evidence])
}

pub(super) async fn dropped_capability<C: Cluster>(c: &C, node: &str) -> CheckOutcome {
    let p = img(c, node).await?;
    let pid = pid_of(&p, RW)?;
    let (status, ping) = (format!("/proc/{pid}/status"), proc_root(pid, "/shared/ping"));
    // The container's command leaves its ping's outcome in the emptyDir once the ping is over.
    let seen = poll::until("the container's ping outcome", Duration::from_secs(20), || async {
        let seen = on_node(c, node, &[Op::read(&status), Op::read(&ping)]).await?;
        let done = matches!(seen.get(&ping)?, Found::Present(t) if t.contains("exit="));
        Ok(done.then_some(seen))
    })
    .await?;
    let text = seen.text(&status, "the process's status")?;
    let (eff, bnd) = (status_numbers(text, "CapEff"), status_numbers(text, "CapBnd"));
    let (eff, bnd) = (eff.first().copied().unwrap_or(0), bnd.first().copied().unwrap_or(0));
    let mut problems = Vec::new();
    if eff & CAP_NET_RAW != 0 || bnd & CAP_NET_RAW != 0 {
        problems.push(format!("NET_RAW is in the process's sets (CapEff {eff:016x}, CapBnd {bnd:016x})"));
    }
    if eff & CAP_CHOWN == 0 {
        problems.push(format!("the process lacks the default set's CHOWN (CapEff {eff:016x}): not the default set"));
    }
    let outcome = seen.text(&ping, "the ping's outcome")?;
    let refused = ["permission denied", "not permitted"].iter().any(|m| outcome.to_lowercase().contains(m));
    if outcome.contains("exit=0") || !refused {
        problems.push(format!("the container's own ping was not refused a raw socket: {outcome:?}"));
    }
    fail(problems, &[&seen.evidence])
}

pub(super) async fn etc_files<C: Cluster>(c: &C, node: &str) -> CheckOutcome {
    let p = img(c, node).await?;
    let (hostname, hosts, resolv) = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf");
    let inside = in_container(c, &p, RW, &[Op::read(hostname), Op::read(hosts), Op::read(resolv)]).await?;
    let other = proc_root(pid_of(&p, RO)?, hosts);
    let outside = on_node(c, node, &[Op::read(resolv), Op::read(&other)]).await?;
    let mut problems = Vec::new();
    let name = inside.text(hostname, "the pod's hostname file")?;
    if name != POD_IMG {
        problems.push(format!("/etc/hostname is `{name}`, not the pod's name"));
    }
    let hosts_text = inside.text(hosts, "the pod's hosts file")?;
    let lines: Vec<Vec<&str>> = hosts_text.lines().map(|l| l.split_whitespace().collect()).collect();
    let ip = p.ip.to_string();
    if !hosts_text.starts_with("# Kubernetes-managed hosts file.") {
        problems.push("/etc/hosts is not the kubelet's managed file".into());
    }
    if !lines.iter().any(|t| t.as_slice() == ["127.0.0.1", "localhost"]) {
        problems.push("/etc/hosts has no `127.0.0.1 localhost`".into());
    }
    if !lines.iter().any(|t| t.as_slice() == [ip.as_str(), POD_IMG]) {
        problems.push(format!("/etc/hosts does not map {POD_IMG} to the pod's IP {ip}"));
    }
    if outside.get(&other)? != &Found::Present(hosts_text.to_string()) {
        problems.push(format!("{RO}'s /etc/hosts differs from {RW}'s"));
    }
    // A node without /etc/resolv.conf gives its pods an empty one.
    let node_resolv = match outside.get(resolv)? {
        Found::Present(t) => t.as_str(),
        _ => "",
    };
    if inside.text(resolv, "the pod's resolv.conf")? != node_resolv {
        problems.push("/etc/resolv.conf is not the node's (dnsPolicy Default)".into());
    }
    fail(problems, &[&inside.evidence, &outside.evidence])
}

/// A pod whose image name the node's store lacks: it is created Pending, its container waiting with the
/// kubelet's `ErrImageNeverPull` (nothing is pulled) and never started (no restart counted), as the status
/// says at once and still says a moment later. The group's own pod names its `rw` container's image by
/// name, so the name index that finds an image is proven by every other check of the group.
pub(super) async fn missing_name<C: Cluster>(c: &C, node: &str, created: &CreatedPods) -> CheckOutcome {
    remove_leftover(c, node, POD_MISSING).await;
    let first = create_tracked(c, node, &missing_image_pod(), created).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = c.get_pod(node, POD_MISSING).await?;
    let mut problems = Vec::new();
    for (when, st) in [("at create", &first), ("2 s later", &later)] {
        if st.phase != PodPhase::Pending {
            problems.push(format!("{when}: the pod is {:?}, not Pending", st.phase));
        }
        match st.containers.first() {
            Some(ctr)
                if matches!(&ctr.state, ContainerState::Waiting { reason } if reason == ERR_IMAGE_NEVER_PULL)
                    && ctr.restart_count == 0 => {}
            other => problems.push(format!(
                "{when}: the container is {:?}, not waiting as {ERR_IMAGE_NEVER_PULL} with no restart",
                other.map(|c| (&c.state, c.restart_count))
            )),
        }
    }
    let evidence = format!("node {node} has no image {MISSING_IMAGE}; status at create: {first:?}; later: {later:?}");
    fail(problems, &[&evidence])
}
