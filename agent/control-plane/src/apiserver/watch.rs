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

use super::objects::{object_from, set_resource_version};
use super::selector::Filter;
use super::{ApiError, Server, Target};
use crate::printing;
use crate::resources::Kind;
use crate::store::{Event, Store, StoreError};

/// A watch without `timeoutSeconds` ends after this long, as in Kubernetes (clients watch again).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

impl<S: Store> Server<S> {
    pub(super) async fn list(&self, target: &Target, query: &HashMap<String, String>) -> Result<Value, ApiError> {
        let res = target.resource;
        let filter = Filter::parse(query, res.kind)?;
        let (kvs, revision) = self
            .store
            .list(&res.prefix(target.namespace.as_deref()))
            .await
            .map_err(|e| ApiError::from_store(res, "", e))?;
        let mut items = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            let obj = object_from(kv)?;
            if filter.matches(res.kind, &obj) {
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

    /// With `as_table`, each event's object is a `meta.k8s.io/v1 Table` of one row (kubectl's `get -w`).
    pub(super) async fn watch(
        &self,
        target: &Target,
        query: &HashMap<String, String>,
        as_table: bool,
    ) -> Result<Response, ApiError> {
        let res = target.resource;
        let filter = Filter::parse(query, res.kind)?;
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
        let present = move |obj: Value| {
            if !as_table {
                return obj;
            }
            let rv = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
            printing::table(res.kind, &[obj], rv.as_deref(), crate::meta::now_seconds())
        };
        let added = futures::stream::iter(initial.into_iter().map(move |obj| line("ADDED", present(obj))));
        let events = changes.flat_map(move |batch| {
            let lines: Vec<bytes::Bytes> = match batch {
                Ok(events) => events
                    .into_iter()
                    .filter_map(|ev| event_of(ev, res.kind, &filter))
                    .map(|(kind, obj)| line(kind, present(obj)))
                    .collect(),
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

/// One store event as a watch event's type and object, or none when the object does not match the
/// selectors. A DELETED event carries the object's last state with the deletion's revision, as Kubernetes
/// sends it.
fn event_of(event: Event, kind: Kind, filter: &Filter) -> Option<(&'static str, Value)> {
    let (event_kind, obj) = match event {
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
    filter.matches(kind, &obj).then_some((event_kind, obj))
}
