//! The HTTP/JSON API (docs/architecture.md, "The agent's HTTP API"). Bodies are parsed here rather than with
//! axum's `Json` extractor so that every error, malformed JSON included, is an `ApiError` body.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use testbed_api::{ApiError, DeletePodOptions, LogQuery};

use crate::kubelet::{Kubelet, KubeletError};
use crate::net::NetError;
use crate::pod::{Agent, AgentError};
use crate::policy::{Enforcer, PolicyError};
use crate::proxy::{Proxy, ProxyError};

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ProxyError::Invalid(api) => (StatusCode::BAD_REQUEST, api),
            other => {
                tracing::error!("{other}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ApiError { field: None, message: other.to_string(), leaked: vec![] },
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

impl IntoResponse for PolicyError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            PolicyError::Invalid(api) => (StatusCode::BAD_REQUEST, api),
            other => {
                tracing::error!("{other}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ApiError { field: None, message: other.to_string(), leaked: vec![] },
                )
            }
        };
        (status, Json(body)).into_response()
    }
}

impl IntoResponse for KubeletError {
    fn into_response(self) -> Response {
        let status = match &self {
            KubeletError::Invalid(_) => StatusCode::BAD_REQUEST,
            KubeletError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        (status, Json(ApiError { field: None, message: self.to_string(), leaked: vec![] })).into_response()
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status = match &self {
            AgentError::Invalid(_) | AgentError::Net(NetError::InvalidInput(_)) => StatusCode::BAD_REQUEST,
            AgentError::NotFound(_) => StatusCode::NOT_FOUND,
            AgentError::Conflict(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = match self {
            AgentError::Invalid(api) => api,
            AgentError::Leaked { ref leaks, .. } => {
                ApiError { field: None, message: self.to_string(), leaked: leaks.clone() }
            }
            other => ApiError { field: None, message: other.to_string(), leaked: vec![] },
        };
        if status.is_server_error() {
            tracing::error!("{body}");
        }
        (status, Json(body)).into_response()
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, AgentError> {
    serde_json::from_slice(body).map_err(|e| {
        AgentError::Invalid(ApiError { field: None, message: format!("invalid JSON body: {e}"), leaked: vec![] })
    })
}

pub fn router(agent: Arc<Agent>, kubelet: Arc<Kubelet>, proxy: Arc<Proxy>, policy: Arc<Enforcer>) -> Router {
    // The control-plane routes have the kubelet as their state; merged, they share the fallback.
    let control_plane = Router::new()
        .route("/v1/control-plane", get(get_control_plane).put(put_control_plane).delete(delete_control_plane))
        .with_state(kubelet.clone());
    let services = Router::new().route("/v1/services", get(get_services).put(put_services)).with_state(proxy);
    let policies = Router::new()
        .route("/v1/network-policies", get(get_network_policies).put(put_network_policies))
        .with_state(policy);
    Router::new()
        .merge(control_plane)
        .merge(services)
        .merge(policies)
        .route("/healthz", get(health))
        .route("/v1/node", get(get_node).put(move |body: Bytes| put_node(kubelet.clone(), body)))
        .route("/v1/pods", get(list_pods).post(create_pod))
        .route("/v1/pods/{name}", get(get_pod).delete(delete_pod))
        .route("/v1/pods/{name}/exec", post(exec))
        .route("/v1/pods/{name}/log", get(container_log))
        .fallback(|| async {
            (StatusCode::NOT_FOUND, Json(ApiError { field: None, message: "no such endpoint".into(), leaked: vec![] }))
        })
        .with_state(agent)
}

async fn health(State(agent): State<Arc<Agent>>) -> impl IntoResponse {
    Json(agent.health())
}

async fn get_control_plane(State(kubelet): State<Arc<Kubelet>>) -> impl IntoResponse {
    Json(kubelet.status())
}

/// Stores the join and follows it; answers the loop's state (not yet connected, usually).
async fn put_control_plane(State(kubelet): State<Arc<Kubelet>>, body: Bytes) -> Result<impl IntoResponse, Response> {
    let join = parse(&body).map_err(IntoResponse::into_response)?;
    kubelet.join(join).map_err(IntoResponse::into_response)?;
    Ok(Json(kubelet.status()))
}

async fn delete_control_plane(State(kubelet): State<Arc<Kubelet>>) -> Result<StatusCode, KubeletError> {
    kubelet.leave()?;
    Ok(StatusCode::NO_CONTENT)
}

/// The kernel work runs `nft` (blocking), on a task of its own so that it runs to its end, as `to_completion`.
async fn blocking<T: Send + 'static, E: IntoResponse + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(IntoResponse::into_response),
        Err(e) => Err(AgentError::Failed(format!("request task: {e}")).into_response()),
    }
}

/// The node's whole set of Services; answers the nft commands run (none when nothing changed).
async fn put_services(State(proxy): State<Arc<Proxy>>, body: Bytes) -> Result<impl IntoResponse, Response> {
    let spec: testbed_api::ServiceProxySpec = parse(&body).map_err(IntoResponse::into_response)?;
    let changes = blocking(move || proxy.apply(spec)).await?;
    Ok(Json(testbed_api::ApplyResponse { changes }))
}

/// The proxy's table as the kernel holds it.
async fn get_services(State(proxy): State<Arc<Proxy>>) -> Result<impl IntoResponse, Response> {
    Ok(Json(blocking(move || proxy.status()).await?))
}

/// The node's restricted pods and their rules; answers the nft script run (none when nothing changed).
async fn put_network_policies(State(policy): State<Arc<Enforcer>>, body: Bytes) -> Result<impl IntoResponse, Response> {
    let spec: testbed_api::NetworkPolicyNodeSpec = parse(&body).map_err(IntoResponse::into_response)?;
    let changes = blocking(move || policy.apply(spec)).await?;
    Ok(Json(testbed_api::ApplyResponse { changes }))
}

/// The policy table as the kernel holds it.
async fn get_network_policies(State(policy): State<Arc<Enforcer>>) -> Result<impl IntoResponse, Response> {
    Ok(Json(blocking(move || policy.status()).await?))
}

async fn get_node(State(agent): State<Arc<Agent>>) -> impl IntoResponse {
    Json(agent.node_status().await)
}

/// Runs a mutating request on a task of its own and waits for it. hyper drops a handler's future when the
/// client goes away (a CLI timeout, Ctrl-C, a dropped SSH forward); a create or delete stopped half-way
/// would leave processes, veths, IPs and cgroups behind, so the work always runs to its end.
async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, AgentError>> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::spawn(work).await.map_err(|e| AgentError::Failed(format!("request task: {e}")))?
}

/// Through the kubelet: while the node follows an API, the subnet leases' peers replace the spec's.
async fn put_node(kubelet: Arc<Kubelet>, body: Bytes) -> Result<impl IntoResponse, AgentError> {
    kubelet.count_node_put();
    let spec = parse(&body)?;
    Ok(Json(to_completion(async move { kubelet.apply_node(spec).await }).await?))
}

async fn list_pods(State(agent): State<Arc<Agent>>) -> impl IntoResponse {
    Json(agent.list_pods())
}

async fn create_pod(State(agent): State<Arc<Agent>>, body: Bytes) -> Result<impl IntoResponse, AgentError> {
    let spec = parse(&body)?;
    let (created, status) = to_completion(async move { agent.create_pod(spec).await }).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(status)))
}

