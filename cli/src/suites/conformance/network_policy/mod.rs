//! The `network-policy` group: NetworkPolicy as Kubernetes' netpol e2e tests check it. A model of four pods
//! in two labelled namespaces across two nodes (`model.rs`); per check, a policy of the Kubernetes test of the
//! same name and the whole reachability matrix it must give, probed until it holds (`cases.rs`). Runs on
//! every backend: half the model's pairs cross nodes where pod traffic can, all are on one node where not.

mod cases;
mod model;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams};
use kube::Client;
use testbed_api::results::CheckStatus;
use testbed_api::Backend;

use super::super::cluster::{nodes_of, Cluster};
use super::super::runner::{Level, Runner};

const GROUP: &str = "network-policy";

/// The group's check names, in report order (tests/conformance_e2e.rs counts them).
const NAMES: [&str; 16] = [
    "every pod reaches every other pod before any policy",
    "should support a 'default-deny-ingress' policy",
    "should support a 'default-deny-all' policy",
    "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
    "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
    "should enforce policy based on PodSelector and NamespaceSelector",
    "should enforce policy based on Ports",
    "should enforce policy based on a port range (endPort)",
    "should allow ingress access on one named port",
    "should allow egress access on one named port",
    "should enforce multiple, stacked policies with overlapping podSelectors",
    "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
    "should enforce except clause while egress access to server in CIDR block",
    "should allow ingress access from updated pod",
    "should stop enforcing policies after they are deleted",
    "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
];

/// Runs the group on `backend` when a check of it is selected; `cross_skip` as the fixture's `skip_cross`
/// (then the model stays on the first node).
pub(super) async fn run<C: Cluster>(c: &C, r: &mut Runner, backend: Backend, cross_skip: Option<&str>) {
    let b = Some(backend);
    if !NAMES.iter().any(|n| r.selected(&Runner::full_name(GROUP, b, n))) {
        return;
    }
    let client = match c.api().await {
        Ok(client) => client,
        Err(e) => {
            NAMES.iter().for_each(|n| r.record(GROUP, b, n, CheckStatus::Error, &e.to_string()));
            return;
        }
    };
    let nodes = nodes_of(c.plan());
    let mut made = None;
    r.run_setup(GROUP, b, "model pods serving in namespaces x and y", async {
        let m = model::setup(c, &client, &nodes, cross_skip.is_none()).await?;
        let summary = m.pods.iter().map(|(p, t)| format!("{p}@{} {}", t.node, t.ip)).collect::<Vec<_>>().join(", ");
        made = Some(m);
        Ok(summary)
    })
    .await;
    let Some(m) = made else {
        NAMES.iter().for_each(|n| r.record(GROUP, b, n, CheckStatus::Error, "the group's setup failed"));
        cleanup(&client).await;
        return;
    };
    let pod_cidr = c.plan().cluster.pod_cidr.to_string();
    let e = Level::Error;
    r.run(GROUP, b, NAMES[0], e, cases::baseline(c, &m)).await;
    r.run(GROUP, b, NAMES[1], e, cases::default_deny_ingress(c, &m)).await;
    r.run(GROUP, b, NAMES[2], e, cases::default_deny_all(c, &m)).await;
    r.run(GROUP, b, NAMES[3], e, cases::from_pod_selector(c, &m)).await;
    r.run(GROUP, b, NAMES[4], e, cases::from_namespace_selector(c, &m)).await;
    r.run(GROUP, b, NAMES[5], e, cases::from_pod_and_namespace_selector(c, &m)).await;
    r.run(GROUP, b, NAMES[6], e, cases::ports(c, &m)).await;
    r.run(GROUP, b, NAMES[7], e, cases::port_range(c, &m)).await;
    r.run(GROUP, b, NAMES[8], e, cases::ingress_named_port(c, &m)).await;
    r.run(GROUP, b, NAMES[9], e, cases::egress_named_port(c, &m)).await;
    r.run(GROUP, b, NAMES[10], e, cases::stacked(c, &m)).await;
    r.run(GROUP, b, NAMES[11], e, cases::egress_to_pod_and_namespace(c, &m)).await;
    r.run(GROUP, b, NAMES[12], e, cases::egress_except(c, &m, &pod_cidr)).await;
    r.run(GROUP, b, NAMES[13], e, cases::updated_pod(c, &m)).await;
    r.run(GROUP, b, NAMES[14], e, cases::deleted_policy_stops(c, &m)).await;
    r.run(GROUP, b, NAMES[15], e, cases::any_port_of_a_protocol(c, &m)).await;
    r.run_setup(GROUP, b, "model pods and namespaces removed", async {
        cleanup(&client).await;
        Ok("namespaces deleted".to_string())
    })
    .await;
}

/// Deletes the model's policies and pods, then its namespaces, so that the next backend starts clean.
async fn cleanup(client: &Client) {
    let _ = model::remove_all(client).await;
    for (ns, _) in model::NAMESPACES {
        let _ = Api::<Namespace>::all(client.clone()).delete(ns, &DeleteParams::default()).await;
    }
}
