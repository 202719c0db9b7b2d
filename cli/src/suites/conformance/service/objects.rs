//! The group's API objects: endpoint pods pinned to nodes, a client pod, the Services, and waiting until
//! the EndpointSlice controller has their endpoints and the proxies answer.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::Client;

use super::super::super::api::{api_err, ready_endpoints};
use super::super::super::cluster::{Cluster, NodeInfo};
use super::super::super::harness::{evidence, pexec, TestPod};
pub(super) use super::super::super::poll::until;
use super::super::super::probe::{self, HTTP_PORT};
use super::super::super::runner::CheckError;
use super::super::control_plane::{is_ready, namespace, pinned};
use super::{ServiceLab, Svc, NAMESPACE};

/// The second port each endpoint serves (`<name>-alt`), for the multiport Service.
pub(super) const ALT_PORT: u16 = 8081;
/// A port whose one-connection server is a container of its own: connecting to it ends that container,
/// which makes the pod unready (the kubelet's Ready condition) while its web servers go on.
pub(super) const UNREADY_PORT: u16 = 9999;
const APP: &str = "svc-web";
/// For what needs pods started (several on 1-vCPU TCG guests).
const PODS_DEADLINE: Duration = Duration::from_secs(180);

/// The API name of a pod the group made (the agent runs it as `node_pod_name(NAMESPACE, name)`).
pub(super) fn api_name(p: &TestPod) -> String {
    p.status.name.clone()
}

fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NAMESPACE.into()),
        labels: Some(labels),
        ..Default::default()
    }
}

fn container(name: &str, command: Vec<String>) -> Container {
    Container { name: name.into(), command: Some(command), ..Default::default() }
}

/// Serves its name on HTTP_PORT (and the client's address at /cgi-bin/peer), `<name>-alt` on ALT_PORT.
fn endpoint_pod(name: &str, node: &str) -> Pod {
    let alt = format!(
        "d=/tmp/tb-alt-{name}; mkdir -p $d && echo {name}-alt > $d/index.html && exec busybox httpd -f -p {ALT_PORT} -h $d"
    );
    let containers = vec![
        container("web", probe::web_command(name)),
        container("alt", probe::sh(alt)),
        container("ready", probe::sh(format!("exec busybox nc -l -p {UNREADY_PORT}"))),
    ];
    pinned(meta(name, &[("app", APP)]), node, containers)
}

