//! The cases: each is a NetworkPolicy of Kubernetes' netpol e2e test of the same name
//! (test/e2e/network/netpol/network_policy.go) and the matrix it must give on the model.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Client;

use super::super::super::api::api_err;
use super::super::super::cluster::Cluster;
use super::super::super::poll::until;
use super::super::super::probe::HTTP_PORT;
use super::super::super::runner::{CheckError, CheckOutcome};
use super::model::{
    api_namespace, expect, matrix, peer, port_name, protocol, Matrix, Model, Peer, ALT_PORT, NAMESPACES, UDP_PORT,
};

/// How long a policy change may take to reach every node's kernel before the matrix must hold: the API to
/// kernel path measured 68 ms (docs/benchmarks.md); probe rounds under TCG take seconds of their own.
const TAKES_EFFECT: Duration = Duration::from_secs(20);

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    let labels: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    LabelSelector { match_labels: Some(labels), ..Default::default() }
}

fn pods(pairs: &[(&str, &str)]) -> NetworkPolicyPeer {
    NetworkPolicyPeer { pod_selector: Some(selector(pairs)), ..Default::default() }
}

fn namespaces(pairs: &[(&str, &str)]) -> NetworkPolicyPeer {
    NetworkPolicyPeer { namespace_selector: Some(selector(pairs)), ..Default::default() }
}

/// A policy in namespace `x` (the model's first), selecting `pod` (None: every pod of it).
fn policy(name: &str, pod: Option<&str>, types: &[&str], change: impl FnOnce(&mut NetworkPolicySpec)) -> NetworkPolicy {
    let mut spec = NetworkPolicySpec {
        pod_selector: Some(pod.map(|p| selector(&[("pod", p)])).unwrap_or_default()),
        policy_types: Some(types.iter().map(|t| t.to_string()).collect()),
        ..Default::default()
    };
    change(&mut spec);
    let metadata =
        ObjectMeta { name: Some(name.into()), namespace: Some(NAMESPACES[0].0.into()), ..Default::default() };
    NetworkPolicy { metadata, spec: Some(spec) }
}

fn ingress_from(from: Vec<NetworkPolicyPeer>) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule { from: Some(from), ports: None }
}

/// Makes the policies and waits until every node of the model enforces them, so that the first probe round
/// already sees them (a round that races the change costs a blocked probe's timeout, and most of the group's
/// time went into such rounds: docs/benchmarks.md, "CI").
async fn create<C: Cluster>(c: &C, m: &Model, policies: &[&NetworkPolicy]) -> Result<(), CheckError> {
    let api: Api<NetworkPolicy> = Api::namespaced(m.client.clone(), NAMESPACES[0].0);
    let mut created = Vec::new();
    for p in policies {
        let made = api.create(&PostParams::default(), p).await.map_err(api_err("create networkpolicy"))?;
        let version = made.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        created.push((format!("{}/{}", NAMESPACES[0].0, made.metadata.name.unwrap_or_default()), version));
    }
    let names: Vec<&str> = created.iter().map(|(name, _)| name.as_str()).collect();
    every_node(c, m, &format!("{} enforced", names.join(", ")), |built_from| {
        created.iter().all(|(name, version)| {
            built_from.get(name).and_then(|v| v.parse::<u64>().ok()).is_some_and(|v| v >= *version)
        })
    })
    .await
}

/// Polls every node of the model until its policy table is `done` with what it is built from (the agent's
/// `GET /v1/network-policies`, `built_from`); a Fail naming the node that is not within [`TAKES_EFFECT`].
async fn every_node<C: Cluster>(
    c: &C,
    m: &Model,
    what: &str,
    done: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Result<(), CheckError> {
    let mut nodes: Vec<&str> = m.pods.values().map(|p| p.node.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    for node in nodes {
        until(&format!("{what} on {node}"), TAKES_EFFECT, || async {
            let status = c.network_policy_status(node).await.map_err(|e| CheckError::Infra(e.to_string()))?;
            Ok(done(&status.built_from).then_some(()))
        })
        .await?;
    }
    Ok(())
}

/// Deletes every policy of the model's namespaces.
pub(super) async fn delete_policies(client: &Client) -> Result<(), CheckError> {
    for (ns, _) in NAMESPACES {
        let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            // A namespace not made yet has none.
            Err(_) => continue,
        };
        for p in list {
            api.delete(p.metadata.name.as_deref().unwrap_or_default(), &DeleteParams::default())
                .await
                .map_err(api_err("delete networkpolicy"))?;
        }
    }
    Ok(())
}

/// Deletes every policy of the model's namespaces and waits until no node enforces any of them (the next
/// case starts from an open model).
async fn delete_all<C: Cluster>(c: &C, m: &Model) -> Result<(), CheckError> {
    delete_policies(&m.client).await?;
    let ours = |name: &String| NAMESPACES.iter().any(|(ns, _)| name.starts_with(&format!("{ns}/")));
    every_node(c, m, "the model's policies no longer enforced", |built_from| !built_from.keys().any(ours)).await
}

/// Makes `policies`, checks the matrix, and deletes them again whatever the outcome.
async fn case<C: Cluster>(c: &C, m: &Model, policies: &[NetworkPolicy], expected: Matrix) -> CheckOutcome {
    let outcome = async {
        create(c, m, &policies.iter().collect::<Vec<_>>()).await?;
        expect(c, m, &expected, TAKES_EFFECT).await
    }
    .await;
    delete_all(c, m).await?;
    outcome
}

fn x_a() -> Peer {
    peer("x", "a")
}

pub(super) async fn default_deny_ingress<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    let p = policy("deny-ingress", None, &["Ingress"], |s| s.ingress = Some(vec![]));
    case(c, m, &[p], matrix(|_, to, _| to.ns != "x")).await
}

