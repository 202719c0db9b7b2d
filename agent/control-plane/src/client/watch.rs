//! Watches: `?watch=true&resourceVersion=N` answers one `{"type":..,"object":..}` line per change after N;
//! an `ERROR` line carries a Status (410 Expired when N was compacted during the stream). `list_watch` is
//! what a controller wants on top: the full state first, then every change, listing again whenever the
//! revision it resumes from is too old, so a consumer never misses a change and never sees a gap.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use http_body_util::BodyStream;
use hyper::Method;
use serde::Deserialize;
use testbed_api::objects::Status;

use super::{api_error, paths, Client, ClientError, Object};

/// How long a watch may stay open before the server ends it (the consumer watches again from where it was).
/// Short enough that a connection to a server that vanished without a FIN is noticed within it.
const WATCH_SECONDS: u64 = 120;

/// One change a watch saw.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<T> {
    /// The object was created (or existed when a watch from "now" started).
    Added(T),
    /// The object changed: its new state.
    Modified(T),
    /// The object was deleted: its last state.
    Deleted(T),
}

impl<T: Object> WatchEvent<T> {
    /// The object the event carries.
    pub fn object(&self) -> &T {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
        }
    }
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

impl Client {
    /// The changes of the collection at `path` (matching `query`) after `resource_version`.
    pub async fn watch<T: Object>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        resource_version: &str,
    ) -> Result<BoxStream<'static, Result<WatchEvent<T>, ClientError>>, ClientError> {
        let seconds = WATCH_SECONDS.to_string();
        let mut q = query.to_vec();
        q.extend([("watch", "true"), ("resourceVersion", resource_version), ("timeoutSeconds", seconds.as_str())]);
        let path = paths::with_query(path, &q);
        let resp = tokio::time::timeout(super::REQUEST_TIMEOUT, self.send(&Method::GET, &path, None))
            .await
            .map_err(|_| ClientError::Unreachable(format!("{}{path}: no answer", self.server())))??;
        let status = resp.status();
        if !status.is_success() {
            let body =
                http_body_util::BodyExt::collect(resp.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(api_error(Method::GET, &path, status, &body));
        }
        let frames = BodyStream::new(resp.into_body());
        let lines = split_lines(frames.filter_map(|frame| async move {
            match frame {
                Ok(f) => f.into_data().ok().map(Ok),
                Err(e) => Some(Err(ClientError::Unreachable(format!("watch stream: {e}")))),
            }
        }));
        let decode_path = path.clone();
        let events = lines.map(move |line| line.and_then(|l| decode(&decode_path, &l)));
        // The server ends the stream at timeoutSeconds; a server that is gone without a word is given up on
        // a little later.
        let deadline = tokio::time::sleep(Duration::from_secs(WATCH_SECONDS + 15));
        Ok(events.take_until(deadline).boxed())
    }
}

/// Lines out of a byte stream whose chunks may split or join them.
fn split_lines(
    chunks: impl futures::Stream<Item = Result<Bytes, ClientError>> + Send + 'static,
) -> impl futures::Stream<Item = Result<Bytes, ClientError>> + Send + 'static {
    futures::stream::unfold((Box::pin(chunks), BytesMut::new(), false), |(mut chunks, mut buf, done)| async move {
        loop {
            if let Some(at) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(at + 1).freeze();
                return Some((Ok(line.slice(..at)), (chunks, buf, done)));
            }
            if done {
                return None;
            }
            match chunks.next().await {
                Some(Ok(data)) => buf.extend_from_slice(&data),
                Some(Err(e)) => return Some((Err(e), (chunks, buf, true))),
                None => {
                    // A last line without its newline (a stream cut mid-line) is not a whole event: dropped.
                    return None;
                }
            }
        }
    })
}

fn decode<T: Object>(path: &str, line: &[u8]) -> Result<WatchEvent<T>, ClientError> {
    let bad = |e: serde_json::Error| ClientError::Decode { path: path.into(), message: e.to_string() };
    let raw: RawEvent = serde_json::from_slice(line).map_err(bad)?;
    if raw.kind == "ERROR" {
        let status: Status = serde_json::from_value(raw.object).map_err(bad)?;
        return Err(ClientError::Api { method: Method::GET, path: path.into(), status: Box::new(status) });
    }
    let object = serde_json::from_value(raw.object).map_err(bad)?;
    match raw.kind.as_str() {
        "ADDED" => Ok(WatchEvent::Added(object)),
        "MODIFIED" => Ok(WatchEvent::Modified(object)),
        "DELETED" => Ok(WatchEvent::Deleted(object)),
        other => Err(ClientError::Decode { path: path.into(), message: format!("unknown event type {other}") }),
    }
}

/// What `list_watch` yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    /// Every object there is now: the consumer replaces what it knew (first, and after a 410).
    Listed(Vec<T>),
    /// One change after the last list or event.
    Event(WatchEvent<T>),
}

struct ListWatch<T> {
    client: Arc<Client>,
    path: String,
    query: Vec<(String, String)>,
    resource_version: Option<String>,
    events: Option<BoxStream<'static, Result<WatchEvent<T>, ClientError>>>,
}

/// Lists the collection at `path`, then watches it from the list's revision, watching again when a watch
/// ends and listing again when the revision is too old (410). Errors are yielded and the stream goes on:
/// the next poll retries, so the consumer paces retries (and backs off) by when it polls.
pub fn list_watch<T: Object>(
    client: Arc<Client>,
    path: &str,
    query: &[(&str, &str)],
) -> BoxStream<'static, Result<Change<T>, ClientError>> {
    let query = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let state = ListWatch { client, path: path.to_string(), query, resource_version: None, events: None };
    futures::stream::unfold(state, |mut st| async move {
        let item = st.next().await;
        Some((item, st))
    })
    .boxed()
}

impl<T: Object> ListWatch<T> {
    async fn next(&mut self) -> Result<Change<T>, ClientError> {
        let query: Vec<(&str, &str)> = self.query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        loop {
            let Some(rv) = self.resource_version.clone() else {
                let list = self.client.list::<T>(&self.path, &query).await?;
                self.resource_version = Some(list.resource_version);
                return Ok(Change::Listed(list.items));
            };
            let events = match self.events.as_mut() {
                Some(events) => events,
                None => match self.client.watch::<T>(&self.path, &query, &rv).await {
                    Ok(events) => self.events.insert(events),
                    Err(e) if e.is_expired() => {
                        self.resource_version = None;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            match events.next().await {
                Some(Ok(event)) => {
                    if let Some(rv) = event.object().metadata().resource_version.clone() {
                        self.resource_version = Some(rv);
                    }
                    return Ok(Change::Event(event));
                }
                Some(Err(e)) => {
                    self.events = None;
                    if e.is_expired() {
                        self.resource_version = None;
                        continue;
                    }
                    return Err(e);
                }
                // The server ended the watch (timeoutSeconds): watch again from the last revision.
                None => self.events = None,
            }
        }
    }
}
