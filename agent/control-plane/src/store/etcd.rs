//! etcd through its v3 JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/watch` over HTTP/1.1 on the client
//! port: HTTPS with a client certificate of the lab CA in a lab, plain HTTP on the tests' loopback), to every
//! member of the cluster in turn: a request goes to the member that answered last, and to the next one when
//! that one refuses the connection, so an API server outlives its own node's etcd. The gRPC client crate (`etcd-client`) compiles etcd's protos at build time and needs
//! `protoc`, which neither the build machines nor CI have; the gateway carries the same messages as JSON
//! (bytes in base64, 64-bit integers as strings) with the hyper client axum already brings in.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::connector::error_chain;

use super::{Event, KeyValue, Store, StoreError, WatchStream};

/// A client of an etcd cluster's members (`https://10.0.0.11:2379`, ...).
#[derive(Clone)]
pub struct Etcd {
    endpoints: Arc<[String]>,
    /// The member that answered last, tried first.
    current: Arc<AtomicUsize>,
    client: Client<crate::connector::Connector, Full<Bytes>>,
}

/// A key as the gateway sends it.
#[derive(Deserialize)]
struct RawKv {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int")]
    create_revision: i64,
    #[serde(default, deserialize_with = "int")]
    mod_revision: i64,
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "int")]
    revision: i64,
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

#[derive(Deserialize)]
struct TxnResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<Value>,
}

#[derive(Deserialize)]
struct WatchMessage {
    result: Option<WatchResult>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WatchResult {
    #[serde(default)]
    events: Vec<RawEvent>,
    #[serde(default, deserialize_with = "int")]
    compact_revision: i64,
    #[serde(default)]
    canceled: bool,
}

#[derive(Deserialize)]
struct RawEvent {
    /// `PUT` is the enum's zero value, which proto3 JSON leaves out.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    kv: RawKv,
    prev_kv: Option<RawKv>,
}

/// proto3 JSON writes int64 as a string.
fn int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        S(String),
        N(i64),
    }
    match Int::deserialize(d)? {
        Int::N(n) => Ok(n),
        Int::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

/// The range end that makes `[prefix, end)` every key starting with `prefix` (etcd's `--prefix`).
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    // Prefixes here are ASCII paths ending in '/', so the last byte is never 0xff.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    B64.encode(end)
}

impl RawKv {
    fn decode(self) -> Result<KeyValue, StoreError> {
        let bad = |e: base64::DecodeError| StoreError::Backend(format!("bad base64 from etcd: {e}"));
        let key = String::from_utf8(B64.decode(&self.key).map_err(bad)?)
            .map_err(|_| StoreError::Backend("non-UTF-8 key".into()))?;
        Ok(KeyValue {
            key,
            value: B64.decode(&self.value).map_err(bad)?,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        })
    }
}

impl Etcd {
    /// A client of the members at `endpoints`: `https://HOST:PORT` ones with `tls` (the lab CA and the
    /// client certificate, [`crate::tls::client_config`]), `http://HOST:PORT` ones without. Connects lazily.
    pub fn new(endpoints: &[String], tls: Option<rustls::ClientConfig>) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Backend("no etcd endpoint given".into()));
        }
        let client = Client::builder(TokioExecutor::new()).build(crate::connector::Connector::new(tls));
        let endpoints = endpoints.iter().map(|e| e.trim_end_matches('/').to_string()).collect();
        Ok(Self { endpoints, current: Arc::new(AtomicUsize::new(0)), client })
    }

    /// Posts `body` to the first member that takes the connection, starting with the one that answered last.
    async fn send(&self, path: &str, body: &Value) -> Result<hyper::Response<hyper::body::Incoming>, StoreError> {
        let first = self.current.load(Ordering::Relaxed);
        let mut last_error = String::new();
        for i in 0..self.endpoints.len() {
            let idx = (first + i) % self.endpoints.len();
            let endpoint = &self.endpoints[idx];
            let req = hyper::Request::post(format!("{endpoint}{path}"))
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            match self.client.request(req).await {
                Ok(resp) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(resp);
                }
                // Only a connection that was not made moves on: a request that was sent may have been applied.
                Err(e) if e.is_connect() => last_error = format!("{endpoint}{path}: {}", error_chain(&e)),
                Err(e) => return Err(StoreError::Backend(format!("{endpoint}{path}: {}", error_chain(&e)))),
            }
        }
        Err(StoreError::Backend(last_error))
    }

    async fn call<T: serde::de::DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, StoreError> {
        let resp = self.send(path, body).await?;
        let status = resp.status();
        let bytes =
            resp.into_body().collect().await.map_err(|e| StoreError::Backend(format!("{path}: {e}")))?.to_bytes();
        if !status.is_success() {
            return Err(StoreError::Backend(format!("{path}: {status}: {}", String::from_utf8_lossy(&bytes))));
        }
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Backend(format!("{path}: {e}")))
    }

    /// A transaction on one key: `compare` guards `then`; on failure the key is read back so the caller can
    /// tell a missing key from a changed one.
    async fn txn(&self, key: &str, compare: Value, then: Value) -> Result<TxnResponse, StoreError> {
        let body = json!({
            "compare": [compare],
            "success": [then],
            "failure": [{"request_range": {"key": b64(key)}}],
        });
        self.call("/v3/kv/txn", &body).await
    }

    /// The current value from a failed transaction's read-back, to turn it into NotFound or Conflict.
    fn failed(key: &str, expected: i64, resp: &TxnResponse) -> StoreError {
        let current = resp
            .responses
            .first()
            .and_then(|r| r.pointer("/response_range/kvs/0/mod_revision"))
            .and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_i64()));
        match current {
            None => StoreError::NotFound(key.to_string()),
            Some(current) => StoreError::Conflict { key: key.to_string(), expected, current },
        }
    }

    /// Compacts the history up to `revision` (tests and benchmarks; a lab compacts with etcd's own
    /// `--auto-compaction-retention`).
    pub async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let _: Value =
            self.call("/v3/kv/compaction", &json!({"revision": revision.to_string(), "physical": true})).await?;
        Ok(())
    }

    /// Fails with `Compacted` when `revision` is older than etcd keeps (a range read at that revision).
    async fn check_not_compacted(&self, prefix: &str, revision: i64) -> Result<(), StoreError> {
        let body = json!({"key": b64(prefix), "range_end": prefix_end(prefix), "revision": revision.to_string(),
                          "count_only": true});
        match self.call::<Value>("/v3/kv/range", &body).await {
            Err(StoreError::Backend(msg)) if msg.contains("compacted") => Err(StoreError::Compacted(revision)),
            other => other.map(|_| ()),
        }
    }
}

