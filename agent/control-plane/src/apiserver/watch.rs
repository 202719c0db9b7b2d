//! List and watch: a list carries the revision it was read at (`metadata.resourceVersion`), and a watch
//! from that revision streams every later change as `{"type":"ADDED|MODIFIED|DELETED","object":...}` lines,
//! so a client that lists and then watches misses nothing. A revision etcd has compacted is answered with
//! 410 Expired ("too old resource version"), before the stream when it is known then, else as an ERROR event.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use serde_json::{json, Value};

use super::objects::{meta_str, object_from, set_resource_version};
use super::{ApiError, Server, Target};
use crate::store::{Event, Store, StoreError};

/// A watch without `timeoutSeconds` ends after this long, as in Kubernetes (clients watch again).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

impl<S: Store> Server<S> {
    pub(super) async fn list(&self, target: &Target, query: &HashMap<String, String>) -> Result<Value, ApiError> {
        let res = target.resource;
        let filter = Filter::parse(query)?;
        let (kvs, revision) = self
            .store
            .list(&res.prefix(target.namespace.as_deref()))
            .await
            .map_err(|e| ApiError::from_store(res, "", e))?;
        let mut items = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            let obj = object_from(kv)?;
            if filter.matches(&obj) {
                items.push(obj);
            }
        }
        Ok(json!({
            "apiVersion": res.api_version(),
            "kind": format!("{}List", res.kind_name),
            "metadata": {"resourceVersion": revision.to_string()},
            "items": items,
        }))
    }

    pub(super) async fn watch(&self, target: &Target, query: &HashMap<String, String>) -> Result<Response, ApiError> {
        let res = target.resource;
        let filter = Filter::parse(query)?;
        let prefix = res.prefix(target.namespace.as_deref());
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_WATCH_TIMEOUT);
        // "" and "0" mean "from now, starting with the current objects" (synthetic ADDED events); any other
        // revision resumes after it.
        let (initial, after) = match query.get("resourceVersion").map(String::as_str) {
            None | Some("") | Some("0") => {
                let list = self.list(target, query).await?;
                let rev = list.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("0");
                let items = list.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
                (items, rev.parse().unwrap_or(0))
            }
            Some(rv) => {
                let rev = rv
                    .parse::<i64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion \"{rv}\"")))?;
                (Vec::new(), rev)
            }
        };
        let changes = self.store.watch(&prefix, after).await.map_err(|e| ApiError::from_store(res, "", e))?;
        let added = futures::stream::iter(initial.into_iter().map(|obj| line("ADDED", obj)));
        let events = changes.flat_map(move |batch| {
            let lines: Vec<bytes::Bytes> = match batch {
                Ok(events) => events.into_iter().filter_map(|ev| event_line(ev, &filter)).collect(),
                Err(StoreError::Compacted(rev)) => vec![line("ERROR", json!(ApiError::expired(rev).status()))],
                Err(e) => {
                    tracing::warn!(error = %e, "watch ended");
                    vec![line("ERROR", json!(ApiError::from_store(res, "", e).status()))]
                }
            };
            futures::stream::iter(lines)
        });
        let deadline = tokio::time::sleep(timeout);
        let body = added.chain(events).take_until(deadline).map(Ok::<_, std::convert::Infallible>);
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(body))
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))
    }
}

fn line(kind: &str, object: Value) -> bytes::Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    s.into()
}

/// One store event as a watch line, or none when the object does not match the selectors. A DELETED event
/// carries the object's last state with the deletion's revision, as Kubernetes sends it.
fn event_line(event: Event, filter: &Filter) -> Option<bytes::Bytes> {
    let (kind, obj) = match event {
        Event::Put(kv) => {
            let kind = if kv.create_revision == kv.mod_revision { "ADDED" } else { "MODIFIED" };
            (kind, object_from(&kv).ok()?)
        }
        Event::Delete { prev, revision } => {
            let mut obj = object_from(&prev).ok()?;
            set_resource_version(&mut obj, revision);
            ("DELETED", obj)
        }
    };
    filter.matches(&obj).then(|| line(kind, obj))
}

/// `labelSelector` (equality: `a=b`, `a==b`, `a!=b`, existence: `a`, `!a`) and `fieldSelector`
/// (`metadata.name`, `metadata.namespace`, and a pod's `spec.nodeName`, with `=`/`==`/`!=`): what kubectl's
/// `-l`, `--field-selector` and its wait-for-deletion use, and what a node agent watches its pods with. Set-based selectors (`in`, `notin`) are refused with 400.
#[derive(Debug, Default, Clone)]
struct Filter {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

#[derive(Debug, Clone)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Filter {
    fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let parse = |param: &str, fields: bool| -> Result<Vec<Requirement>, ApiError> {
            let Some(s) = query.get(param).filter(|s| !s.trim().is_empty()) else { return Ok(Vec::new()) };
            s.split(',').map(|term| Requirement::parse(term.trim(), fields).ok_or_else(|| {
                ApiError::bad_request(format!("unable to parse requirement \"{term}\" of {param}: only =, ==, != and existence are supported"))
            })).collect()
        };
        Ok(Self { labels: parse("labelSelector", false)?, fields: parse("fieldSelector", true)? })
    }

    fn matches(&self, obj: &Value) -> bool {
        let label = |k: &str| obj.pointer("/metadata/labels").and_then(|l| l.get(k)).and_then(Value::as_str);
        let field = |k: &str| match k {
            "metadata.name" => Some(meta_str(obj, "name")),
            "metadata.namespace" => Some(meta_str(obj, "namespace")),
            // An unbound pod has none: it matches `spec.nodeName=` (Kubernetes' "not yet scheduled").
            "spec.nodeName" => Some(obj.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("")),
            _ => None,
        };
        self.labels.iter().all(|r| r.holds(label)) && self.fields.iter().all(|r| r.holds(field))
    }
}

impl Requirement {
    fn parse(term: &str, fields: bool) -> Option<Self> {
        let known = |k: &str| !fields || matches!(k, "metadata.name" | "metadata.namespace" | "spec.nodeName");
        let req = if let Some((k, v)) = term.split_once("!=") {
            Self::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Self::Equals(k.trim().into(), v.trim().into())
        } else if fields || term.contains(' ') {
            return None;
        } else if let Some(k) = term.strip_prefix('!') {
            Self::Absent(k.into())
        } else {
            Self::Exists(term.into())
        };
        let key = match &req {
            Self::Equals(k, _) | Self::NotEquals(k, _) | Self::Exists(k) | Self::Absent(k) => k,
        };
        (known(key) && !key.is_empty()).then_some(req)
    }

    fn holds<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Self::Equals(k, v) => get(k) == Some(v.as_str()),
            Self::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Self::Exists(k) => get(k).is_some(),
            Self::Absent(k) => get(k).is_none(),
        }
    }
}
