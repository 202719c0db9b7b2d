//! The API server: Kubernetes REST paths over the store, with bearer-token authentication on every request.
//!
//! Paths are parsed here rather than by the router: `/api/v1/namespaces/NS` (an object) and
//! `/api/v1/namespaces/NS/pods` (a collection) share a prefix that a path-pattern router cannot tell apart
//! without backtracking.

mod binding;
mod create;
mod delete;
mod discovery;
mod graceful;
mod network_policies;
mod objects;
mod patch;
mod scale;
mod selector;
mod services;
mod status;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

pub use services::{node_port_sibling, parse_service_cidr, DEFAULT_SERVICE_CIDR, NODE_PORTS};
pub use status::ApiError;

use crate::meta::now_seconds;
use crate::printing;
use crate::resources::{Resource, INITIAL_NAMESPACES, RESOURCES};
use crate::store::Store;

/// What every request handler shares.
pub struct Server<S> {
    store: S,
    token: String,
    /// Where Services' cluster IPs come from.
    service_cidr: ipnet::Ipv4Net,
}

/// The object (or collection) a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The resource.
    pub resource: &'static Resource,
    /// From `/namespaces/NS/...`; none for cluster-scoped resources and for lists across namespaces.
    pub namespace: Option<String>,
    /// The object's name; none for the collection.
    pub name: Option<String>,
    /// `status`, `scale` (deployments, replicasets) or `binding` (pods): the subresource addressed.
    pub subresource: Option<String>,
}

impl<S: Store> Server<S> {
    /// A server over `store` that admits requests carrying `Authorization: Bearer <token>` and gives
    /// Services cluster IPs from `service_cidr`.
    pub fn new(store: S, token: String, service_cidr: ipnet::Ipv4Net) -> Arc<Self> {
        Arc::new(Self { store, token, service_cidr })
    }