pub(super) async fn default_deny_all<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    let p = policy("deny-all", None, &["Ingress", "Egress"], |_| {});
    case(c, m, &[p], matrix(|from, to, _| from.ns != "x" && to.ns != "x")).await
}

pub(super) async fn from_pod_selector<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    let p = policy("x-a-from-b", Some("a"), &["Ingress"], |s| {
        s.ingress = Some(vec![ingress_from(vec![pods(&[("pod", "b")])])])
    });
    case(c, m, &[p], matrix(|from, to, _| *to != x_a() || *from == peer("x", "b"))).await
}

pub(super) async fn from_namespace_selector<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    let p = policy("x-a-from-y", Some("a"), &["Ingress"], |s| {
        s.ingress = Some(vec![ingress_from(vec![namespaces(&[("ns", "y")])])])
    });
    case(c, m, &[p], matrix(|from, to, _| *to != x_a() || from.ns == "y")).await
}

pub(super) async fn from_pod_and_namespace_selector<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    let both = NetworkPolicyPeer {
        pod_selector: Some(selector(&[("pod", "b")])),
        namespace_selector: Some(selector(&[("ns", "y")])),
        ..Default::default()
    };
    let p = policy("x-a-from-y-b", Some("a"), &["Ingress"], |s| s.ingress = Some(vec![ingress_from(vec![both])]));
    case(c, m, &[p], matrix(|from, to, _| *to != x_a() || *from == peer("y", "b"))).await
}

/// TCP `port`, up to `end` when given (endPort).
fn tcp(port: u16, end: Option<u16>) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port.into())),
        protocol: Some("TCP".into()),
        end_port: end.map(i32::from),
    }
}

/// The container port named as the model's pods name `port`; the protocol left to its default (TCP).
fn named(port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort { port: Some(IntOrString::String(port_name(port))), protocol: None, end_port: None }
}

fn ingress_on(ports: Vec<NetworkPolicyPort>) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule { from: None, ports: Some(ports) }
}

pub(super) async fn ports<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    let p = policy("x-a-alt-only", Some("a"), &["Ingress"], |s| {
        s.ingress = Some(vec![ingress_on(vec![tcp(ALT_PORT, None)])])
    });
    case(c, m, &[p], matrix(|_, to, port| *to != x_a() || port == ALT_PORT)).await
}

/// x/a open on any port of one protocol only (a port entry with a protocol and no port): UDP in, TCP not.
pub(super) async fn any_port_of_a_protocol<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    let udp = NetworkPolicyPort { port: None, protocol: Some("UDP".into()), end_port: None };
    let p = policy("x-a-udp-only", Some("a"), &["Ingress"], |s| s.ingress = Some(vec![ingress_on(vec![udp])]));
    case(c, m, &[p], matrix(|_, to, port| *to != x_a() || port == UDP_PORT)).await
}

/// A range that ends at the HTTP port (endPort is inclusive) and does not reach the alternate one.
pub(super) async fn port_range<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    let range = tcp(HTTP_PORT - 1, Some(HTTP_PORT));
    let p = policy("x-a-range", Some("a"), &["Ingress"], |s| s.ingress = Some(vec![ingress_on(vec![range])]));
    case(c, m, &[p], matrix(|_, to, port| *to != x_a() || port == HTTP_PORT)).await
}

/// Every pod of `x` open on the alternate port by its name only.
pub(super) async fn ingress_named_port<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    let p = policy("x-alt-by-name", None, &["Ingress"], |s| s.ingress = Some(vec![ingress_on(vec![named(ALT_PORT)])]));
    case(c, m, &[p], matrix(|_, to, port| to.ns != "x" || port == ALT_PORT)).await
}

