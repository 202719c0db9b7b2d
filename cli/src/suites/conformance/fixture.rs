//! The conformance suite's own test pods: web servers a1 and a2 on the first node and b1 on the second, each
//! serving its name over HTTP, set up before a backend's checks and shared by all of them.

use testbed_api::{PodSpec, PodStatus, RestartPolicy};

use super::super::cluster::{nodes_of, Cluster, NodeInfo};
use super::super::harness::{
    cleanup, container, create_tracked, evidence, nexec, pexec, pod, remove_leftover, wait_running, CreatedPods,
    TestPod,
};
use super::super::probe::{self, HTTP_PORT};
use super::super::runner::{CheckError, CheckOutcome};
use super::cgroups::{POD_CPU, POD_MEM};
use super::container::POD_IMG;
use super::probe::{POD_LIVE, POD_NET, POD_READY, POD_START};

const POD_A1: &str = "tb-c-a1";
const POD_A2: &str = "tb-c-a2";
const POD_B1: &str = "tb-c-b1";
/// Where the guests' agents keep their IP leases, one file per address holding the pod's name
/// (`--lease-dir` in templates/guest/testbed-agent.service).
const GUEST_LEASE_DIR: &str = "/run/testbed-agent/leases";

/// The test pods of one backend's run, and the nodes they run on (b and b1 only on a lab of two nodes or more).
pub(super) struct Fixture {
    pub(super) a: NodeInfo,
    pub(super) b: Option<NodeInfo>,
    pub(super) a1: TestPod,
    pub(super) a2: TestPod,
    pub(super) b1: Option<TestPod>,
}

impl Fixture {
    /// The pod on the second node. On a single-node lab a1 stands in for it: every check that uses it is then
    /// skipped (`skip_cross`), so the stand-in is never measured.
    pub(super) fn cross_pod(&self) -> &TestPod {
        self.b1.as_ref().unwrap_or(&self.a1)
    }

    /// The second node, or the first on a single-node lab (for the same reason as `cross_pod`).
    pub(super) fn cross_node(&self) -> &NodeInfo {
        self.b.as_ref().unwrap_or(&self.a)
    }

    /// Every test pod, in creation order.
    pub(super) fn pods(&self) -> Vec<&TestPod> {
        [Some(&self.a1), Some(&self.a2), self.b1.as_ref()].into_iter().flatten().collect()
    }
}

/// `tb-c-a1` has a second container to check that containers share the pod's network namespace.
pub fn web_pod(name: &str, with_sidecar: bool) -> PodSpec {
    let mut containers = vec![container("web", probe::web_command(name))];
    if with_sidecar {
        containers.push(container("side", vec!["sleep".into(), "infinity".into()]));
    }
    pod(name, containers, RestartPolicy::Always)
}

/// The pod's httpd answers on 127.0.0.1 (a readiness probe: Running is not serving yet).
async fn wait_serving<C: Cluster>(c: &C, p: &TestPod) -> Result<(), CheckError> {
    let cmd = probe::retrying(&format!("timeout 2 busybox wget -q -O /dev/null http://127.0.0.1:{HTTP_PORT}/"), 100);
    let r = pexec(c, p, None, &cmd, 60).await?;
    if r.exit_code != 0 {
        return Err(CheckError::Infra(format!("pod {} never served HTTP\n{}", p.name, evidence(&cmd, &r))));
    }
    Ok(())
}

/// Creates the test pods and waits until each one serves.
pub(super) async fn setup<C: Cluster>(c: &C, created: &CreatedPods) -> Result<Fixture, CheckError> {
    let nodes = nodes_of(c.plan());
    let a = nodes.first().cloned().ok_or_else(|| CheckError::Infra("the plan has no nodes".into()))?;
    let b = nodes.get(1).cloned();
    let mut wanted = vec![(a.name.clone(), web_pod(POD_A1, true)), (a.name.clone(), web_pod(POD_A2, false))];
    if let Some(b) = &b {
        wanted.push((b.name.clone(), web_pod(POD_B1, false)));
    }
    for (node, spec) in &wanted {
        create_tracked(c, node, spec, created).await?;
    }
    let mut pods = Vec::new();
    for (node, spec) in &wanted {
        pods.push(wait_running(c, node, &spec.name).await?);
    }
    for p in &pods {
        wait_serving(c, p).await?;
    }
    let mut it = pods.into_iter();
    let (Some(a1), Some(a2)) = (it.next(), it.next()) else {
        return Err(CheckError::Infra("test pods missing".into()));
    };
    Ok(Fixture { a, b, a1, a2, b1: it.next() })
}

/// Removes pods left by an interrupted earlier run; a missing pod is the normal case.
pub(super) async fn remove_leftovers<C: Cluster>(c: &C) {
    for n in &c.plan().nodes {
        for name in [POD_A1, POD_A2, POD_B1, POD_CPU, POD_MEM, POD_IMG, POD_LIVE, POD_READY, POD_START, POD_NET] {
            remove_leftover(c, &n.name, name).await;
        }
    }
}

/// Deletes the suite's pods (`cleanup`), then looks on each node for anything of them the agent should have
/// removed: the host veth, an IP lease, the pod's cgroup (its containers' are below it). Read on the node
/// itself, so an agent that answers success while leaking is caught, not only one that admits it (a DELETE
/// answering 500 with the leaks is an error already).
pub(super) async fn cleanup_checked<C: Cluster>(c: &C, created: &CreatedPods) -> CheckOutcome {
    // Where each pod's traces are, as the agent reported them before the delete.
    let mut before: Vec<(String, PodStatus)> = Vec::new();
    let pods: Vec<(String, String)> = created.borrow().clone();
    for (node, name) in &pods {
        if let Ok(st) = c.get_pod(node, name).await {
            before.push((node.clone(), st));
        }
    }
    let removed = cleanup(c, created).await;
    let mut left = Vec::new();
    for (node, st) in &before {
        let cmd = leftovers_script(st);
        let r = nexec(c, node, &cmd).await?;
        left.extend(r.stdout.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{node}: {} {l}", st.name)));
    }
    match (left.is_empty(), removed) {
        (true, removed) => removed.map(|ev| format!("{ev}; no veth, lease or cgroup of them left on the nodes")),
        (false, Ok(_)) => {
            Err(CheckError::Fail(format!("the agents answered success but left behind:\n{}", left.join("\n"))))
        }
        (false, Err(e)) => Err(CheckError::Fail(format!("left behind:\n{}\n{e:?}", left.join("\n")))),
    }
}

/// Prints `veth NAME`, `lease FILE`, `cgroup DIR` for each trace of the pod still on its node.
fn leftovers_script(st: &PodStatus) -> String {
    let mut cmd = String::new();
    if let Some(veth) = &st.host_veth {
        cmd.push_str(&format!("ip link show dev {veth} >/dev/null 2>&1 && echo 'veth {veth}'; "));
    }
    cmd.push_str(&format!("grep -lx '{}' {GUEST_LEASE_DIR}/* 2>/dev/null | sed 's/^/lease /'; ", st.name));
    cmd.push_str(&format!("[ -d '{}' ] && echo 'cgroup {}'; true", st.cgroup, st.cgroup));
    cmd
}
