//! The perf suite's Service paths (issue 15): to the cross-node pod path's own server pod through a Service
//! whose one endpoint it is, from the first node's pod by the ClusterIP (ratio to the direct pod path) and
//! from the first node by the node port on the server's node (ratio to node->node on the underlay). Each
//! ratio then tells what the service proxy (DNAT, and for the node port the masquerade kube-proxy applies to
//! traffic from off the node, and the hop into the pod) costs on otherwise the same path.
//!
//! The server pod is the suite's own static pod on the second node; its mirror in the API carries the
//! pod's labels, so a Service selects it like any pod. One endpoint, so that iperf3's control and data
//! connections reach the same server; TCP and UDP on the same port number share one node port (the API
//! server's rule, as Kubernetes'), which iperf3's UDP mode needs: its control connection is TCP.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::Client;

use super::super::api::{api_err, ready_endpoints};
use super::super::cluster::Cluster;
use super::super::poll::until;
use super::super::runner::CheckError;
use super::PERF_PORT;

/// The Service, in namespace `default` where the suite's static pods' mirrors are.
const NAME: &str = "tb-perf";
const NAMESPACE: &str = "default";
/// The label the server pod carries and the Service selects.
pub const SERVER_LABEL: (&str, &str) = ("testbed.dev/perf", "server");
/// For the EndpointSlice controller to list the server once its mirror is Ready.
const ENDPOINT_DEADLINE: Duration = Duration::from_secs(60);

/// Where the Service reaches the server.
#[derive(Debug, Clone, Copy)]
pub struct PerfService {
    pub cluster_ip: Ipv4Addr,
    pub node_port: u16,
}

fn port(protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(protocol.to_lowercase()),
        port: PERF_PORT.into(),
        target_port: Some(IntOrString::Int(PERF_PORT.into())),
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

/// Creates the Service (a leftover of an interrupted run replaced) and waits until its slice lists the
/// server at `server_ip`, ready.
pub async fn create<C: Cluster>(c: &C, server_ip: Ipv4Addr) -> Result<PerfService, CheckError> {
    let client = c.api().await?;
    remove(&client).await;
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let selector = BTreeMap::from([(SERVER_LABEL.0.to_string(), SERVER_LABEL.1.to_string())]);
    let svc = Service {
        metadata: ObjectMeta { name: Some(NAME.into()), ..Default::default() },
        spec: Some(ServiceSpec {
            type_: Some("NodePort".into()),
            selector: Some(selector),
            ports: Some(vec![port("TCP"), port("UDP")]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let made = services.create(&PostParams::default(), &svc).await.map_err(api_err("create Service tb-perf"))?;
    let spec = made.spec.unwrap_or_default();
    let cluster_ip = spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok());
    let node_ports: Vec<Option<i32>> = spec.ports.iter().flatten().map(|p| p.node_port).collect();
    let (Some(cluster_ip), [Some(tcp), Some(udp)]) = (cluster_ip, node_ports.as_slice()) else {
        return Err(CheckError::Fail(format!(
            "Service tb-perf lacks its addresses: clusterIP {:?}, node ports {node_ports:?}",
            spec.cluster_ip
        )));
    };
    if tcp != udp {
        return Err(CheckError::Fail(format!("Service tb-perf's TCP and UDP ports got node ports {tcp} and {udp}")));
    }
    let node_port = u16::try_from(*tcp).map_err(|_| CheckError::Fail(format!("node port {tcp}")))?;
    until(&format!("Service {NAME} lists its server {server_ip}"), ENDPOINT_DEADLINE, || async {
        let ready = ready_endpoints(&client, NAMESPACE, NAME).await?;
        Ok((ready == [server_ip.to_string()]).then_some(()))
    })
    .await?;
    Ok(PerfService { cluster_ip, node_port })
}

/// Deletes the Service (nothing when there is none).
pub async fn delete<C: Cluster>(c: &C) -> Result<String, CheckError> {
    let client = c.api().await?;
    remove(&client).await;
    Ok(format!("Service {NAMESPACE}/{NAME} deleted"))
}

async fn remove(client: &Client) {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let _ = services.delete(NAME, &DeleteParams::default()).await;
}