async fn get_pod(State(agent): State<Arc<Agent>>, Path(name): Path<String>) -> Result<impl IntoResponse, AgentError> {
    Ok(Json(agent.get_pod(&name)?))
}

async fn delete_pod(
    State(agent): State<Arc<Agent>>,
    Path(name): Path<String>,
    query: Result<Query<DeletePodOptions>, QueryRejection>,
) -> Result<StatusCode, AgentError> {
    let opts = query_of(query, &["grace_period_secs"])?;
    let grace = opts.grace_period_secs.map(Duration::from_secs);
    to_completion(async move { agent.delete_pod(&name, grace).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn container_log(
    State(agent): State<Arc<Agent>>,
    Path(name): Path<String>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<impl IntoResponse, AgentError> {
    Ok(Json(agent.container_log(&name, &query_of(query, &["offset", "previous"])?)?))
}

/// A query string that did not parse is a 400 naming the field that failed where only one of `fields` can
/// fail to parse (serde's message does not always name it), else naming them all in the message.
fn query_of<T>(query: Result<Query<T>, QueryRejection>, fields: &[&str]) -> Result<T, AgentError> {
    let Query(value) = query.map_err(|e| {
        let (field, message) = match fields {
            [only] => (Some(only.to_string()), e.body_text()),
            _ => (None, format!("{} (one of {})", e.body_text(), fields.join(", "))),
        };
        AgentError::Invalid(ApiError { field, message, leaked: vec![] })
    })?;
    Ok(value)
}

async fn exec(
    State(agent): State<Arc<Agent>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, AgentError> {
    Ok(Json(agent.exec(&name, parse(&body)?).await?))
}
