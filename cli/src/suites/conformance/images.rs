//! What the `container` and `probe` groups share: the busybox image on a node, their check lists (a group
//! whose checks are all left out by `--skip` creates nothing), and file operations inside a container and on
//! the node, with the evidence a report shows.

use std::collections::BTreeMap;

use testbed_api::results::CheckStatus;
use testbed_api::ContainerState;

use super::super::cluster::Cluster;
use super::super::fsops::{self, Found, Op};
use super::super::harness::{evidence, nexec, pexec, TestPod};
use super::super::runner::{CheckError, Runner};
use crate::image::oci::BUSYBOX;
use crate::plan::ContainerImage;

/// A group's name and the names of its checks, in report order.
pub(super) struct Group {
    pub(super) name: &'static str,
    pub(super) checks: &'static [&'static str],
}

impl Group {
    /// Whether the run keeps any of the group's checks (its pods cost time on TCG otherwise).
    pub(super) fn any_selected(&self, r: &Runner) -> bool {
        self.checks.iter().any(|n| r.selected(&Runner::full_name(self.name, None, n)))
    }
}

/// Records every check of `g` as not run, for why the group's set-up failed.
pub(super) fn skip_all(r: &mut Runner, g: &Group, why: &CheckError) {
    let (status, msg) = match why {
        CheckError::Fail(m) => (CheckStatus::Fail, m.clone()),
        CheckError::Skip(m) => (CheckStatus::Skip, m.clone()),
        CheckError::Infra(m) | CheckError::Slow(m) => (CheckStatus::Error, m.clone()),
    };
    for n in g.checks {
        r.record(g.name, None, n, status, &format!("set-up of the group failed: {msg}"));
    }
}

/// The busybox image in `node`'s store (delivered as `up` delivers it); its digest.
pub(super) async fn busybox_on<C: Cluster>(c: &C, node: &str) -> Result<String, CheckError> {
    Ok(c.ensure_image(node, &ContainerImage::Built(BUSYBOX.into())).await?)
}

/// The PID of a running container of the pod, as the node sees it.
pub(super) fn pid_of(p: &TestPod, container: &str) -> Result<u32, CheckError> {
    let st = p.status.containers.iter().find(|c| c.name == container);
    match st.map(|c| &c.state) {
        Some(ContainerState::Running { pid }) => Ok(*pid),
        other => Err(CheckError::Fail(format!("{}/{container} is not running: {other:?}", p.name))),
    }
}

/// What each path's operation found, and the evidence.
pub(super) struct Seen {
    pub(super) found: BTreeMap<String, Found>,
    pub(super) evidence: String,
}

impl Seen {
    /// What `path`'s operation found; a Fail with the evidence when the script did not answer for it.
    pub(super) fn get(&self, path: &str) -> Result<&Found, CheckError> {
        self.found.get(path).ok_or_else(|| CheckError::Fail(format!("no answer for {path}\n{}", self.evidence)))
    }

    /// The file's text, or a Fail naming `what` when it is absent.
    pub(super) fn text(&self, path: &str, what: &str) -> Result<&str, CheckError> {
        match self.get(path)? {
            Found::Present(t) => Ok(t),
            other => Err(CheckError::Fail(format!("{what}: {path} is {other:?}\n{}", self.evidence))),
        }
    }
}

/// Runs `ops` in `container` of the pod (its own namespaces and root).
pub(super) async fn in_container<C: Cluster>(
    c: &C,
    p: &TestPod,
    container: &str,
    ops: &[Op],
) -> Result<Seen, CheckError> {
    let script = fsops::script(ops);
    let r = pexec(c, p, Some(container), &script, 30).await?;
    let evidence = format!("in {}/{container}:\n{}", p.name, evidence(&script, &r));
    Ok(Seen { found: fsops::parse_output(&r.stdout), evidence })
}

/// Runs `ops` on the node, in its root namespaces.
pub(super) async fn on_node<C: Cluster>(c: &C, node: &str, ops: &[Op]) -> Result<Seen, CheckError> {
    let script = fsops::script(ops);
    let r = nexec(c, node, &script).await?;
    let evidence = format!("on node {node}:\n{}", evidence(&script, &r));
    Ok(Seen { found: fsops::parse_output(&r.stdout), evidence })
}

/// `path` in the root of the process `pid`, as the node reaches it.
pub(super) fn proc_root(pid: u32, path: &str) -> String {
    format!("/proc/{pid}/root{path}")
}
