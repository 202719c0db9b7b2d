//! The `service` group: Services on the lab as a user sees them, through the lab's API (Services, the
//! EndpointSlice controller, every node's agent following both into its `testbed-proxy` table). Each check
//! is named after the Kubernetes e2e test it follows (test/e2e/network/service.go; ESIPP for
//! externalTrafficPolicy), or after the contract (endpoints follow within 2 s). Runs on every
//! backend: its own API pods (web servers answering their name, an HTTP port and a second one), a client
//! pod that no Service selects, and the Services, made per backend and removed after it.

mod checks;
mod follow;
mod objects;

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams};
use kube::Client;
use testbed_api::results::CheckStatus;
use testbed_api::Backend;

use super::super::cluster::{nodes_of, Cluster, NodeInfo};
use super::super::harness::TestPod;
use super::super::runner::{Level, Runner};

const GROUP: &str = "service";
const NAMESPACE: &str = "testbed-conformance-service";

/// The group's check names, in report order (tests/conformance_e2e.rs counts them).
pub(super) const NAMES: [&str; 11] = [
    "should serve a basic endpoint from pods",
    "should serve multiport endpoints from pods",
    "should be able to create a functioning NodePort service",
    "should have session affinity work for service with type clusterIP",
    "should be able to switch session affinity for service with type clusterIP",
    "should allow pods to hairpin back to themselves through services",
    "should preserve source pod IP for traffic thru service cluster IP",
    "should be rejected when no endpoints exist",
    "should respect internalTrafficPolicy=Local Pod to Pod",
    "ESIPP should work for type=NodePort",
    "node -> ClusterIP from the node's own processes",
];
/// Run last: they delete an endpoint pod and make another unready.
pub(super) const FOLLOW_NAMES: [&str; 2] = [
    "endpoints follow a deleted pod within 2 s on every node",
    "endpoints follow an unready pod within 2 s on every node",
];

/// A Service as the checks reach it.
#[derive(Debug, Clone)]
pub(super) struct Svc {
    pub(super) name: &'static str,
    pub(super) ip: Ipv4Addr,
    pub(super) node_port: Option<u16>,
}

/// What one backend's run of the group made: its pods (as the agents run them, for exec) and Services.
pub(super) struct ServiceLab {
    pub(super) client: Client,
    pub(super) nodes: Vec<NodeInfo>,
    /// Endpoints, by node: `svc-a1`, `svc-a2` on the first node, `svc-b1` on the second when pods cross.
    pub(super) endpoints: Vec<TestPod>,
    /// A pod no Service selects, on the first node.
    pub(super) client_pod: TestPod,
    pub(super) web: Svc,
    pub(super) node_port: Svc,
    pub(super) affinity: Svc,
    pub(super) empty: Svc,
    pub(super) local: Svc,
    /// Whether pod traffic crosses nodes here (not on a single node, nor on backend none).
    pub(super) cross: bool,
}

impl ServiceLab {
    pub(super) fn on(&self, node: &str) -> Vec<&TestPod> {
        self.endpoints.iter().filter(|p| p.node == node).collect()
    }

    pub(super) fn names(&self) -> Vec<String> {
        self.endpoints.iter().map(objects::api_name).collect()
    }
}

/// Runs the group on `backend` when a check of it is selected; `cross` as in the fixture's `skip_cross`.
pub(super) async fn run<C: Cluster>(c: &C, r: &mut Runner, backend: Backend, cross_skip: Option<&str>) {
    let b = Some(backend);
    let all: Vec<&str> = NAMES.iter().chain(FOLLOW_NAMES.iter()).copied().collect();
    if !all.iter().any(|n| r.selected(&Runner::full_name(GROUP, b, n))) {
        return;
    }
    let client = match c.api().await {
        Ok(client) => client,
        Err(e) => {
            all.iter().for_each(|n| r.record(GROUP, b, n, CheckStatus::Error, &e.to_string()));
            return;
        }
    };
    let nodes = nodes_of(c.plan());
    let cross = cross_skip.is_none();
    let mut lab = None;
    r.run_setup(GROUP, b, "service pods Ready and Services with their endpoints", async {
        let made = objects::setup(c, &client, &nodes, cross).await?;
        let summary = format!(
            "endpoints {}; client {}; web {}, node-port {}:{}, affinity {}, empty {}, local {}",
            made.endpoints.iter().map(|p| format!("{}@{} {}", p.name, p.node, p.ip)).collect::<Vec<_>>().join(", "),
            made.client_pod.ip,
            made.web.ip,
            made.node_port.ip,
            made.node_port.node_port.unwrap_or(0),
            made.affinity.ip,
            made.empty.ip,
            made.local.ip
        );
        lab = Some(made);
        Ok(summary)
    })
    .await;
    let Some(lab) = lab else {
        all.iter().for_each(|n| r.record(GROUP, b, n, CheckStatus::Error, "the group's setup failed"));
        cleanup(&client).await;
        return;
    };
    let e = Level::Error;
    let single = (lab.nodes.len() < 2).then_some("the lab has a single node");
    r.run(GROUP, b, NAMES[0], e, checks::basic(c, &lab)).await;
    r.run(GROUP, b, NAMES[1], e, checks::multiport(c, &lab)).await;
    r.run(GROUP, b, NAMES[2], e, checks::node_port(c, &lab)).await;
    r.run(GROUP, b, NAMES[3], e, checks::affinity(c, &lab)).await;
    r.run(GROUP, b, NAMES[4], e, checks::switch_affinity(c, &lab)).await;
    r.run(GROUP, b, NAMES[5], e, checks::hairpin(c, &lab)).await;
    r.run(GROUP, b, NAMES[6], e, checks::source_ip(c, &lab)).await;
    r.run(GROUP, b, NAMES[7], e, checks::rejected(c, &lab)).await;
    r.run(GROUP, b, NAMES[8], e, super::gated(cross_skip.or(single), checks::internal_local(c, &lab))).await;
    r.run(GROUP, b, NAMES[9], e, super::gated(single, checks::esipp_node_port(c, &lab))).await;
    r.run(GROUP, b, NAMES[10], e, checks::node_to_cluster_ip(c, &lab)).await;
    r.run(GROUP, b, FOLLOW_NAMES[0], e, follow::deleted(c, &lab)).await;
    r.run(GROUP, b, FOLLOW_NAMES[1], e, follow::unready(c, &lab)).await;
    r.run_setup(GROUP, b, "service pods and Services removed", async {
        cleanup(&client).await;
        Ok("namespace deleted".to_string())
    })
    .await;
}

/// Deletes the group's pods and Services and waits until the pods are gone from the API (the agents have
/// stopped them), so that the next backend's run starts clean; then the namespace.
async fn cleanup(client: &Client) {
    let _ = objects::remove_all(client).await;
    let _ = Api::<Namespace>::all(client.clone()).delete(NAMESPACE, &DeleteParams::default()).await;
}
