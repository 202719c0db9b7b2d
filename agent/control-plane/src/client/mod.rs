//! A client of the API server for the node agents (the kubelet role): HTTPS trusting only the lab's CA, the
//! lab's bearer token, and the verbs an agent needs on typed objects: get, list (with the revision it was
//! read at), watch from a revision (`watch.rs`, with a list-then-watch stream that re-lists when the
//! revision is too old), create, update, JSON merge patch, delete, and the `/status` subresources.
//!
//! Over the hyper client already in the tree (`crate::connector` adds TLS), not kube-rs: kube-rs would bring
//! k8s-openapi into the static agent (+1.9 MB for the types alone, docs/architecture.md).

pub mod paths;
mod watch;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use testbed_api::objects::{
    Binding, Deployment, EndpointSlice, Event, Lease, Namespace, NetworkPolicy, Node, ObjectMeta, Pod, ReplicaSet,
    Service, Status,
};

use crate::connector::error_chain;
pub use crate::meta::{now_rfc3339, now_rfc3339_micro, now_seconds, parse_rfc3339};
pub use watch::{list_watch, Change, WatchEvent};

/// A request that takes longer has lost its server (watches have their own, longer deadline).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA PEM holds no usable certificate.
    #[error("TLS: {0}")]
    Tls(String),
    /// No server URL was given.
    #[error("no API server URL given")]
    NoServer,
    /// No server could be reached, or the connection broke before an answer.
    #[error("API server unreachable: {0}")]
    Unreachable(String),
    /// The server answered with an error `Status` (404 NotFound, 409 Conflict, 410 Expired, ...).
    #[error("{method} {path}: {} {}: {}", .status.code, .status.reason, .status.message)]
    Api {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// The server's Status.
        status: Box<Status>,
    },
    /// The answer did not decode as the expected object.
    #[error("decoding the answer to {path}: {message}")]
    Decode {
        /// The request's path.
        path: String,
        /// What did not fit.
        message: String,
    },
}

impl ClientError {
    /// The HTTP code of an API error.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(status.code),
            _ => None,
        }
    }
    /// 404: the object is not there.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }
    /// 409: a stale resourceVersion, or a create of an existing object.
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }
    /// 410: the revision a watch was to resume from is compacted; list again.
    pub fn is_expired(&self) -> bool {
        self.code() == Some(410)
    }
}

/// A kind the client reads and writes: it has Kubernetes `metadata`.
pub trait Object: Serialize + DeserializeOwned + Send + 'static {
    /// The object's metadata.
    fn metadata(&self) -> &ObjectMeta;
}

macro_rules! object {
    ($($t:ty),*) => {$(impl Object for $t {
        fn metadata(&self) -> &ObjectMeta {
            &self.metadata
        }
    })*};
}
object!(Pod, Node, Lease, Namespace, Event, ReplicaSet, Deployment, Service, EndpointSlice, NetworkPolicy);

/// A list answer: the objects and the revision they were read at (a watch from it misses nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectList<T> {
    /// The objects.
    pub items: Vec<T>,
    /// The revision of the read.
    pub resource_version: String,
}

#[derive(Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
struct RawList<T> {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    items: Vec<T>,
}

/// A connection to the lab's API servers (tried in order; the one that last answered first).
pub struct Client {
    servers: Vec<String>,
    token: String,
    http: HyperClient<crate::connector::Connector, Full<Bytes>>,
    current: AtomicUsize,
}

impl Client {
    /// A client of `servers` (`https://10.0.0.11:6443`) trusting only `ca_pem`, sending `token`.
    pub fn new(servers: &[String], ca_pem: &str, token: &str) -> Result<Self, ClientError> {
        if servers.is_empty() {
            return Err(ClientError::NoServer);
        }
        let tls = crate::tls::client_config(ca_pem.as_bytes(), None).map_err(|e| ClientError::Tls(e.to_string()))?;
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(crate::connector::Connector::new(Some(tls)));
        let servers = servers.iter().map(|s| s.trim_end_matches('/').to_string()).collect();
        Ok(Self { servers, token: token.to_string(), http, current: AtomicUsize::new(0) })
    }

    /// The server the next request goes to first.
    pub fn server(&self) -> &str {
        &self.servers[self.current.load(Ordering::Relaxed) % self.servers.len()]
    }

    /// Sends a request to the first server that accepts the connection; the answer's head and body.
    async fn send(
        &self,
        method: &Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Response<Incoming>, ClientError> {
        let first = self.current.load(Ordering::Relaxed);
        let mut last_error = String::new();
        for i in 0..self.servers.len() {
            let idx = (first + i) % self.servers.len();
            let server = &self.servers[idx];
            let mut req = Request::builder()
                .method(method.clone())
                .uri(format!("{server}{path}"))
                .header(AUTHORIZATION, format!("Bearer {}", self.token))
                .header(ACCEPT, "application/json");
            let body = match &body {
                Some((bytes, content_type)) => {
                    req = req.header(CONTENT_TYPE, *content_type);
                    Full::new(Bytes::from(bytes.clone()))
                }
                None => Full::new(Bytes::new()),
            };
            let req = req.body(body).map_err(|e| ClientError::Unreachable(format!("{server}{path}: {e}")))?;
            match self.http.request(req).await {
                Ok(resp) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(resp);
                }
                // Only a refused connection moves on: a request that was sent may have been applied.
                Err(e) if e.is_connect() => last_error = format!("{server}: {}", error_chain(&e)),
                Err(e) => return Err(ClientError::Unreachable(format!("{server}: {}", error_chain(&e)))),
            }
        }
        Err(ClientError::Unreachable(last_error))
    }