impl Store for Etcd {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp: RangeResponse = self.call("/v3/kv/range", &json!({"key": b64(key)})).await?;
        resp.kvs.into_iter().next().map(RawKv::decode).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let resp: RangeResponse =
            self.call("/v3/kv/range", &json!({"key": b64(prefix), "range_end": prefix_end(prefix)})).await?;
        let kvs = resp.kvs.into_iter().map(RawKv::decode).collect::<Result<_, _>>()?;
        Ok((kvs, resp.header.revision))
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        let compare = json!({"target": "CREATE", "key": b64(key), "create_revision": "0"});
        let put = json!({"request_put": {"key": b64(key), "value": B64.encode(&value)}});
        let resp = self.txn(key, compare, put).await?;
        if resp.succeeded {
            Ok(resp.header.revision)
        } else {
            Err(StoreError::AlreadyExists(key.to_string()))
        }
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64, StoreError> {
        let compare = json!({"target": "MOD", "key": b64(key), "mod_revision": expected.to_string()});
        let put = json!({"request_put": {"key": b64(key), "value": B64.encode(&value)}});
        let resp = self.txn(key, compare, put).await?;
        if resp.succeeded {
            Ok(resp.header.revision)
        } else {
            Err(Self::failed(key, expected, &resp))
        }
    }

    async fn delete(&self, key: &str, expected: i64) -> Result<i64, StoreError> {
        let compare = json!({"target": "MOD", "key": b64(key), "mod_revision": expected.to_string()});
        let del = json!({"request_delete_range": {"key": b64(key)}});
        let resp = self.txn(key, compare, del).await?;
        if resp.succeeded {
            Ok(resp.header.revision)
        } else {
            Err(Self::failed(key, expected, &resp))
        }
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream, StoreError> {
        self.check_not_compacted(prefix, after).await?;
        let body = json!({"create_request": {"key": b64(prefix), "range_end": prefix_end(prefix),
                          "start_revision": (after + 1).to_string(), "prev_kv": true}});
        let resp = self.send("/v3/watch", &body).await?;
        if !resp.status().is_success() {
            return Err(StoreError::Backend(format!("/v3/watch: {}", resp.status())));
        }
        let state = (resp.into_body(), BytesMut::new(), after, false);
        let stream = futures::stream::unfold(state, |(mut body, mut buf, after, done)| async move {
            if done {
                return None;
            }
            loop {
                // The gateway writes one JSON message per chunk, but chunks are not promised to align with
                // messages: decode whole values from the buffer and keep the rest.
                let mut de = serde_json::Deserializer::from_slice(&buf).into_iter::<WatchMessage>();
                match de.next() {
                    Some(Ok(msg)) => {
                        let used = de.byte_offset();
                        buf.advance(used);
                        match decode_watch(msg, after) {
                            Ok(None) => continue,
                            Ok(Some(events)) => return Some((Ok(events), (body, buf, after, false))),
                            Err(e) => return Some((Err(e), (body, buf, after, true))),
                        }
                    }
                    Some(Err(e)) if !e.is_eof() => {
                        let err = StoreError::Backend(format!("watch: {e}"));
                        return Some((Err(err), (body, buf, after, true)));
                    }
                    _ => {}
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            buf.extend_from_slice(&data);
                        }
                    }
                    Some(Err(e)) => {
                        let err = StoreError::Backend(format!("watch: {e}"));
                        return Some((Err(err), (body, buf, after, true)));
                    }
                    None => {
                        let err = StoreError::Backend("watch: etcd closed the stream".into());
                        return Some((Err(err), (body, buf, after, true)));
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

/// One gateway message as events: `None` for the ones without any (creation, progress).
fn decode_watch(msg: WatchMessage, after: i64) -> Result<Option<Vec<Event>>, StoreError> {
    if let Some(err) = msg.error {
        return Err(StoreError::Backend(format!("watch: {err}")));
    }
    let Some(result) = msg.result else { return Ok(None) };
    if result.compact_revision != 0 {
        return Err(StoreError::Compacted(after));
    }
    if result.canceled {
        return Err(StoreError::Backend("watch canceled by etcd".into()));
    }
    if result.events.is_empty() {
        return Ok(None);
    }
    let mut events = Vec::with_capacity(result.events.len());
    for ev in result.events {
        if ev.kind.as_deref() == Some("DELETE") {
            let revision = ev.kv.mod_revision;
            let prev = ev.prev_kv.ok_or_else(|| StoreError::Backend("DELETE event without prev_kv".into()))?;
            events.push(Event::Delete { prev: prev.decode()?, revision });
        } else {
            events.push(Event::Put(ev.kv.decode()?));
        }
    }
    Ok(Some(events))
}