    /// Creates the namespaces every cluster starts with (`default`, `kube-system`, `kube-node-lease`) unless
    /// they exist.
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        let res = &RESOURCES[0];
        for ns in INITIAL_NAMESPACES {
            let obj = serde_json::json!({"metadata": {"name": ns}});
            match self.create(&Target::collection(res, None), obj, None).await {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Target {
    fn collection(resource: &'static Resource, namespace: Option<&str>) -> Self {
        Self { resource, namespace: namespace.map(str::to_string), name: None, subresource: None }
    }

    /// Parses the part of a path after `/api` (`v1/...`) or `/apis` (`GROUP/VERSION/...`); `Ok(None)` for a
    /// group version's discovery document.
    fn parse(group: &str, version: &str, rest: &[&str]) -> Result<Option<Self>, ApiError> {
        let unknown =
            || ApiError::new(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource");
        let (namespace, rest) = match rest {
            [] => return Ok(None),
            ["namespaces", ns, plural, more @ ..]
                if Resource::find(group, version, plural).is_some_and(|r| r.namespaced) =>
            {
                (Some(ns.to_string()), std::iter::once(*plural).chain(more.iter().copied()).collect::<Vec<_>>())
            }
            _ => (None, rest.to_vec()),
        };
        let resource = Resource::find(group, version, rest[0]).ok_or_else(unknown)?;
        let (name, subresource) = match rest[1..] {
            [] => (None, None),
            [name] => (Some(name.to_string()), None),
            [name, "status"] if resource.has_status => (Some(name.to_string()), Some("status".to_string())),
            [name, "scale"] if scale::scalable(resource) => (Some(name.to_string()), Some("scale".to_string())),
            [name, "binding"] if resource.kind == crate::resources::Kind::Pod => {
                (Some(name.to_string()), Some("binding".to_string()))
            }
            _ => return Err(unknown()),
        };
        if resource.namespaced && namespace.is_none() && name.is_some() {
            return Err(unknown());
        }
        Ok(Some(Self { resource, namespace, name, subresource }))
    }
}

/// The axum router: discovery, the resources, and the token check in front of everything.
pub fn router<S: Store>(server: Arc<Server<S>>) -> Router {
    Router::new()
        .fallback(dispatch::<S>)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&server), authenticate::<S>))
        .with_state(server)
}

/// 401 unless the request carries the lab's token. Compared in constant time: the API is reachable from
/// every node of the lab.
async fn authenticate<S: Store>(State(server): State<Arc<Server<S>>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = server.token.as_bytes();
    let same = given.len() == expected.len() && given.bytes().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same || expected.is_empty() {
        return ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized").into_response();
    }
    next.run(req).await
}

async fn dispatch<S: Store>(
    State(server): State<Arc<Server<S>>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match route(&server, &method, &uri, &query, &headers, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn route<S: Store>(
    server: &Server<S>,
    method: &Method,
    uri: &Uri,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return discovery::serve(uri.path()).ok_or_else(not_found),
    };
    let Some(target) = Target::parse(group, version, rest)? else {
        return discovery::group_version(group, version).ok_or_else(not_found);
    };
    if !body.is_empty() {
        json_body(headers)?;
    }
    let field_validation = query.get("fieldValidation").map(String::as_str);
    if target.subresource.as_deref() == Some("scale") {
        return server.scale(method, &target, headers, &body, field_validation).await;
    }
    let json = |v: serde_json::Value, code: StatusCode| (code, axum::Json(v)).into_response();
    if target.subresource.as_deref() == Some("binding") {
        return match *method {
            Method::POST => Ok(json(server.bind(&target, parse_body(&body)?).await?, StatusCode::CREATED)),
            _ => Err(method_not_allowed(method)),
        };
    }
    // kubectl's `get` asks for a Table (server-side printing); every other client for the objects.
    let as_table = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(printing::wants_table);
    let kind = target.resource.kind;
    match (method.clone(), target.name.is_some()) {
        (Method::GET, false) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            server.watch(&target, query, as_table).await
        }
        (Method::GET, false) if as_table => {
            let list = server.list(&target, query).await?;
            let items = list.get("items").and_then(serde_json::Value::as_array).map(Vec::as_slice).unwrap_or_default();
            let rv = list.pointer("/metadata/resourceVersion").and_then(serde_json::Value::as_str);
            Ok(json(printing::table(kind, items, rv, now_seconds()), StatusCode::OK))
        }
        (Method::GET, false) => Ok(json(server.list(&target, query).await?, StatusCode::OK)),
        (Method::GET, true) if as_table => {
            let obj = server.get(&target).await?;
            let rv = obj.pointer("/metadata/resourceVersion").and_then(serde_json::Value::as_str).map(str::to_string);
            Ok(json(printing::table(kind, &[obj], rv.as_deref(), now_seconds()), StatusCode::OK))
        }
        (Method::GET, true) => Ok(json(server.get(&target).await?, StatusCode::OK)),
        (Method::POST, false) => {
            let obj = parse_body(&body)?;
            let (obj, warnings) = server.create(&target, obj, field_validation).await?;
            Ok(with_warnings(json(obj, StatusCode::CREATED), &warnings))
        }
        (Method::PUT, true) => {
            let obj = parse_body(&body)?;
            let (obj, warnings) = server.update(&target, obj, field_validation).await?;
            Ok(with_warnings(json(obj, StatusCode::OK), &warnings))
        }
        (Method::PATCH, true) => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let patch = parse_body(&body)?;
            let (obj, warnings) = server.patch(&target, content_type, patch, field_validation).await?;
            Ok(with_warnings(json(obj, StatusCode::OK), &warnings))
        }
        (Method::DELETE, true) => {
            let options = delete::delete_options(&body, query)?;
            Ok(json(server.delete(&target, &options).await?, StatusCode::OK))
        }
        _ => Err(method_not_allowed(method)),
    }
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("the server does not allow this method on the requested resource: {method}"),
    )
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource")
}

/// Bodies are decoded as JSON only (every patch type the server takes is JSON too). kubectl's generator
/// verbs (`kubectl create namespace`, `create deployment`, ...) send protobuf through client-go's typed
/// clients, with no fallback; a 415 with what to do instead is better than a JSON parse error.
fn json_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if media.is_empty() || media == "application/json" || media.ends_with("+json") || media.ends_with("+yaml") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
        format!(
            "the body is {media}: this API server decodes JSON only (no protobuf or CBOR); kubectl's generator \
             verbs (`kubectl create namespace NAME`, `create deployment`, ...) send protobuf, so write the object \
             with `kubectl create -f FILE` (or `... --dry-run=client -o json | kubectl create -f -`)"
        ),
    ))
}

fn parse_body(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
}

/// Kubernetes' `Warning` headers (code 299), which kubectl prints: unknown fields dropped under the default
/// field validation.
fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests;
