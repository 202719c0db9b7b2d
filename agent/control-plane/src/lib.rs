//! testbed's cluster control plane: an API server speaking the Kubernetes wire format (REST paths,
//! discovery, list/watch with resourceVersion, Status errors, JSON merge patch) for Namespace, Node, Pod,
//! Event, Lease, ReplicaSet and Deployment, stored in etcd. Runs as `testbed-agent apiserver` on a lab's
//! control-plane node; kubectl and kube-rs clients talk to it with the kubeconfig [`kubeconfig`] writes.
//!
//! Layout: `store` (etcd, behind the `Store` trait with an in-memory fake for tests), `apiserver` (paths,
//! objects, watch, discovery, Status errors), `validation` (schemas and checks), `resources` (what is
//! served and where it is kept).

pub mod apiserver;
pub mod client;
mod connector;
pub mod controllers;
mod kubeconfig;
mod meta;
pub mod printing;
pub mod resources;
pub mod store;
pub mod tls;
pub mod validation;

use std::net::SocketAddr;
use std::time::Duration;

pub use kubeconfig::kubeconfig;

/// How `testbed-agent apiserver` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to serve on: in a lab, the node's underlay IP (never the management NIC).
    pub listen: SocketAddr,
    /// The client URLs of etcd's members, e.g. `https://10.0.0.11:2379` (tried in turn, [`store::etcd`]).
    pub etcd: Vec<String>,
    /// How to reach `https://` members; None for `http://` ones (the tests' etcd on loopback).
    pub etcd_tls: Option<EtcdTls>,
    /// The lab's bearer token; every request must carry it.
    pub token: String,
    /// The server's certificate chain, PEM (signed by the lab CA of [`tls::Credentials`]).
    pub cert_pem: Vec<u8>,
    /// The server's private key, PEM.
    pub key_pem: Vec<u8>,
    /// Where Services' cluster IPs come from (`--service-cluster-ip-range`).
    pub service_cidr: ipnet::Ipv4Net,
}

/// The API server's TLS towards etcd, PEM: the lab CA and the client certificate etcd asks for.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA that signed etcd's certificate.
    pub ca_pem: Vec<u8>,
    /// The API server's client certificate.
    pub cert_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The certificate or key.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The listening socket.
    #[error("listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// The etcd client (no endpoint).
    #[error("etcd: {0}")]
    Store(store::StoreError),
    /// Creating the initial namespaces (etcd unreachable, most likely).
    #[error("bootstrap: {0}")]
    Bootstrap(apiserver::ApiError),
    /// The HTTP server itself.
    #[error("http server: {0}")]
    Http(std::io::Error),
}

/// How long the API server waits for etcd to answer before it gives up (exit 3, and its supervisor starts it
/// again): `up` starts both at once, and etcd's first start under TCG takes seconds.
const STORE_WAIT: Duration = Duration::from_secs(60);
const STORE_RETRY: Duration = Duration::from_millis(200);

/// Creates the initial namespaces once etcd answers, as kube-apiserver waits for its storage: exiting at the
/// first refusal made the supervisor's 1 s restart and a second start of the binary the API's delay behind etcd.
async fn bootstrap_once_stored<S: store::Store>(server: &apiserver::Server<S>) -> Result<(), apiserver::ApiError> {
    let deadline = tokio::time::Instant::now() + STORE_WAIT;
    let mut said = false;
    loop {
        match server.bootstrap().await {
            Err(e)
                if e.code == axum::http::StatusCode::SERVICE_UNAVAILABLE && tokio::time::Instant::now() < deadline =>
            {
                if !std::mem::replace(&mut said, true) {
                    tracing::info!(error = %e.message, "waiting for etcd");
                }
                tokio::time::sleep(STORE_RETRY).await;
            }
            done => return done,
        }
    }
}

/// Serves the API until `shutdown` completes.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let acceptor = tls::acceptor(&config.cert_pem, &config.key_pem)?;
    let etcd_tls = match &config.etcd_tls {
        Some(t) => Some(tls::client_config(&t.ca_pem, Some((&t.cert_pem, &t.key_pem)))?),
        None => None,
    };
    let etcd = store::etcd::Etcd::new(&config.etcd, etcd_tls).map_err(ServeError::Store)?;
    let server = apiserver::Server::new(etcd, config.token, config.service_cidr);
    bootstrap_once_stored(&server).await.map_err(ServeError::Bootstrap)?;
    let listen_err = |e| ServeError::Listen(config.listen, e);
    let tcp = tokio::net::TcpListener::bind(config.listen).await.map_err(listen_err)?;
    let listener = tls::TlsListener::new(tcp, acceptor).map_err(listen_err)?;
    tracing::info!(listen = %config.listen, etcd = ?config.etcd, "apiserver serving");
    axum::serve(listener, apiserver::router(server)).with_graceful_shutdown(shutdown).await.map_err(ServeError::Http)
}