    /// A request answered with JSON: the decoded object, or the error Status.
    async fn call<R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<R, ClientError> {
        let exchange = async {
            let resp = self.send(&method, path, body).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Unreachable(format!("{}{path}: reading the answer: {e}", self.server())))?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| {
            ClientError::Unreachable(format!("{}{path}: no answer in {REQUEST_TIMEOUT:?}", self.server()))
        })??;
        if !status.is_success() {
            return Err(api_error(method, path, status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode { path: path.into(), message: e.to_string() })
    }

    fn json(value: &impl Serialize) -> Option<(Vec<u8>, &'static str)> {
        // Our own types always serialize.
        Some((serde_json::to_vec(value).unwrap_or_default(), "application/json"))
    }

    /// The object at `path` (`paths::pod("default", "web")`).
    pub async fn get<T: Object>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// The objects of a collection (`paths::pods(Some("default"))`) matching `query` (`fieldSelector`,
    /// `labelSelector`), and the revision they were read at.
    pub async fn list<T: Object>(&self, path: &str, query: &[(&str, &str)]) -> Result<ObjectList<T>, ClientError> {
        let raw: RawList<T> = self.call(Method::GET, &paths::with_query(path, query), None).await?;
        Ok(ObjectList { items: raw.items, resource_version: raw.metadata.resource_version.unwrap_or_default() })
    }

    /// Creates `object` in the collection at `path`; answers it as stored.
    pub async fn create<T: Object>(&self, path: &str, object: &T) -> Result<T, ClientError> {
        self.call(Method::POST, path, Self::json(object)).await
    }

    /// Replaces the object at `path`; 409 when its `resourceVersion` is stale.
    pub async fn update<T: Object>(&self, path: &str, object: &T) -> Result<T, ClientError> {
        self.call(Method::PUT, path, Self::json(object)).await
    }

    /// Applies a JSON merge patch (RFC 7386) to the object at `path`.
    pub async fn merge_patch<T: Object>(&self, path: &str, patch: &serde_json::Value) -> Result<T, ClientError> {
        let body = serde_json::to_vec(patch).unwrap_or_default();
        self.call(Method::PATCH, path, Some((body, "application/merge-patch+json"))).await
    }

    /// Deletes the object at `path`.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::DELETE, path, None).await.map(drop)
    }

    /// Deletes the object at `path` with these `DeleteOptions` (`gracePeriodSeconds`, `preconditions`).
    pub async fn delete_with(&self, path: &str, options: &serde_json::Value) -> Result<(), ClientError> {
        let body = serde_json::to_vec(options).unwrap_or_default();
        self.call::<serde_json::Value>(Method::DELETE, path, Some((body, "application/json"))).await.map(drop)
    }

    /// Deletes a pod at once (grace 0) if it is still the incarnation `uid`: the kubelet's last step once
    /// the pod has stopped, and the node lifecycle controller's for the pods of a node that is gone.
    pub async fn force_delete_pod(&self, namespace: &str, name: &str, uid: &str) -> Result<(), ClientError> {
        let options = serde_json::json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
        self.delete_with(&paths::pod(namespace, name), &options).await
    }

    /// Writes a pod's `status` (the `pods/status` subresource; its spec and metadata are left alone) as a
    /// merge patch, so no read is needed first and no concurrent writer's resourceVersion is in the way.
    pub async fn patch_pod_status(
        &self,
        namespace: &str,
        name: &str,
        status: &serde_json::Value,
    ) -> Result<Pod, ClientError> {
        let path = format!("{}/status", paths::pod(namespace, name));
        self.merge_patch(&path, &serde_json::json!({ "status": status })).await
    }

    /// Binds pod `name` of `namespace` to `node` (the `pods/binding` subresource): 409 when it is bound
    /// already.
    pub async fn bind(&self, namespace: &str, name: &str, node: &str) -> Result<(), ClientError> {
        let path = format!("{}/binding", paths::pod(namespace, name));
        let binding = Binding::to_node(namespace, name, node);
        self.call::<serde_json::Value>(Method::POST, &path, Self::json(&binding)).await.map(drop)
    }

    /// Replaces a node's `status` (the `nodes/status` subresource), 409 when `node` is stale.
    pub async fn update_node_status(&self, node: &Node) -> Result<Node, ClientError> {
        self.update(&format!("{}/status", paths::node(&node.metadata.name)), node).await
    }

    /// Writes a node's `status` as a merge patch (the `nodes/status` subresource).
    pub async fn patch_node_status(&self, name: &str, status: &serde_json::Value) -> Result<Node, ClientError> {
        let path = format!("{}/status", paths::node(name));
        self.merge_patch(&path, &serde_json::json!({ "status": status })).await
    }
}

/// An error answer as a Status (a body that is not one is kept as its message).
fn api_error(method: Method, path: &str, code: StatusCode, body: &[u8]) -> ClientError {
    let status = serde_json::from_slice::<Status>(body).unwrap_or_else(|_| Status {
        api_version: "v1".into(),
        kind: "Status".into(),
        status: "Failure".into(),
        message: String::from_utf8_lossy(body).into_owned(),
        reason: code.canonical_reason().unwrap_or("").to_string(),
        details: None,
        code: code.as_u16(),
    });
    ClientError::Api { method, path: path.to_string(), status: Box::new(status) }
}