fn port(name: &str, port: i32, target: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(target.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn service(name: &str, selector: &str, ports: Vec<ServicePort>, change: impl FnOnce(&mut ServiceSpec)) -> Service {
    let mut spec = ServiceSpec {
        selector: Some(BTreeMap::from([("app".to_string(), selector.to_string())])),
        ports: Some(ports),
        ..Default::default()
    };
    change(&mut spec);
    Service { metadata: meta(name, &[]), spec: Some(spec), ..Default::default() }
}

/// Creates everything, waits for the pods to be Ready and serving and for the web Service to answer.
pub(super) async fn setup<C: Cluster>(
    c: &C,
    client: &Client,
    nodes: &[NodeInfo],
    cross: bool,
) -> Result<ServiceLab, CheckError> {
    remove_all(client).await?;
    namespace(client, NAMESPACE).await?;
    let a = nodes.first().ok_or_else(|| CheckError::Infra("the plan has no nodes".into()))?;
    let mut wanted = vec![(a, "svc-a1"), (a, "svc-a2")];
    if let (true, Some(b)) = (cross, nodes.get(1)) {
        wanted.push((b, "svc-b1"));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    for (node, name) in &wanted {
        pods.create(&PostParams::default(), &endpoint_pod(name, &node.name)).await.map_err(api_err("create pod"))?;
    }
    let sleeper = container("main", vec!["sleep".into(), "infinity".into()]);
    let client_meta = meta("svc-client", &[("app", "svc-client")]);
    pods.create(&PostParams::default(), &pinned(client_meta, &a.name, vec![sleeper]))
        .await
        .map_err(api_err("create pod"))?;

    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let http = || port("http", 80, HTTP_PORT);
    let specs = [
        service("web", APP, vec![http(), port("alt", 81, ALT_PORT)], |_| {}),
        service("web-np", APP, vec![http()], |s| s.type_ = Some("NodePort".into())),
        service("web-aff", APP, vec![http()], |s| s.session_affinity = Some("ClientIP".into())),
        service("web-empty", "svc-nobody", vec![http()], |_| {}),
        service("web-local", APP, vec![http()], |s| {
            s.type_ = Some("NodePort".into());
            s.internal_traffic_policy = Some("Local".into());
            s.external_traffic_policy = Some("Local".into());
        }),
    ];
    let mut made = Vec::new();
    for spec in &specs {
        let s = services.create(&PostParams::default(), spec).await.map_err(api_err("create service"))?;
        made.push(svc_of(&s)?);
    }
    let [web, node_port, affinity, empty, local] =
        <[Svc; 5]>::try_from(made).map_err(|_| CheckError::Infra("five Services were made".into()))?;

    let all: Vec<&str> = wanted.iter().map(|(_, n)| *n).chain(["svc-client"]).collect();
    until("the service pods are Ready", PODS_DEADLINE, || async {
        let list = pods.list(&ListParams::default()).await.map_err(api_err("list pods"))?;
        let ready = list.items.iter().filter(|p| is_ready(p)).count();
        Ok((ready == all.len()).then_some(()))
    })
    .await?;
    let mut test_pods = Vec::new();
    for (node, name) in wanted.iter().map(|(n, p)| (n.name.as_str(), *p)).chain([(a.name.as_str(), "svc-client")]) {
        let node_pod = testbed_api::objects::node_pod_name(NAMESPACE, name);
        let mut status = c.get_pod(node, &node_pod).await?;
        let ip = status.ip.ok_or_else(|| CheckError::Infra(format!("node {node}: pod {node_pod} has no IP")))?;
        // The API name, for the checks' messages and the answers (`api_name`); exec uses the node's.
        status.name = name.into();
        test_pods.push(TestPod { name: node_pod, node: node.into(), ip, status });
    }
    let client_pod = test_pods.pop().ok_or_else(|| CheckError::Infra("no client pod".into()))?;
    let lab = ServiceLab {
        client: client.clone(),
        nodes: nodes.to_vec(),
        endpoints: test_pods,
        client_pod,
        web,
        node_port,
        affinity,
        empty,
        local,
        cross,
    };
    wait_slices(client, "web", lab.endpoints.len()).await?;
    // Each endpoint serves before any check counts on it.
    for p in &lab.endpoints {
        let cmd = probe::retrying(&probe::http_get_within(p.ip, "/", 2), 100);
        let r = pexec(c, &lab.client_pod, None, &cmd, 60).await?;
        if r.exit_code != 0 {
            return Err(CheckError::Infra(format!("pod {} never served HTTP\n{}", p.name, evidence(&cmd, &r))));
        }
    }
    Ok(lab)
}

fn svc_of(s: &Service) -> Result<Svc, CheckError> {
    let name = match s.metadata.name.as_deref() {
        Some("web") => "web",
        Some("web-np") => "web-np",
        Some("web-aff") => "web-aff",
        Some("web-empty") => "web-empty",
        _ => "web-local",
    };
    let spec = s.spec.clone().unwrap_or_default();
    let ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| CheckError::Fail(format!("Service {name} has no clusterIP: {:?}", spec.cluster_ip)))?;
    let node_port = spec.ports.iter().flatten().find_map(|p| p.node_port).and_then(|p| u16::try_from(p).ok());
    Ok(Svc { name, ip, node_port })
}

async fn wait_slices(client: &Client, name: &str, count: usize) -> Result<(), CheckError> {
    until(&format!("Service {name} has {count} ready endpoints"), PODS_DEADLINE, || async {
        Ok((ready_endpoints(client, NAMESPACE, name).await?.len() == count).then_some(()))
    })
    .await
}

/// Deletes the group's pods and Services and waits until no pod of it is left.
pub(super) async fn remove_all(client: &Client) -> Result<(), CheckError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let now = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    for s in services.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
        let _ = services.delete(s.metadata.name.as_deref().unwrap_or_default(), &DeleteParams::default()).await;
    }
    for p in pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
        let _ = pods.delete(p.metadata.name.as_deref().unwrap_or_default(), &now).await;
    }
    until("the service pods are gone", PODS_DEADLINE, || async {
        Ok(pods.list(&ListParams::default()).await.map(|l| l.items.is_empty()).unwrap_or(true).then_some(()))
    })
    .await
}