/// Every pod of `x` may connect out to the HTTP port by its name only: the name is the destination pod's.
pub(super) async fn egress_named_port<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    let p = policy("x-egress-http-by-name", None, &["Egress"], |s| {
        s.egress = Some(vec![NetworkPolicyEgressRule { to: None, ports: Some(vec![named(HTTP_PORT)]) }])
    });
    case(c, m, &[p], matrix(|from, _, port| from.ns != "x" || port == HTTP_PORT)).await
}

/// Two policies on x/a, each allowing `y` one port: what they allow together is the union.
pub(super) async fn stacked<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    let from_y_on = |name: &str, port: u16| {
        policy(name, Some("a"), &["Ingress"], |s| {
            s.ingress = Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![namespaces(&[("ns", "y")])]),
                ports: Some(vec![tcp(port, None)]),
            }])
        })
    };
    let outcome = async {
        create(c, m, &[&from_y_on("x-a-from-y-alt", ALT_PORT)]).await?;
        let one =
            expect(c, m, &matrix(|from, to, port| *to != x_a() || (from.ns == "y" && port == ALT_PORT)), TAKES_EFFECT)
                .await?;
        create(c, m, &[&from_y_on("x-a-from-y-http", HTTP_PORT)]).await?;
        let both = matrix(|from, to, port| *to != x_a() || (from.ns == "y" && protocol(port) == "TCP"));
        let both = expect(c, m, &both, TAKES_EFFECT).await?;
        Ok(format!("one policy: {one}; both: {both}"))
    }
    .await;
    delete_all(c, m).await?;
    outcome
}

pub(super) async fn egress_to_pod_and_namespace<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    let to = NetworkPolicyPeer {
        pod_selector: Some(selector(&[("pod", "b")])),
        namespace_selector: Some(selector(&[("ns", "y")])),
        ..Default::default()
    };
    let p = policy("x-a-to-y-b", Some("a"), &["Egress"], |s| {
        s.egress = Some(vec![NetworkPolicyEgressRule { to: Some(vec![to]), ports: None }])
    });
    case(c, m, &[p], matrix(|from, to, _| *from != x_a() || *to == peer("y", "b"))).await
}

pub(super) async fn egress_except<C: Cluster>(c: &C, m: &Model, pod_cidr: &str) -> CheckOutcome {
    let y_b = peer("y", "b");
    let excepted: Ipv4Addr = m.pods.get(&y_b).map(|p| p.ip).ok_or_else(|| CheckError::Infra("no y/b".into()))?;
    let block = IPBlock { cidr: pod_cidr.to_string(), except: Some(vec![format!("{excepted}/32")]) };
    let to = NetworkPolicyPeer { ip_block: Some(block), ..Default::default() };
    let p = policy("x-a-except-y-b", Some("a"), &["Egress"], |s| {
        s.egress = Some(vec![NetworkPolicyEgressRule { to: Some(vec![to]), ports: None }])
    });
    case(c, m, &[p], matrix(|from, to, _| *from != x_a() || *to != y_b)).await
}

/// A policy allowing pods labelled `role: updated`: x/a is closed until x/b gets the label.
pub(super) async fn updated_pod<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    let p = policy("x-a-from-updated", Some("a"), &["Ingress"], |s| {
        s.ingress = Some(vec![ingress_from(vec![pods(&[("role", "updated")])])])
    });
    let relabel = |role: Option<&str>| {
        let pods: Api<Pod> = Api::namespaced(m.client.clone(), api_namespace(&peer("x", "b")));
        let patch = serde_json::json!({"metadata": {"labels": {"role": role}}});
        async move {
            pods.patch("b", &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(api_err("label pod x/b"))
        }
    };
    let outcome = async {
        create(c, m, &[&p]).await?;
        let before = expect(c, m, &matrix(|_, to, _| *to != x_a()), TAKES_EFFECT).await?;
        relabel(Some("updated")).await?;
        let after = expect(c, m, &matrix(|from, to, _| *to != x_a() || *from == peer("x", "b")), TAKES_EFFECT).await?;
        Ok(format!("before the label: {before}; after: {after}"))
    }
    .await;
    relabel(None).await?;
    delete_all(c, m).await?;
    outcome
}

pub(super) async fn deleted_policy_stops<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    let p = policy("deny-ingress", None, &["Ingress"], |s| s.ingress = Some(vec![]));
    create(c, m, &[&p]).await?;
    let denied = expect(c, m, &matrix(|_, to, _| to.ns != "x"), TAKES_EFFECT).await;
    delete_all(c, m).await?;
    let denied = denied?;
    let open = expect(c, m, &matrix(|_, _, _| true), TAKES_EFFECT).await?;
    Ok(format!("with the policy: {denied}; deleted: {open}"))
}

/// Every pair connects on every port, TCP and UDP, before any policy (the model works at all).
pub(super) async fn baseline<C: Cluster>(c: &C, m: &Model) -> CheckOutcome {
    expect(c, m, &matrix(|_, _, _| true), TAKES_EFFECT).await
}
